"""Bad input: one line naming the key and the allowed values, exit code 2, no traceback, no work."""
from __future__ import annotations

import pytest

from conftest import run_advlab

CASES = [
    (["arch=transformer"], "arch", "allowed: cnn, densenet121, googlenet, mlp"),
    (["-m", "dataset=digits,imagenet"], "dataset", "allowed: cifar10, cifar10_jpeg, digits"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs", "integer"),
    (["eps.value=-0.5"], "eps.value", ">= 0"),
    (["eps=0.37"], "eps", "any other ε: eps.value=0.37"),  # a number is a value, not a named budget
    (["source.arch=cnn"], "source.arch", "arch@source.arch=cnn"),  # a group option at a node: Hydra's package syntax
    (["attack.norm=l3"], "attack.norm", "allowed: linf, l2"),
    (["method.target_rule=random"], "method.target_rule", "allowed: det, rand, uniform"),
    (["dataset=mnist"], "dataset.data_dir", "download"),  # no MNIST files under <root>/data
    (["paths.cache_dir=/proc/advlab-cache"], "paths.cache_dir", "writable"),
    (["arch@source.arch=vgg"], "arch@source.arch", "allowed:"),
    (["dataset=synthetic", "dataset.kind=laplace"], "dataset.kind", "allowed: gaussian"),  # raised inside instantiate
    (["arch=cnn", "dataset=synthetic"], "arch", "image inputs"),  # a model that cannot take this data
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
    assert not (run.run_dir / "checkpoints").exists() and not (advlab_root / "cache" / "models").exists()
