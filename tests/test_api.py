"""advlab from Python: `advlab.load_run`, `<Method>.load_from_checkpoint(path)` for every method,
one checkpoint loader behind every consumer, and the example script."""
from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

import advlab
from advlab.attacks import PGD
from advlab.data import DigitsDataModule
from advlab.methods import AdversarialTraining, StandardTraining
from advlab.methods.sparsity import SparsityTraining
from advlab.models import build_model
from conftest import REPO

OPT = {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9}
ARCH = OmegaConf.create({"_target_": "advlab.models.MLP", "_partial_": True, "width": 32})
PGD_CFG = {"_target_": "advlab.attacks.PGD", "eps": 0.5, "norm": "l2", "steps": 3}


@pytest.fixture(scope="module")
def trained_run(standard_cnn_run, tmp_path_factory):
    """A copy of the shared finished run (the example writes a plot into it)."""
    import shutil

    run_dir = tmp_path_factory.mktemp("api") / "run"
    shutil.copytree(standard_cnn_run.run_dir, run_dir)
    return dataclasses.replace(standard_cnn_run, run_dir=run_dir)


def test_load_run_reproduces_the_runs_test_accuracy(trained_run):
    run = advlab.load_run(trained_run.run_dir)
    assert not run.model.training and run.checkpoint.name == "last.ckpt"
    assert run.config.arch._target_.endswith("CNN") and run.metrics == trained_run.metrics
    n = len(run.datamodule.y_test)
    assert abs(run.test_accuracy() - run.metrics["test/acc"]) < 0.5 / n  # the same count of correct test points
    best = advlab.load_run(trained_run.run_dir, checkpoint="best")
    assert best.checkpoint.name == "best.ckpt"


def test_every_consumer_loads_the_same_weights(trained_run):
    """advlab-eval and advlab-transfer (model_sources.load_checkpoint) see what load_run sees: last.ckpt."""
    from advlab.artifacts.model_sources import checkpoint_files, load_checkpoint

    ckpt, config = checkpoint_files(trained_run.run_dir, "checkpoints[0]")
    assert ckpt.name == "last.ckpt"
    model, _ = load_checkpoint(ckpt, config, {}, "cpu")
    loaded = advlab.load_run(trained_run.run_dir).model
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_from_checkpoint_round_trips_the_standard_run(trained_run):
    module = StandardTraining.load_from_checkpoint(trained_run.run_dir / "checkpoints" / "last.ckpt")
    run = advlab.load_run(trained_run.run_dir)
    with torch.no_grad():
        assert torch.equal(module.model.eval()(run.datamodule.x_test), run.model(run.datamodule.x_test))


def _module(cls, dm):
    model = build_model(ARCH, dm)
    attack = PGD(eps=0.5, norm="l2", steps=3, bounds=(0.0, 1.0))
    kwargs = {StandardTraining: {}, AdversarialTraining: {"attack": attack}, SparsityTraining: {"lam": 10.0}}[cls]
    module = cls(model, OmegaConf.create(OPT), **kwargs)
    module.record_configs(arch=ARCH, datamodule=dm, attack=OmegaConf.create(PGD_CFG) if "attack" in kwargs else None)
    return module


# perturbation learning and D_R / D_NR train StandardTraining (on a derived dataset): its checkpoints are StandardTraining's
@pytest.mark.parametrize("cls", [StandardTraining, AdversarialTraining, SparsityTraining])
def test_load_from_checkpoint_needs_nothing_but_the_path(cls, tmp_path, one_torch_thread):
    dm = DigitsDataModule(seed=0, max_train=200)
    dm.setup()
    torch.manual_seed(0)
    module = _module(cls, dm)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(module, dm)  # the method's own training step on clean data (derived datasets are not needed here)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = cls.load_from_checkpoint(path)
    assert type(loaded) is cls
    for (name, a), (_, b) in zip(module.model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name
    if cls is AdversarialTraining:
        assert isinstance(loaded.attack, PGD) and loaded.attack.eps == 0.5 and loaded.attack.norm == "l2"


def test_the_example_loads_a_run_and_matches_torchattacks(trained_run):
    pytest.importorskip("torchattacks")
    out = subprocess.run([sys.executable, str(REPO / "examples" / "attack_a_run.py"), str(trained_run.run_dir), "120"],
                         capture_output=True, text=True, timeout=300, env={"OMP_WAIT_POLICY": "PASSIVE", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"eps=([\d.]+) \(120 points\)\s+advlab PGD ([\d.]+)\s+torchattacks PGD ([\d.]+)", out.stdout)
    assert len(rows) == 5
    run = advlab.load_run(trained_run.run_dir)
    clean = float(rows[0][1])
    expected = float((run.model(run.datamodule.x_test[:120]).argmax(1) == run.datamodule.y_test[:120]).float().mean())
    assert abs(clean - expected) < 1e-3 and f"metrics.json: {trained_run.metrics['test/acc']:.4f}" in out.stdout
    accs = [float(ours) for _, ours, _ in rows]
    assert accs == sorted(accs, reverse=True) and accs[-1] < clean  # monotone in ε, and the attack bites
    for _, ours, theirs in rows:  # the same algorithm: the same robust accuracy within a point or two
        assert abs(float(ours) - float(theirs)) <= 0.02
    assert (trained_run.run_dir / "plots" / "example_pgd_vs_torchattacks.png").is_file()
