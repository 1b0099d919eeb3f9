"""No file advlab reads can run code: planted pickles (a checkpoint, a CIFAR-10 batch, a cache
artifact) are refused with one line naming the file, and legitimate files still load. Each planted
file is first shown to be armed (a full unpickle does run its code), so the absent marker means
something."""
from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from advlab.artifacts.cache import ArtifactCache
from advlab.data import CIFAR10DataModule
from advlab.data.torchvision_data import SafeCIFAR10
from advlab.errors import ConfigError
from advlab.artifacts.model_sources import load_checkpoint
from advlab.utils.safe_io import UnsafeFileError, load_array_pickle
from conftest import REPO, run_advlab
from test_data import CIFAR_NAMES, cifar_rows, make_cifar_batches

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


class Evil:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def assert_armed(path: Path, marker: Path, full_load) -> None:
    """The planted file really runs code under an unrestricted load; then the marker is removed again."""
    full_load(path)
    assert marker.exists(), "the planted pickle is not armed"
    marker.unlink()


def torch_full_load(path):
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A real advlab-train run directory (digits, standard training) with checkpoints/last.ckpt."""
    root = tmp_path_factory.mktemp("train")
    run = run_advlab(root, "method=standard", "logger=csv", "callbacks=default", "trainer.max_epochs=1", "arch.width=32",
                     env=ONE_THREAD)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow  # a real training run; test_eval_runs also loads one through advlab-eval by default
def test_real_checkpoint_loads_with_weights_only(train_run):
    d = train_run.run_dir
    model, info = load_checkpoint(d / "checkpoints" / "last.ckpt", d / "config_resolved.yaml", (dms := {}), torch.device("cpu"))
    dm = next(iter(dms.values()))
    with torch.no_grad():
        acc = (model(dm.x_test).argmax(1) == dm.y_test).float().mean().item()
    assert acc == pytest.approx(train_run.metrics["test/acc"], abs=1e-6)  # the trained weights, not a fresh init
    assert info["source"]["checkpoint"].endswith("last.ckpt")


@pytest.fixture
def hand_made_run(tmp_path, monkeypatch):
    """A run directory as advlab-train writes it (config_resolved.yaml with dataset and arch, Lightning's
    `model.`-prefixed state_dict in checkpoints/last.ckpt), made in-process: no training."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from advlab.runtime.resolvers import CONF_DIR
    from advlab.models import build_model

    monkeypatch.setenv("ADVLAB_ROOT", str(tmp_path))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["method=standard", "arch.width=16"])
    GlobalHydra.instance().clear()
    run = {"run_name": "hand-made", "dataset": OmegaConf.to_container(cfg.dataset, resolve=True),
           "arch": OmegaConf.to_container(cfg.arch, resolve=True)}
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "config_resolved.yaml").write_text(OmegaConf.to_yaml(run))
    dm = instantiate(cfg.dataset)
    dm.setup()
    torch.manual_seed(0)
    state = {f"model.{k}": v for k, v in build_model(cfg.arch, dm).state_dict().items()}
    torch.save({"epoch": 0, "global_step": 10, "state_dict": state, "hyper_parameters": {"lr": 0.1, "betas": (0.9, 0.99)}},
               d / "checkpoints" / "last.ckpt")
    return d, state


def test_hand_made_checkpoints(hand_made_run):
    from omegaconf import OmegaConf

    d, state = hand_made_run
    ckpt, config, cpu = d / "checkpoints" / "last.ckpt", d / "config_resolved.yaml", torch.device("cpu")
    model, _ = load_checkpoint(ckpt, config, {}, cpu)  # plain containers: accepted, weights as saved
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in model.state_dict().items())
    # hyperparameters saved as OmegaConf containers are objects beyond plain containers: refused, named
    torch.save({"state_dict": state, "hyper_parameters": OmegaConf.create({"lr": 0.1})}, ckpt)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(ckpt))}: refused: .*omegaconf"):
        load_checkpoint(ckpt, config, {}, cpu)
    ckpt.write_bytes(ckpt.read_bytes()[:300])  # truncated
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(ckpt))}: cannot be read: truncated"):
        load_checkpoint(ckpt, config, {}, cpu)
    torch.save({"weights": state}, ckpt)
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        load_checkpoint(ckpt, config, {}, cpu)


def test_planted_checkpoint_is_refused_by_advlab_eval(hand_made_run, tmp_path):
    """End to end: advlab-eval on a run whose last.ckpt would run `touch`: exit 2, one line naming the file."""
    d, state = hand_made_run
    ckpt, marker = d / "checkpoints" / "last.ckpt", tmp_path / "pwned"
    torch.save({"state_dict": state, "callbacks": {"Evil": Evil(marker)}}, ckpt)
    assert_armed(ckpt, marker, torch_full_load)
    run = run_advlab(tmp_path, "models=null", f"checkpoints=[{d}]", "logger=csv", "max_points=20",
                     module="advlab.apps.evaluate", env=ONE_THREAD, run_dir=tmp_path / "eval")
    assert not marker.exists()
    assert run.returncode == 2, run.stderr[-3000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"advlab-eval: error: {ckpt.resolve()}: refused: ") and "posix.system" in lines[-1], lines
    assert "Traceback" not in run.stderr


