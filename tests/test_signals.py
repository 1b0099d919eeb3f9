"""Preemption-safe runs with real signals (advlab.utils.signals): SIGTERM / SIGINT during the source
model's training, the crafting and the main training checkpoint the work, exit 143 / 130 with one line
saying how to resume, and the same command resumes to an uninterrupted run's metrics, bit for bit
(CPU). A kill -9 during a cached model's training resumes from its last completed epoch.

The in-process tests send real signals to this process (inside `signals.handled()`, which restores the
handlers) and cover each mechanism in about a second; the subprocess tests run advlab-train itself
(15-25 s a run on a 2-core machine): SIGTERM during the source's training in the default suite (the
printed command resumes it and the rest of the run), the others (the main training, crafting, SIGINT,
kill -9, a multirun, submitit's requeue) marked slow."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import threading
import time

import pytest
import torch

from conftest import run_advlab

# digits, perturbation learning: a 3-epoch source, 11 crafting batches of 128, 3 training epochs
ARGS = ["trainer.max_epochs=3", "source.max_epochs=3", "attack.steps=10", "derived.batch_size=128", "callbacks=default",
        "logger=csv", "arch.width=256"]
RESUME = "Resume with the same command: "


class Watched:
    """A run in a subprocess whose output lines are read as they come; `signal_when(pred, sig)` sends
    `sig` once `pred(lines so far)` holds."""

    def __init__(self, root, *args, run_dir=None):
        self.proc, self.run_dir = run_advlab(root, *args, run_dir=run_dir, wait=False)
        self.out, self.err, self.signalled_at = [], [], None
        self.readers = [threading.Thread(target=self._read, args=(s, b), daemon=True) for s, b in
                        ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line)

    def signal_when(self, pred, sig, timeout=240):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if pred(self.out + self.err):
                self.proc.send_signal(sig)
                self.signalled_at = time.monotonic()
                break
            time.sleep(0.02)
        return self.finish()

    def finish(self):
        self.proc.wait(timeout=120)
        for t in self.readers:
            t.join(timeout=10)
        self.exit_s = time.monotonic() - self.signalled_at if self.signalled_at else None
        return self

    @property
    def log(self) -> str:
        return "".join(self.out + self.err)


def _seen(*patterns):
    """A predicate: the patterns appear in this order in the output lines."""
    def pred(lines):
        at = 0
        for pattern in patterns:
            at = next((i for i in range(at, len(lines)) if pattern in lines[i]), None)
            if at is None:
                return False
            at += 1
        return True
    return pred


def _metrics(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}  # timings (total_s, source_s) differ run to run


def _payloads(cache_dir, kind) -> dict:
    return {p.stem: torch.load(p, map_location="cpu", weights_only=True) for p in sorted((cache_dir / kind).glob("*.pt"))}


def _resume_line(run: Watched, signame: str, code: int) -> str:
    assert run.proc.returncode == code, run.log[-3000:]
    lines = [ln for ln in run.log.splitlines() if RESUME in ln]
    assert len(lines) == 1, run.log[-3000:]  # one line, on stderr
    assert lines[0] in "".join(run.err) and f"interrupted by {signame}" in lines[0]
    assert not (run.run_dir / "metrics.json").exists() and "Traceback" not in run.log
    return lines[0]


def _command(line: str) -> list[str]:
    """The printed resume command, as a `python -m` command line."""
    prog, *args = shlex.split(line.split(RESUME, 1)[1])
    app = {"eval": "evaluate"}.get(prog.removeprefix("advlab-"), prog.removeprefix("advlab-"))
    return [sys.executable, "-m", f"advlab.apps.{app}", *args]


# -- in-process: the signal handling itself, real signals to this process --------------------------------
def test_a_signal_raises_at_once_outside_deferred_regions_and_at_their_safe_point_inside():
    from advlab.utils import signals

    before = {s: signal.getsignal(s) for s in signals.SIGNALS}
    with signals.handled():
        with pytest.raises(signals.Interrupted) as caught:
            signal.raise_signal(signal.SIGINT)
        assert caught.value.signum == signal.SIGINT and caught.value.exit_code == 130
    steps = []
    with signals.handled():
        with pytest.raises(signals.Interrupted) as caught, signals.doing("crafting"), signals.deferred():
            signal.raise_signal(signal.SIGTERM)
            steps.append(signals.received())  # recorded, not raised: the region runs on to its safe point
        assert steps == [signal.SIGTERM] and caught.value.exit_code == 143 and caught.value.during == "crafting"
    with signals.handled():
        with pytest.raises(signals.Interrupted), signals.deferred("training"):
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # a second signal does not wait
            steps.append("not reached")
    assert steps == [signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in signals.SIGNALS} == before  # restored


def test_the_task_wrapper_exits_128_plus_the_signal_with_one_line(capsys):
    from omegaconf import OmegaConf

    from advlab.utils import signals
    from advlab.runtime.task_wrapper import task_wrapper

    def task(cfg):
        with signals.doing("training the source model"):
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(SystemExit) as caught:
        task_wrapper(task)(OmegaConf.create({"task_name": "eval"}))
    assert caught.value.code == 143
    err = capsys.readouterr().err.splitlines()
    assert err == ["advlab-eval: interrupted by SIGTERM while training the source model; its completed epochs and crafted batches are saved. "
                   "Resume with the same command: the same call"]

    def lightning_stop(cfg):  # what Lightning raises after its own SIGTERM handler ran: a SystemExit without a code
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        raise SIGTERMException

    with pytest.raises(SystemExit) as caught:
        task_wrapper(lightning_stop)(OmegaConf.create({"task_name": "train"}))
    assert caught.value.code == 143 and len(capsys.readouterr().err.splitlines()) == 1
    with pytest.raises(SystemExit) as caught:  # other exits are left alone
        task_wrapper(lambda cfg: (_ for _ in ()).throw(SystemExit(3)))(OmegaConf.create({}))
    assert caught.value.code == 3 and capsys.readouterr().err == ""
    assert task_wrapper(lambda cfg: 0.5)(OmegaConf.create({})) == 0.5


@pytest.fixture
def crafting(digits_mlp, one_torch_thread):
    """craft(cache, batch_size): the perturbation set of 200 digits crafted as a cache build (PGD with
    random starts: the attack's random stream matters), from a fresh attack as a new process would."""
    from conftest import attack_from_conf

    from advlab.derived.perturbation import craft_dataset

    model, x, y = digits_mlp

    def craft(cache, batch_size=32):
        attack = attack_from_conf("pgd_linf", eps=0.2, steps=5)
        make = lambda: craft_dataset(model, attack, x, y, 10, target_rule="rand", batch_size=batch_size, progress=False)  # noqa: E731
        return cache.get_or_create("datasets", {"test": "crafting"}, make)[0]

    return craft


def _interrupt_at(monkeypatch, call: int, action):
    """`action()` when the crafting loop reports its `call`-th batch done (before it is recorded)."""
    from advlab.derived.resume import CraftProgress

    done, calls = CraftProgress.done, []

    def patched(self, end, state):
        calls.append(end)
        if len(calls) == call:
            action()
        done(self, end, state)

    monkeypatch.setattr(CraftProgress, "done", patched)
    return calls


def _same_set(a: dict, b: dict) -> None:
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert [a[k] for k in ("success_rate", "delta_l2_mean", "delta_linf_max", "delta_linf_mean")] == \
        [b[k] for k in ("success_rate", "delta_l2_mean", "delta_linf_max", "delta_linf_mean")]


def test_sigint_during_crafting_saves_the_batches_done_and_the_rerun_ends_identical(tmp_path, crafting, monkeypatch):
    from advlab.artifacts.cache import ArtifactCache
    from advlab.utils import signals

    reference = crafting(ArtifactCache(tmp_path / "reference"))
    cache = ArtifactCache(tmp_path / "cache")
    calls = _interrupt_at(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGINT))
    with signals.handled(), pytest.raises(signals.Interrupted) as caught:
        crafting(cache)
    assert caught.value.signum == signal.SIGINT and calls == [32, 64, 96]  # stopped after the batch under way
    chunks = sorted((tmp_path / "cache" / "datasets").glob(".*.partial/craft-*.pt"))
    assert [c.name for c in chunks] == ["craft-0000000000-0000000096.pt"] and not list((tmp_path / "cache" / "datasets").glob("*.pt"))
    monkeypatch.undo()
    _same_set(crafting(cache), reference)
    assert not list((tmp_path / "cache" / "datasets").glob(".*.partial"))  # removed with the entry written


