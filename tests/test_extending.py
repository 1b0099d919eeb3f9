"""A new attack and a new architecture are one Python file + one YAML each, found by Hydra's `_target_`
from a `--config-dir`: nothing in advlab is edited or registered (issue 13, acceptance 4)."""
from __future__ import annotations

import textwrap

import pytest
import torch

from conftest import run_advlab

TOY_ATTACK = '''
"""A toy attack: one signed-gradient L-inf step of size eps (FGSM, written outside advlab)."""
import torch
import torch.nn.functional as F

from advlab.attacks.base import Attack


class SignStep(Attack):
    def _perturb(self, model, x, y):
        x = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        return (x + self.eps * grad.sign()).clamp(*self.bounds)
'''

TOY_ARCH = '''
"""A toy architecture: one hidden layer of `hidden` tanh units."""
from torch import nn

from advlab.models.base import Classifier


class TanhNet(Classifier):
    def __init__(self, input_shape, num_classes, hidden: int = 32, normalize: str = "standardize", mean=None, std=None):
        super().__init__(input_shape, num_classes, normalize=normalize, mean=mean, std=std)
        self.hidden = nn.Linear(self.in_features, int(hidden))
        self.readout = nn.Linear(int(hidden), self.num_classes)

    def penultimate(self, x):
        return self.hidden(x.flatten(1)).tanh()

    def features(self, x):
        return self.readout(self.penultimate(x))
'''

TOY_ATTACK_YAML = """
_target_: toy_sign_step.SignStep
eps: ${eps.value}
seed: ${seed}
"""

TOY_ARCH_YAML = """
_target_: toy_tanh_net.TanhNet
_partial_: true
hidden: 37
"""


@pytest.fixture(scope="module")
def plugin_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("extending")
    code, conf = root / "code", root / "conf"
    for folder, name, text in ((code, "toy_sign_step.py", TOY_ATTACK), (code, "toy_tanh_net.py", TOY_ARCH),
                               (conf / "attack", "toy_sign_step.yaml", TOY_ATTACK_YAML),
                               (conf / "arch", "toy_tanh_net.yaml", TOY_ARCH_YAML)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    return root, code, conf


def test_a_toy_attack_and_architecture_run_from_a_config_dir(plugin_dirs, monkeypatch):
    root, code, conf = plugin_dirs
    run = run_advlab(root, "--config-dir", str(conf), "method=standard", "arch=toy_tanh_net", "attack@eval_attack=toy_sign_step",
                     "eps=digits_linf", "trainer.max_epochs=8", "logger=csv", env={"PYTHONPATH": str(code)})
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = run.metrics
    assert metrics["test/acc"] >= 0.85, metrics

    # the run's model is the toy architecture with the YAML's width ...
    monkeypatch.syspath_prepend(str(code))
    import advlab
    from advlab.attacks import FGSM

    loaded = advlab.load_run(run.run_dir)
    assert type(loaded.model).__name__ == "TanhNet" and loaded.model.hidden.weight.shape == (37, 64)
    assert loaded.test_accuracy() == pytest.approx(metrics["test/acc"], abs=1e-6)
    # ... and its test/adv_acc is the toy attack's: FGSM (the same step) on the same model and test set
    x, y = loaded.datamodule.x_test, loaded.datamodule.y_test
    x_adv = FGSM(eps=0.1, norm="linf")(loaded.model, x, y)
    with torch.no_grad():
        fgsm_acc = float((loaded.model(x_adv).argmax(1) == y).float().mean())
    assert metrics["test/adv_acc"] < metrics["test/acc"] - 0.05
    assert metrics["test/adv_acc"] == pytest.approx(fgsm_acc, abs=2 / len(y))


def test_a_toy_plugins_keys_are_checked_before_any_work(plugin_dirs):
    root, code, conf = plugin_dirs
    for typo, key in (("arch.hiden=5", "arch.hiden"), ("eval_attack.step=3", "eval_attack.step")):
        run = run_advlab(root, "--config-dir", str(conf), "method=standard", "arch=toy_tanh_net", "attack@eval_attack=toy_sign_step",
                         typo, "logger=csv", run_dir=root / "typo", env={"PYTHONPATH": str(code)})
        lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
        assert run.returncode == 2 and len(lines) == 1 and key in lines[0], run.stderr[-2000:]
        assert not (root / "typo").exists()


@pytest.mark.parametrize("app,line,expected", [
    ("advlab-train", "eps=", {"eps=digits_l2", "eps=cifar_linf", "eps=8px"}),
    ("advlab-train", "experiment=ilyas", {"experiment=ilyas_cifar10", "experiment=ilyas_cifar10_cpu"}),
    ("advlab-train", "eps.val", {"eps.value="}),
    ("advlab-train", "source.max_ep", {"source.max_epochs="}),
])
def test_tab_completion_of_documented_overrides(app, line, expected):
    """Hydra's bash completion (docs/concepts/command-line.md, "Tab completion") on advlab's apps."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name(app)
    env = {**os.environ, "COMP_LINE": f"{app} {line}", "WANDB_MODE": "offline"}
    out = subprocess.run([str(exe), "-sc", "query=bash"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert expected <= set(out.stdout.split()), out.stdout