def plant_batch(folder: Path, name: str, marker: Path) -> Path:
    data, labels = cifar_rows(4, 0)
    with open(folder / name, "wb") as f:
        pickle.dump({"data": data, "labels": labels, "x": Evil(marker)}, f, protocol=2)
    return folder / name


def test_planted_cifar_batch_is_refused(tmp_path):
    folder = make_cifar_batches(tmp_path)
    marker = tmp_path / "pwned"
    batch = plant_batch(folder, "data_batch_1", marker)
    assert_armed(batch, marker, lambda p: pickle.load(open(p, "rb"), encoding="latin1"))
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.0)
    dm.check()  # the files are all there: only reading them reveals the pickle
    with pytest.raises(ConfigError) as err:
        dm.setup()
    assert not marker.exists()
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"dataset.data_dir: {batch}: refused: ") and "posix.system" in text
    with pytest.raises(UnsafeFileError, match="refused"):  # torchvision's own class would run it; ours does not
        SafeCIFAR10(str(tmp_path), train=True, check_md5=False)
    assert not marker.exists()


@pytest.mark.parametrize("style", ["python2-like", "python3-bytes-keys"])
def test_legitimate_cifar_batches_load_through_torchvision_class(tmp_path, style):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    n = 3
    for i, (name, _) in enumerate(torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list):
        data, labels = cifar_rows(n, 10 * i)
        entry = {"data": data, "labels": labels, "batch_label": name}
        if style == "python3-bytes-keys":  # as pickle.dump writes a dict with bytes keys by default
            entry = {k.encode(): v for k, v in entry.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2 if style == "python2-like" else pickle.DEFAULT_PROTOCOL)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES}, f, protocol=2)
    test = SafeCIFAR10(str(tmp_path), train=False, check_md5=False)
    assert isinstance(test, torchvision.datasets.CIFAR10) and test.classes == CIFAR_NAMES
    rows, labels = cifar_rows(n, 50)
    assert test.data.shape == (n, 32, 32, 3) and test.data.dtype == np.uint8 and test.targets == labels
    img, target = test[1]  # torchvision's own __getitem__: a PIL image in HWC layout
    assert target == labels[1] and np.array_equal(np.asarray(img), rows[1].reshape(3, 32, 32).transpose(1, 2, 0))
    train = SafeCIFAR10(str(tmp_path), train=True, check_md5=False)
    assert len(train) == 5 * n and train.targets == [t for i in range(5) for t in cifar_rows(n, 10 * i)[1]]
    with pytest.raises(RuntimeError, match="corrupted"):  # with the md5 check (the default), as torchvision
        SafeCIFAR10(str(tmp_path), train=False)


def test_array_unpickler_admits_arrays_only(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.int64), "b": [1, "x", b"y"]}, protocol=2))
    loaded = load_array_pickle(path)
    assert np.array_equal(loaded["a"], np.arange(3)) and loaded["b"] == [1, "x", b"y"]
    path.write_bytes(pickle.dumps({"f": np.float32}))  # a numpy *type*, not an array: refused too
    with pytest.raises(UnsafeFileError, match=rf"^{re.escape(str(path))}: refused: .*numpy"):
        load_array_pickle(path)
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(UnsafeFileError, match="cannot be read"):
        load_array_pickle(path)


def test_planted_cache_artifact_is_moved_aside_not_run(tmp_path, caplog):
    cache = ArtifactCache(tmp_path / "cache")
    spec, marker = {"k": 1}, tmp_path / "pwned"
    target = cache.path("models", spec)
    target.parent.mkdir(parents=True)
    torch.save({"spec": spec, "_cache": {"sha256": "0" * 64}, "t": torch.zeros(2), "x": Evil(marker)}, target)
    assert_armed(target, marker, torch_full_load)
    with caplog.at_level(logging.WARNING, logger="advlab.artifacts.cache"):
        payload, hit = cache.get_or_create("models", spec, lambda: {"t": torch.ones(2)})
    assert not marker.exists() and not hit and torch.equal(payload["t"], torch.ones(2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(target) in warnings[0] and "posix.system" in warnings[0], warnings
    assert len(list(target.parent.glob("*.corrupt-*"))) == 1


def test_no_unrestricted_unpickling_in_src():
    found = []
    for path in (REPO / "src").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"weights_only\s*=\s*False|\bpickle\.loads?\(|\bUnpickler\(", line) and "class " not in line:
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, found
