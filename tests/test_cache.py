"""The verified artifact cache: bad files are moved aside and rebuilt, lock waits are explained, files
honour the umask, and `advlab-cache list|verify|clear` (real files, real locks, no mocks)."""
from __future__ import annotations

import logging
import os
import shutil
import stat
import threading

import pytest
import torch

from advlab.artifacts import cache as cache_mod
from advlab.artifacts.cache import META, ArtifactCache, check_artifact, spec_key
from advlab.apps.cache import default_cache_dir, main as cache_main
from advlab.utils.io import write_text

SPEC = {"arch": {"_target_": "advlab.models.MLP", "width": 8}, "method": "standard", "data": {"name": "digits"}, "seed": 0}
OTHER = {**SPEC, "seed": 1}


def payload_of(spec) -> dict:
    return {"state_dict": {"w": torch.arange(6.0).reshape(2, 3) + spec["seed"]}, "metrics": {"test/acc": 0.5}}


def builder(spec, calls: list):
    def build():
        calls.append(1)
        return payload_of(spec)
    return build


def build_one(cache, spec=SPEC):
    payload, hit = cache.get_or_create("models", spec, builder(spec, []), what="source model")
    assert not hit
    return cache.path("models", spec)


def truncate(cache, target):
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])


def garbage(cache, target):
    target.write_bytes(bytes(range(256)) * 8)


def wrong_key(cache, target):
    other = build_one(cache, OTHER)  # a sound artifact, copied to SPEC's path
    shutil.copyfile(other, target)


def tampered(cache, target):
    # same stored checksum, changed weights: a bit flip the zip container does not catch
    data = torch.load(target, weights_only=True)
    data["state_dict"]["w"][0, 0] += 1
    torch.save(data, target)


