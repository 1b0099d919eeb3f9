"""Checkpoints and resume with real advlab-train runs in subprocesses: last.ckpt is the last epoch,
a `kill -9` loses at most one epoch and the resumed run ends bit-identical to an uninterrupted one
(one CSV history, one W&B run), a finished run trains nothing, a corrupt last.ckpt is set aside."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import time

import pytest
import torch

from conftest import STANDARD_CNN as ARGS
from conftest import run_advlab
from wandb_records import read_run

EPOCHS = 6
assert f"trainer.max_epochs={EPOCHS}" in ARGS


def _epoch(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def _history(run_dir) -> list[tuple]:
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    return [(r["epoch"], r["step"], r.get("val/acc"), r.get("train/loss_epoch")) for r in rows]


def _result(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}  # timings (total_s, source_s) differ run to run


@pytest.fixture(scope="module")
def finished(standard_cnn_run, tmp_path_factory):
    """An uninterrupted run (a copy of the shared one): the reference for every resume."""
    root = tmp_path_factory.mktemp("resume")
    shutil.copytree(standard_cnn_run.run_dir, root / "uninterrupted")
    return root, dataclasses.replace(standard_cnn_run, run_dir=root / "uninterrupted")


def test_last_ckpt_is_the_last_epoch_and_best_sits_beside_it(finished):
    _, run = finished
    ckpts = run.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert _epoch(ckpts / "last.ckpt") == EPOCHS - 1
    val = [(float(r["val/acc"]), int(r["epoch"])) for r in csv.DictReader(open(run.run_dir / "csv" / "metrics.csv")) if r.get("val/acc")]
    assert len(val) == EPOCHS
    best_epoch = max(val, key=lambda t: (t[0], -t[1]))[1]  # the first epoch reaching the best val/acc
    assert _epoch(ckpts / "best.ckpt") == best_epoch


@pytest.fixture
def live_wandb_service():
    """A W&B service running in this (the parent) process, its address in WANDB_SERVICE, as after any
    in-process W&B use (a report, a notebook): child processes inherit the variable. An advlab run
    must not attach to it: a killed run's ID would stay "in use" there and its resume be refused."""
    import wandb

    before = os.environ.get("WANDB_SERVICE")
    wandb.setup()
    yield os.environ["WANDB_SERVICE"]
    wandb.teardown()
    os.environ.pop("WANDB_SERVICE", None)
    if before is not None:
        os.environ["WANDB_SERVICE"] = before


def test_kill_9_then_resume_ends_bit_identical_with_one_history(finished, live_wandb_service):
    root, reference = finished
    run_dir = root / "killed"
    assert os.environ["WANDB_SERVICE"] == live_wandb_service  # inherited by both advlab processes below
    proc, _ = run_advlab(root, *ARGS, run_dir=run_dir, wait=False)
    last, killed_at, seen = run_dir / "checkpoints" / "last.ckpt", None, {}
    while proc.poll() is None and killed_at is None:
        epoch = _epoch(last) if last.is_file() else None
        if epoch is not None and epoch not in seen:
            seen[epoch] = time.monotonic()
        if epoch is not None and epoch >= 2 and epoch - 1 in seen:
            # half an epoch into the next one (an epoch's duration: between two checkpoints): after the
            # epoch's train metrics, logged just after its checkpoint, and well before the next checkpoint
            time.sleep(0.5 * (seen[epoch] - seen[epoch - 1]))
            proc.send_signal(signal.SIGKILL)  # a real kill -9 of a real run, mid-training
            proc.wait()
            killed_at = _epoch(last)
        time.sleep(0.01)
    proc.communicate()
    assert killed_at is not None and not (run_dir / "metrics.json").exists(), "the run finished before the kill"
    assert killed_at < EPOCHS - 1, f"killed after the last epoch's checkpoint (epoch {killed_at}): not mid-training"
    resumed = run_advlab(root, *ARGS, run_dir=run_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({killed_at + 1} epochs done)" in resumed.log  # resumed after the last completed epoch
    assert _result(run_dir) == _result(reference.run_dir)  # bit-identical on CPU
    assert _history(run_dir) == _history(reference.run_dir)  # one CSV history, every epoch once
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(parts) == 2
    records = [read_run(next(p.glob("run-*.wandb"))) for p in parts]
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert {r["run_id"] for r in records} == {run_id}  # one W&B run, continued
    epochs = [sorted({h["epoch"] for h in r["history"] if "val/acc" in h}) for r in records]
    # what the killed part's W&B service had written ends at the kill. A kill -9 can lose the records the
    # service had not yet written (seen under a loaded CPU: none of the first part's epochs); the CSV
    # history above is the complete one.
    assert set(epochs[0]) <= set(range(killed_at + 1))
    assert epochs[1] == list(range(killed_at + 1, EPOCHS))  # ... and the second continues it
    assert records[1]["summary"]["test/acc"] == pytest.approx(_result(reference.run_dir)["test/acc"])


def test_a_finished_run_run_again_trains_nothing(finished):
    _, run = finished
    before = {p.name: p.stat().st_mtime_ns for p in (run.run_dir / "checkpoints").iterdir()}
    metrics = (run.run_dir / "metrics.json").read_text()
    again = run_advlab(run.run_dir.parent, *ARGS, run_dir=run.run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Run already finished" in again.log and "nothing to train" in again.log
    assert "epoch 1/" not in again.log
    assert (run.run_dir / "metrics.json").read_text() == metrics
    assert {p.name: p.stat().st_mtime_ns for p in (run.run_dir / "checkpoints").iterdir()} == before


def test_a_truncated_last_ckpt_is_set_aside_and_the_run_recovers(finished, tmp_path):
    _, reference = finished
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir)
    (run_dir / "metrics.json").unlink()
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])  # the disk filled up during a (non-atomic) write
    best_epoch = _epoch(run_dir / "checkpoints" / "best.ckpt")
    again = run_advlab(tmp_path, *ARGS[:-1], "logger=csv", "trainer.enable_progress_bar=false", run_dir=run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "epoch 6/6" not in again.log and "%|" not in again.log  # the progress display can be switched off
    warnings = [line for line in again.log.splitlines() if "last.ckpt is unreadable" in line]
    assert len(warnings) == 1 and "set aside as last.ckpt.corrupt-" in warnings[0]
    assert len(list((run_dir / "checkpoints").glob("last.ckpt.corrupt-*"))) == 1
    assert f"best.ckpt ({best_epoch + 1} epochs done)" in again.log  # the previous good checkpoint
    assert _epoch(last) == EPOCHS - 1
    assert _result(run_dir) == _result(reference.run_dir)
