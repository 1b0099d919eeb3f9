"""Gradient-masking checks (advlab.analysis.masking): each check trips on a model built to trip it and
stays quiet on an honest model (the digits MLP of test_attacks, a linear model)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.analysis.masking import CHECKS, masking_checks, masking_warning
from test_attacks import _linear_problem, batch, digits, mlp  # noqa: F401  (fixtures)
from test_autoattack import Quantized, Saturated

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Noisy(nn.Module):
    """Gaussian noise on the input in every forward pass, eval mode included (a randomised defence)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.05 * torch.randn_like(x))


class Constant(nn.Module):
    """The same logits whatever the input: no attack can change its prediction at any ε."""

    def __init__(self, classes: int = 10, label: int = 3):
        super().__init__()
        self.register_buffer("logits", nn.functional.one_hot(torch.tensor(label), classes).float())

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1)[:, :1]


@pytest.fixture(scope="module")
def results(mlp, batch):
    x, y = batch
    x, y = x[:64], y[:64]
    lin, lx, ly = _linear_problem(n=64)
    models = {"honest": (mlp, x, y), "linear": (lin, lx, ly), "quantized": (Quantized(mlp), x, y),
              "saturated": (Saturated(mlp), x, y), "noisy": (Noisy(mlp), x, y),
              "constant": (Constant(), x, torch.full_like(y, 3))}
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the noisy model's draws
        return {name: masking_checks(m, xx, yy, 0.1, steps=10, n_target_classes=3, queries=200)
                for name, (m, xx, yy) in models.items()}


TRIPS = {"randomised": "noisy", "zero_grad": "quantized", "saturated": "saturated", "black_box_wins": "quantized",
         "large_eps_robust": "constant"}


@pytest.mark.parametrize("check", CHECKS)
def test_each_check_trips_on_its_model_and_not_on_honest_ones(check, results):
    assert results[TRIPS[check]][f"checks/{check}"] is True
    for honest in ("honest", "linear"):
        assert results[honest][f"checks/{check}"] is False, honest


def test_numbers_behind_the_checks(results):
    honest, quant, sat = results["honest"], results["quantized"], results["saturated"]
    assert honest["checks/randomised_max_diff"] == 0 < results["noisy"]["checks/randomised_max_diff"]
    assert quant["checks/zero_grad_fraction"] == 1.0 and honest["checks/zero_grad_fraction"] == 0.0
    assert sat["checks/saturated_fraction"] > 0.9 and sat["checks/zero_grad_fraction"] > 0.9
    # the quantised model: the white box sees the clean accuracy, Square breaks most of it
    assert quant["checks/white_box_acc"] > 0.9 and quant["checks/black_box_only_fraction"] > 0.5
    assert honest["checks/black_box_only_fraction"] == 0.0 and honest["checks/white_box_acc"] < 0.5
    assert results["constant"]["checks/large_eps_acc"] == 1.0 and honest["checks/large_eps_acc"] == 0.0
    assert honest["checks/large_eps"] == pytest.approx(1.0) and honest["checks/n"] == 64
    assert not honest["checks/any"] and not results["linear"]["checks/any"]
    assert all(results[m]["checks/any"] for m in ("quantized", "saturated", "noisy", "constant"))


def test_warning_line(results):
    assert masking_warning(results["honest"]) is None
    line = masking_warning(results["quantized"])
    assert "zero_grad (1)" in line and "black_box_wins" in line and "\n" not in line
    assert "saturated" in masking_warning(results["saturated"])