@pytest.mark.parametrize("damage", [truncate, garbage, wrong_key, tampered])
def test_bad_artifact_is_moved_aside_and_rebuilt(tmp_path, caplog, damage):
    cache = ArtifactCache(tmp_path)
    target = build_one(cache)
    damage(cache, target)
    bad_bytes = target.read_bytes()
    assert check_artifact(target, SPEC)[1] is not None
    calls = []
    with caplog.at_level(logging.INFO, logger="advlab.artifacts.cache"):
        payload, hit = cache.get_or_create("models", SPEC, builder(SPEC, calls), what="source model")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(target) in warnings[0] and "moved aside" in warnings[0], warnings
    assert not hit and calls == [1]
    assert torch.equal(payload["state_dict"]["w"], payload_of(SPEC)["state_dict"]["w"]) and payload["spec"] == SPEC
    aside = list(target.parent.glob(f"{target.name}.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bad_bytes  # kept for inspection, never used
    # the rebuilt file is sound: the next run takes it without building
    again, hit = cache.get_or_create("models", SPEC, builder(SPEC, calls), what="source model")
    assert hit and calls == [1] and META not in again and torch.equal(again["state_dict"]["w"], payload["state_dict"]["w"])


def test_artifact_stores_key_and_checksum(tmp_path):
    cache = ArtifactCache(tmp_path)
    target = build_one(cache)
    raw = torch.load(target, weights_only=True)
    assert raw["spec"] == SPEC and target.stem == spec_key(SPEC)
    assert raw[META]["sha256"] == cache_mod.content_sha256(raw) and len(raw[META]["sha256"]) == 64
    payload, problem = check_artifact(target, SPEC)
    assert problem is None and payload["metrics"] == {"test/acc": 0.5}
    assert "another key" in check_artifact(target, OTHER)[1]


def test_checksum_of_many_chunks_sees_every_byte(monkeypatch):
    monkeypatch.setattr(cache_mod, "HASH_CHUNK", 64)  # 4000 bytes: 63 chunks hashed in threads
    x = torch.arange(1000, dtype=torch.float32)
    base = cache_mod.content_sha256({"x": x})
    assert cache_mod.content_sha256({"x": x.clone()}) == base
    for changed in (x.clone().index_fill_(0, torch.tensor([999]), -1.0), torch.cat([x[16:32], x[:16], x[32:]]),
                    x.reshape(10, 100), x.double()):
        assert cache_mod.content_sha256({"x": changed}) != base


class _Waits(logging.Handler):
    def __init__(self, needed: int):
        super().__init__()
        self.messages, self.needed, self.enough = [], needed, threading.Event()

    def emit(self, record):
        if record.getMessage().startswith("Waiting for"):
            self.messages.append(record.getMessage())
            if len(self.messages) >= self.needed:
                self.enough.set()


def test_waiting_run_names_the_builder_pid_and_repeats(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "WAIT_LOG_INTERVAL_S", 0.05)
    cache = ArtifactCache(tmp_path)
    waits = _Waits(needed=3)
    logger = logging.getLogger("advlab.artifacts.cache")
    logger.addHandler(waits)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    calls = []

    def slow_build():  # holds the lock until the waiter has said three times whom it waits for
        calls.append("builder")
        assert waits.enough.wait(20)
        return payload_of(SPEC)

    holder = threading.Thread(target=cache.get_or_create, args=("models", SPEC, slow_build, "source model"))
    holder.start()
    try:
        owner = cache.path("models", SPEC).with_name(cache.path("models", SPEC).name + ".lock.owner")
        for _ in range(400):
            if owner.exists():
                break
            threading.Event().wait(0.01)
        payload, hit = cache.get_or_create("models", SPEC, builder(SPEC, calls), what="source model")
    finally:
        holder.join(20)
        logger.removeHandler(waits)
        logger.setLevel(old_level)
    assert hit and calls == ["builder"] and torch.equal(payload["state_dict"]["w"], payload_of(SPEC)["state_dict"]["w"])
    assert len(waits.messages) >= 3
    assert all(f"Waiting for source model, built by pid {os.getpid()} since 20" in m for m in waits.messages), waits.messages
    assert not owner.exists()  # released with the lock


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        cache = ArtifactCache(tmp_path / "cache")
        target = build_one(cache)
        write_text(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old)
    for path in (target, target.with_suffix(".json"), tmp_path / "plain.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o777 & ~umask


def test_cache_cli_list_verify_clear(tmp_path, capsys):
    cache = ArtifactCache(tmp_path)
    good = build_one(cache)
    bad = build_one(cache, OTHER)
    cache.get_or_create("datasets", {"source": SPEC, "construction": "representation_inversion"},
                        lambda: {"x": torch.zeros(4, 3)}, what="D_R dataset")
    root = ["--cache-dir", str(tmp_path)]
    assert cache_main([*root, "list"]) == 0
    out = capsys.readouterr().out
    assert good.stem in out and bad.stem in out and "source model: standard MLP digits" in out
    assert "D_R dataset: representation_inversion from [standard MLP digits]" in out and "KB" in out
    assert cache_main([*root, "verify"]) == 0 and "3 ok, 0 bad" in capsys.readouterr().out
    truncate(cache, bad)
    assert cache_main([*root, "verify"]) == 1
    out = capsys.readouterr().out
    assert f"BAD {bad}" in out and str(good) not in out and "2 ok, 1 bad" in out
    assert cache_main([*root, "clear", "--kind", "models"]) == 0  # without --yes: says, removes nothing
    assert "nothing removed" in capsys.readouterr().out and good.exists() and bad.exists()
    assert cache_main([*root, "clear", "--kind", "models", "--yes"]) == 0
    assert not list((tmp_path / "models").glob("*.pt")) and not list((tmp_path / "models").glob("*.json"))
    assert len(list((tmp_path / "datasets").glob("*.pt"))) == 1  # other kinds stay
    assert cache_main([*root, "clear", "--yes"]) == 0 and not list(tmp_path.rglob("*.pt"))


def test_cache_cli_default_dir_is_the_runs_cache_dir(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.runtime.resolvers import CONF_DIR

    monkeypatch.setenv("ADVLAB_ROOT", str(tmp_path))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train")
    GlobalHydra.instance().clear()
    assert default_cache_dir() == tmp_path.resolve() / "cache" and str(default_cache_dir()) == cfg.paths.cache_dir


def test_cache_console_script_is_the_cli():
    import tomllib

    from conftest import REPO

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["advlab-cache"].split(":")
    assert getattr(__import__(module, fromlist=[func]), func) is cache_main