def test_a_crafting_killed_between_saves_resumes_from_the_last_chunk(tmp_path, crafting, monkeypatch, caplog):
    from advlab.artifacts.cache import ArtifactCache
    from advlab.derived import resume

    reference = crafting(ArtifactCache(tmp_path / "reference"))
    cache = ArtifactCache(tmp_path / "cache")
    monkeypatch.setattr(resume, "SAVE_EVERY_S", 0.0)  # a chunk per batch

    def crash():  # no signal, no chance to save: as a kill -9 (an exception stands in for it in-process)
        raise RuntimeError("killed")

    _interrupt_at(monkeypatch, 5, crash)
    with pytest.raises(RuntimeError, match="killed"):
        crafting(cache)
    assert len(list((tmp_path / "cache" / "datasets").glob(".*.partial/craft-*.pt"))) == 4
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="advlab.derived.resume"):
        _same_set(crafting(cache), reference)
    assert "resuming at input 128 of 200 (4 batches saved" in caplog.text
    # chunks of another crafting (another batch size: other random starts) are not resumed
    _interrupt_at(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGTERM))
    other = ArtifactCache(tmp_path / "other")
    from advlab.utils import signals

    with signals.handled(), pytest.raises(signals.Interrupted):
        crafting(other, batch_size=32)
    monkeypatch.undo()
    with caplog.at_level("WARNING", logger="advlab.derived.resume"):
        _same_set(crafting(other, batch_size=50), crafting(ArtifactCache(tmp_path / "reference50"), batch_size=50))
    assert "does not continue the saved crafting; crafting again from input 0" in caplog.text


