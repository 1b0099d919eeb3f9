"""Bad input: one line naming the key and the allowed values, exit code 2, no traceback, no work."""
from __future__ import annotations

import pytest

from conftest import run_advlab

CASES = [
    (["arch=transformer"], "arch", "allowed: cnn, densenet121, densenet121_cpu, googlenet, googlenet_cpu, kumano_convnet, lenet, mlp"),
    (["-m", "dataset=digits,stl10"], "dataset", "allowed: cifar10, cifar100, cifar100_c, cifar10_c, cifar10_jpeg, digits"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs", "integer"),
    (["eps.value=-0.5"], "eps.value", ">= 0"),
    (["eps=0.37"], "eps", "any other ε: eps.value=0.37"),  # a number is a value, not a named budget
    (["source.arch=cnn"], "source.arch", "arch@source.arch=cnn"),  # a group option at a node: Hydra's package syntax
    (["attack.norm=l3"], "attack.norm", "allowed: linf, l2"),
    (["derived.target_rule=random"], "derived.target_rule", "allowed: det, rand, uniform"),
    (["dataset=mnist"], "dataset.data_dir", "download"),  # no MNIST files under <root>/data
    (["paths.cache_dir=/proc/advlab-cache"], "paths.cache_dir", "writable"),
    (["arch@source.arch=vgg"], "arch@source.arch", "allowed:"),
    (["dataset=synthetic", "dataset.kind=laplace"], "dataset.kind", "allowed: gaussian"),  # raised inside instantiate
    (["arch=cnn", "dataset=synthetic"], "arch", "image inputs"),  # a model that cannot take this data
]
# issue 13's list: refused by the pre-flight, before Hydra makes the run directory
PREFLIGHT_CASES = [
    (["method=perturbation", "+method.target_rul=rand"], "method.target_rul", "target_rule"),
    (["+foo=1"], "foo", "allowed: arch, attack,"),
    (["trainer.accelerator=tpu"], "trainer.accelerator", "allowed: auto, cpu, gpu, cuda, mps"),
    (["trainer.devices=0"], "trainer.devices", "got 0"),
    (["method=perturbation", "derived.batch_size=0"], "derived.batch_size", "integer >= 1"),
    (["dataset.classes=[1]"], "dataset.classes", "at least 2 classes"),
    (["trainer.precision=bf32"], "trainer.precision", "allowed: auto, 64, 32, 16"),  # once, before any data (Lightning's list)
]


@pytest.mark.parametrize("overrides,key,allowed", CASES, ids=[c[1] + ":" + c[0][-1] for c in CASES])
def test_bad_input_is_one_clear_line(advlab_root, overrides, key, allowed):
    run = run_advlab(advlab_root, *overrides, "logger=csv")
    assert run.returncode == 2, run.log[-2000:]
    assert "Traceback" not in run.log
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("advlab-train: error: " + key), lines[0]
    assert allowed in lines[0]
    assert not (advlab_root / "cache" / "models").exists()
    assert not run.run_dir.exists()  # refused: no stub run directory, also when the task refused it (issue 22)


def _one_error_line(run, prog: str, key: str, allowed: str) -> None:
    assert run.returncode == 2, run.log[-2000:]
    assert "Traceback" not in run.log
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"{prog}: error: {key}"), lines[0]
    assert allowed in lines[0]
    assert not run.run_dir.exists()  # refused before Hydra started: nothing written


@pytest.mark.parametrize("overrides,key,allowed", PREFLIGHT_CASES, ids=[c[1] for c in PREFLIGHT_CASES])
def test_preflight_refuses_before_anything_is_written(advlab_root, overrides, key, allowed):
    _one_error_line(run_advlab(advlab_root, *overrides, "logger=csv"), "advlab-train", key, allowed)
    assert not (advlab_root / "cache").exists()


@pytest.mark.parametrize("key", ["transfer.batch_size", "batch_size"])  # the new form, and the old one (one release)
def test_transfer_batch_size_is_refused_before_any_source_model(advlab_root, key):
    run = run_advlab(advlab_root, f"{key}=0", "logger=csv", module="advlab.apps.transfer")
    _one_error_line(run, "advlab-transfer", key, "integer >= 1")


def test_malformed_yaml_of_a_config_dir_names_its_file_and_line(advlab_root, tmp_path):
    (tmp_path / "experiment").mkdir()
    broken = tmp_path / "experiment" / "broken.yaml"
    broken.write_text("# @package _global_\nmethod:\n  target_rule: [rand\n  base: natural\n")
    run = run_advlab(advlab_root, "--config-dir", str(tmp_path), "experiment=broken", "logger=csv")
    _one_error_line(run, "advlab-train", f"{broken}:3", "line 3")