def test_representation_inversion_resumes_identical(tmp_path, one_torch_thread, monkeypatch):
    from torch import nn

    from advlab.artifacts.cache import ArtifactCache
    from advlab.derived.robust import RobustDataset
    from advlab.utils import signals

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body, self.head = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU()), nn.Linear(16, 3)

        def representation(self, x):
            return self.body(x)

        def forward(self, x):
            return self.head(self.body(x))

    net, x = Net(), torch.rand(70, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    ds = RobustDataset(steps=4, step_size=0.1, batch_size=16)

    def build(root):
        make = lambda: ds._invert(net, x, x.flip(0), (0.0, 1.0), "cpu", False, "D_NR")  # noqa: E731
        return ArtifactCache(root).get_or_create("datasets", {"test": "inversion"}, make)[0]

    reference = build(tmp_path / "reference")
    _interrupt_at(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGTERM))
    with signals.handled(), pytest.raises(signals.Interrupted):
        build(tmp_path / "cache")
    monkeypatch.undo()
    resumed = build(tmp_path / "cache")
    assert all(torch.equal(resumed[k], reference[k]) for k in ("x", "distance_initial", "distance_final"))


@pytest.fixture(scope="module")
def small_spec():
    """A 4-epoch MLP source spec on 200 digits (conf/spec/standard.yaml, composed by Hydra)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from advlab.runtime.resolvers import CONF_DIR
    from advlab.data import DigitsDataModule

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["source.max_epochs=4"])
    GlobalHydra.instance().clear()
    arch = {"_target_": "advlab.models.MLP", "_partial_": True, "width": 16, "depth": 1}
    spec = OmegaConf.merge(OmegaConf.to_container(cfg.source, resolve=True), {"arch": arch, "seed": 0})
    digits = DigitsDataModule(seed=0, max_train=200)
    digits.setup()
    return spec, digits


def _train_source(root, small_spec):
    from advlab.artifacts.models import Artifacts, source_model
    from advlab.artifacts.cache import ArtifactCache

    spec, digits = small_spec
    artifacts = Artifacts(ArtifactCache(root), trainer={"accelerator": "cpu"}, progress=False)
    model, metrics, _ = source_model(spec, digits, artifacts)
    return {k: v.clone() for k, v in model.state_dict().items()}, metrics, artifacts.trained["source"]["history"]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "crash"])
def test_a_cached_models_training_resumes_from_its_last_epoch_to_identical_weights(how, tmp_path, small_spec, one_torch_thread,
                                                                                   monkeypatch, caplog):
    """SIGTERM (Lightning's own flag) and SIGINT (advlab's StopOnSignal) at the end of epoch 2 of 4:
    the partial last.ckpt holds 2 epochs; a crash (an exception standing in for a kill -9) in epoch 3's
    end, before its checkpoint: also 2. The re-run resumes there and ends with the uninterrupted weights."""
    from advlab.callbacks.checkpoint import ResumableHistory
    from advlab.utils import signals

    reference = _train_source(tmp_path / "reference", small_spec)
    epoch_end, seen = ResumableHistory.on_train_epoch_end, []

    def hook(self, trainer, pl_module):
        epoch_end(self, trainer, pl_module)
        seen.append(trainer.current_epoch)
        if how != "crash" and len(seen) == 2:
            signal.raise_signal(getattr(signal, how))
        if how == "crash" and len(seen) == 3:
            raise RuntimeError("killed")

    monkeypatch.setattr(ResumableHistory, "on_train_epoch_end", hook)
    with signals.handled(), pytest.raises(signals.Interrupted if how != "crash" else RuntimeError) as caught:
        _train_source(tmp_path / "cache", small_spec)
    if how != "crash":
        assert caught.value.signum == getattr(signal, how) and caught.value.during == "training the source model"
    (last,) = (tmp_path / "cache" / "models").glob(".*.partial/last.ckpt")
    assert int(torch.load(last, weights_only=True)["epoch"]) == 1 and seen == [0, 1] + ([2] if how == "crash" else [])
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="advlab.artifacts.models"):
        weights, metrics, history = _train_source(tmp_path / "cache", small_spec)
    assert f"Resuming source model from {last} (2 of 4 epochs done)" in caplog.text
    assert all(torch.equal(weights[k], reference[0][k]) for k in weights)
    assert metrics == reference[1] and history == reference[2] and len(history) == 4
    assert not last.parent.exists()


def test_cache_clear_removes_partial_builds_unless_a_run_holds_their_lock(tmp_path, capsys):
    from filelock import FileLock

    from advlab.apps.cache import main as cache_main

    for key in ("aaaa", "bbbb"):
        (tmp_path / "models" / f".{key}.partial").mkdir(parents=True)
        (tmp_path / "models" / f".{key}.partial" / "craft-0000000000-0000000010.pt").write_bytes(b"x")
    with FileLock(str(tmp_path / "models" / "bbbb.pt.lock")):  # a run is building bbbb
        assert cache_main(["--cache-dir", str(tmp_path), "clear", "--yes"]) == 0
    assert "kept 1 partial build(s) that a run is building now" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "models").glob(".*.partial")] == [".bbbb.partial"]


# -- real runs in subprocesses ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every resumed one must equal."""
    root = tmp_path_factory.mktemp("uninterrupted")
    run = run_advlab(root, *ARGS)
    assert run.returncode == 0, run.stderr[-3000:]
    return root


def test_sigterm_during_source_training_then_the_printed_command_resumes_bit_identical(reference, tmp_path, capsys):
    import subprocess

    from advlab.apps.cache import main as cache_main

    run = Watched(tmp_path, *ARGS).signal_when(_seen("Training source model", "epoch 1/3"), signal.SIGTERM)
    line = _resume_line(run, "SIGTERM", 143)
    assert "while training the source model" in line and f"hydra.run.dir={run.run_dir}" in line
    partial = next((tmp_path / "cache" / "models").glob(".*.partial"))
    done = int(torch.load(partial / "last.ckpt", weights_only=True)["epoch"]) + 1
    assert 1 <= done < 3 and not list((tmp_path / "cache" / "models").glob("*.pt"))
    assert cache_main(["--cache-dir", str(tmp_path / "cache"), "list"]) == 0
    assert f"partial: model training, {done} epoch(s) done" in capsys.readouterr().out
    assert cache_main(["--cache-dir", str(tmp_path / "cache"), "verify"]) == 0
    assert "1 partial build(s)" in capsys.readouterr().out

    env = {**os.environ, "ADVLAB_ROOT": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    resumed = subprocess.run(_command(line), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming source model from {partial / 'last.ckpt'} ({done} of 3 epochs done)" in resumed.stdout + resumed.stderr
    assert _metrics(run.run_dir) == _metrics(reference / "run")
    mine, theirs = _payloads(tmp_path / "cache", "models"), _payloads(reference / "cache", "models")
    assert mine.keys() == theirs.keys() and not partial.exists()  # removed once the entry is written
    for key in mine:
        assert mine[key]["history"] == theirs[key]["history"] and len(mine[key]["history"]) == 3
        assert all(torch.equal(v, theirs[key]["state_dict"][k]) for k, v in mine[key]["state_dict"].items())


@pytest.mark.slow  # the in-process crafting tests above cover the saving and resuming with real signals
def test_sigterm_during_crafting_saves_the_batches_and_resumes_bit_identical(reference, tmp_path):
    run = Watched(tmp_path, *ARGS).signal_when(_seen("Crafting perturbation dataset:"), signal.SIGTERM)
    line = _resume_line(run, "SIGTERM", 143)
    assert "while crafting the perturbation dataset" in line
    chunks = sorted((tmp_path / "cache" / "datasets").glob(".*.partial/craft-*.pt"))
    assert len(chunks) == 1 and not list((tmp_path / "cache" / "datasets").glob("*.pt"))
    saved = int(chunks[0].stem.rsplit("-", 1)[1])
    assert saved % 128 == 0 and 3 * 128 <= saved < 1293  # whole batches, at least the quarter the log reported
    resumed = run_advlab(tmp_path, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming at input {saved} of 1293" in resumed.log and "Cache hit: reusing source model" in resumed.log
    assert _metrics(resumed.run_dir) == _metrics(reference / "run")
    (key, mine), = _payloads(tmp_path / "cache", "datasets").items()
    theirs = _payloads(reference / "cache", "datasets")[key]
    assert torch.equal(mine["x"], theirs["x"]) and torch.equal(mine["y"], theirs["y"])


@pytest.mark.slow  # the same Lightning path as the cached model's (in-process above); the resume as test_resume's kill -9
def test_sigterm_during_main_training_resumes_from_last_ckpt_bit_identical(reference, tmp_path):
    run = Watched(tmp_path, *ARGS).signal_when(_seen("Perturbation dataset:", "epoch 1/3"), signal.SIGTERM)
    line = _resume_line(run, "SIGTERM", 143)
    assert "while training" in line
    done = int(torch.load(run.run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]) + 1
    assert 1 <= done < 3
    resumed = run_advlab(tmp_path, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({done} epochs done)" in resumed.log and "Cache hit: reusing perturbation dataset" in resumed.log
    assert _metrics(resumed.run_dir) == _metrics(reference / "run")


@pytest.mark.slow
def test_sigint_during_main_training_exits_130_and_resumes(reference, tmp_path):
    run = Watched(tmp_path, *ARGS).signal_when(_seen("Perturbation dataset:", "epoch 1/3"), signal.SIGINT)
    _resume_line(run, "SIGINT", 130)
    resumed = run_advlab(tmp_path, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _metrics(resumed.run_dir) == _metrics(reference / "run")


@pytest.mark.slow  # in-process: test_a_cached_models_training_resumes_from_its_last_epoch_to_identical_weights
def test_kill_9_during_a_cached_models_training_resumes_from_its_epoch(reference, tmp_path):
    run = Watched(tmp_path, *ARGS)
    last = None
    while run.proc.poll() is None:  # the partial checkpoint of the source's first epoch, then kill -9
        found = list((tmp_path / "cache" / "models").glob(".*.partial/last.ckpt"))
        if found:
            last = found[0]
            run.proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    run.finish()
    assert run.proc.returncode == -signal.SIGKILL and last is not None
    done = int(torch.load(last, weights_only=True)["epoch"]) + 1
    assert done < 3
    resumed = run_advlab(tmp_path, *ARGS)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming source model from {last} ({done} of 3 epochs done)" in resumed.log
    assert _metrics(resumed.run_dir) == _metrics(reference / "run")
    mine, theirs = _payloads(tmp_path / "cache", "models"), _payloads(reference / "cache", "models")
    for key in mine:
        assert all(torch.equal(v, theirs[key]["state_dict"][k]) for k, v in mine[key]["state_dict"].items())


@pytest.mark.slow
def test_sigterm_in_a_multirun_records_the_resume_line_in_error_txt(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *ARGS[:-1], "arch.width=256,128", f"hydra.sweep.dir={sweep}"]
    run = Watched(tmp_path, *args).signal_when(_seen("Perturbation dataset:", "epoch 1/3"), signal.SIGTERM)
    line = _resume_line(run, "SIGTERM", 143)
    assert re.search(r"advlab-train -m .*arch.width=256,128.* hydra.sweep.dir=", line), line
    assert (sweep / "0" / "error.txt").read_text().splitlines()[0] == line
    assert not (sweep / "1").exists()  # a signal stops the sweep
    resumed = run_advlab(tmp_path, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all((sweep / job / "metrics.json").is_file() for job in ("0", "1")) and not (sweep / "0" / "error.txt").exists()


def _descendant(pid: int, marker: str) -> int | None:
    """The pid of a process below `pid` (this test's own child) whose command line contains `marker`."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            if marker in (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                return child
        except OSError:
            continue
        todo += children.get(child, [])
    return None


@pytest.mark.slow
def test_submitit_requeues_a_preempted_job_which_resumes(tmp_path):
    """What SLURM sends `signal_delay_s` before the time limit (and at a preemption where the cluster
    signals it): USR2 to the job. submitit checkpoints the launcher's call and requeues it (here: the
    local executor restarts it); the requeued job resumes from its last.ckpt."""
    sweep = tmp_path / "sweep"
    run = Watched(tmp_path, "-m", *ARGS, "hydra/launcher=submitit_cpu", f"hydra.sweep.dir={sweep}")
    log, job = sweep / "0" / "train.log", None
    deadline = time.monotonic() + 240
    while run.proc.poll() is None and job is None and time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.is_file() else []
        if _seen("Perturbation dataset:", "epoch 1/3")(lines):
            job = _descendant(run.proc.pid, "submitit.core._submit")
            os.kill(job, signal.SIGUSR2)
        time.sleep(0.05)
    run.finish()
    assert job is not None and run.proc.returncode == 0, run.log[-3000:]
    text = log.read_text()
    done = re.findall(r"\((\d) epochs done\)", text)
    assert len(done) == 1 and 1 <= int(done[0]) < 3, text[-3000:]
    submitit_logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in submitit_logs and "Requeued job" in submitit_logs
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "0" / "error.txt").exists()
