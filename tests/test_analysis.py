"""The analyses of advlab-eval on small models: curve invariants, gradient masking caught by the margin
loss, linearity R² oracles, off-support softmax oracles, SEM, and that every plot is written."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from advlab.analysis.deepfool import deepfool_summary
from advlab.analysis.linearity import linearity, linearity_r2
from advlab.analysis.off_support import match_shape, noise_inputs, softmax_statistics
from advlab.analysis.robustness import accuracy, robustness_curves
from advlab.analysis.summary import mean_sem
from advlab.attacks import FGSM, PGD, DeepFool
from advlab.errors import ConfigError
from advlab.report import analysis_plots


pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS = {"linf": [0.0, 0.05, 0.1, 0.2], "l2": [0.0, 0.5, 1.0, 2.0]}


def _attacks():
    return {"fgsm_linf": FGSM(0.1), "pgd_linf": PGD(0.1, norm="linf", steps=10, rel_step_size=0.25),
            "fgsm_l2": FGSM(1.0, norm="l2"), "pgd_l2": PGD(1.0, norm="l2", steps=10, rel_step_size=0.25)}


def test_curves_start_at_clean_accuracy_never_rise_and_pgd_is_below_fgsm(digits_mlp):
    model, x, y = digits_mlp
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    curves = robustness_curves(model, _attacks(), EPS, x, y, diagnostics=True, progress=False)  # exact alone / by_loss
    for name, c in curves.items():
        acc = accuracy(c["robust"])
        assert acc[0] == pytest.approx(clean)  # ε = 0 is clean accuracy
        assert all(b <= a for a, b in zip(acc, acc[1:]))  # never rises with ε
        assert acc[-1] < clean - 0.3  # and the attacks do hurt
        for loss_mask in c["by_loss"].values():  # the combined curve is the worst case of both losses
            assert bool((c["robust"] <= loss_mask).all())
    for norm in ("linf", "l2"):
        pgd, fgsm = curves[f"pgd_{norm}"], curves[f"fgsm_{norm}"]
        assert bool((pgd["robust"] <= fgsm["robust"]).all())  # per sample, by construction (cumulative)
        # and PGD alone is the stronger attack on this model too (no help from FGSM needed)
        assert all(p <= f + 1e-9 for p, f in zip(accuracy(pgd["alone"]), accuracy(fgsm["alone"])))


def test_margin_loss_sees_through_a_saturated_softmax(digits_mlp):
    """Logits scaled by 1e4: the softmax is one-hot in float32, cross-entropy gradients vanish and CE
    attacks find nothing (gradient masking). The decision is unchanged, so the robustness is too: the
    margin loss shows it, and the combined curve follows it."""
    model, x, y = digits_mlp
    saturated = nn.Sequential(model, _Scale(1e4)).eval()
    curves = robustness_curves(saturated, {"fgsm_linf": FGSM(0.1)}, EPS, x, y, diagnostics=True, progress=False)["fgsm_linf"]
    ce, margin, combined = accuracy(curves["by_loss"]["ce"]), accuracy(curves["by_loss"]["margin"]), accuracy(curves["robust"])
    assert ce[-1] > margin[-1] + 0.3  # CE is fooled by the masking
    reference = accuracy(robustness_curves(model, {"fgsm_linf": FGSM(0.1)}, EPS, x, y, losses=["ce"], progress=False)["fgsm_linf"]["robust"])
    assert combined == pytest.approx(margin)
    assert abs(combined[-1] - reference[-1]) < 0.1  # the same decision function, about the same robustness
    with pytest.raises(ConfigError, match="robustness.losses"):
        robustness_curves(model, {"f": FGSM(0.1)}, EPS, x, y, losses=[], progress=False)


class _Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, z):
        return z * self.s


def test_deepfool_summary_rho(digits_mlp):
    model, x, y = digits_mlp
    with torch.no_grad():
        pred = model(x).argmax(1)
    s = deepfool_summary(model, x, pred, DeepFool(norm="l2"), progress=False)
    assert s["success_rate"] >= 0.99
    ok = s["success"]
    assert s["rho"] == pytest.approx(float((s["r"][ok] / x.flatten(1).norm(dim=1)[ok]).mean()), rel=1e-5)
    assert 0 < s["rho"] < 0.5 and s["r_median"] > 0


def test_linearity_r2_oracles(digits_mlp):
    eps = torch.linspace(-1, 1, 21)
    straight = 3.0 + 2.0 * eps.view(1, -1, 1) * torch.tensor([1.0, -0.5, 0.0]).view(1, 1, 3)
    assert float(linearity_r2(eps, straight)) == pytest.approx(1.0, abs=1e-6)
    parabola = (eps ** 2).view(1, -1, 1).repeat(1, 1, 2)  # symmetric: no linear part at all
    assert float(linearity_r2(eps, parabola)) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(float(linearity_r2(eps, torch.ones(1, 21, 3))))
    # an affine model is exactly linear along any direction; the trained ReLU MLP nearly so
    affine = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    model, x, y = digits_mlp
    res = linearity(affine, x[:50], y[:50], eps_max=0.5, points=21)
    assert float(res["r2"].min()) == pytest.approx(1.0, abs=1e-5) and res["logits"].shape == (50, 21, 10)
    res = linearity(model, x[:50], y[:50], eps_max=0.5, points=21)
    assert 0.8 < float(res["r2"].nanmean()) < 1.0
    # along the FGSM direction the true class's logit falls
    z = res["logits"][torch.arange(50), :, y[:50]]
    assert float((z[:, -1] < z[:, 10]).float().mean()) > 0.9
    saturated = nn.Sequential(model, _Scale(1e4)).eval()
    res = linearity(saturated, x[:50], y[:50], eps_max=0.5, points=21)
    assert float(res["zero_direction"].float().mean()) > 0.5  # vanished CE gradients are reported


def test_off_support_statistics_and_inputs():
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    nn.init.zeros_(flat[1].weight), nn.init.zeros_(flat[1].bias)
    gen = torch.Generator().manual_seed(0)
    like = torch.rand(100, 1, 8, 8, generator=gen) * 0.5
    u = noise_inputs("uniform", 500, like, (0.0, 1.0), gen)
    g = noise_inputs("gaussian", 500, like, (0.0, 1.0), gen)
    assert u.shape == g.shape == (500, 1, 8, 8) and u.min() >= 0 and u.max() <= 1 and g.min() >= 0
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float(g.mean()) - float(like.mean())) < 0.05
    s = softmax_statistics(flat, u)
    assert s["max_softmax"] == pytest.approx(0.1) and s["entropy_ratio"] == pytest.approx(1.0)  # a flat softmax
    assert s["entropy"] == pytest.approx(math.log(10)) and s["mean_softmax"] == pytest.approx([0.1] * 10)
    nn.init.normal_(flat[1].weight, std=5.0)
    s = softmax_statistics(flat, u)
    assert s["max_softmax"] > 0.5 and s["entropy_ratio"] < 0.5
    with pytest.raises(ConfigError, match="off_support.kinds"):
        noise_inputs("laplace", 5, like, (0.0, 1.0), gen)


def test_match_shape_brings_another_dataset_to_the_input_shape():
    rgb = torch.rand(4, 3, 32, 32)
    grey = match_shape(rgb, (1, 8, 8))
    assert grey.shape == (4, 1, 8, 8)
    assert torch.allclose(grey[:, 0, 0, 0], rgb.mean(1)[:, :4, :4].mean((1, 2)), atol=1e-6)  # area average of the grey image
    assert match_shape(torch.rand(4, 1, 28, 28), (3, 32, 32)).shape == (4, 3, 32, 32)
    assert match_shape(torch.rand(4, 64), (1, 8, 8)).shape == (4, 1, 8, 8)
    with pytest.raises(ConfigError, match="off_support.dataset"):
        match_shape(torch.rand(4, 10), (1, 8, 8))


def test_mean_sem():
    mean, sem = mean_sem([[1.0, 4.0], [2.0, 4.0], [3.0, 4.0]])
    assert mean.tolist() == [2.0, 4.0]
    assert sem.tolist() == pytest.approx([1 / math.sqrt(3), 0.0])
    mean, sem = mean_sem([0.7])
    assert float(mean) == 0.7 and float(sem) == 0.0
    mean, sem = mean_sem([1.0, float("nan"), 3.0])
    assert float(mean) == 2.0 and float(sem) == pytest.approx(1.0)


def test_every_plot_is_written(tmp_path):
    curves = {m: {a: {"norm": "linf" if "linf" in a else "l2", "eps": [0, 0.1, 0.2], "mean": [1.0, 0.6 - i / 10, 0.2],
                      "sem": [0.0, 0.05, 0.02], "n": 3} for a in ("fgsm_linf", "pgd_linf", "pgd_l2")} for i, m in enumerate(("standard", "adversarial"))}
    paths = [
        analysis_plots.robustness_curves(curves, tmp_path / "r.png", title="t", points="all"),
        analysis_plots.deepfool_norms({"l2": {"standard": (np.random.rand(50), 0.1, 0.01), "adv": (np.random.rand(50) + 1, 0.2, 0.02)}},
                                      tmp_path / "d.png", title="t"),
        analysis_plots.off_support_bars({"standard": {"test": {"max_softmax": (0.9, 0.01), "entropy_ratio": (0.1, 0.01)},
                                                      "uniform": {"max_softmax": (0.8, 0.02), "entropy_ratio": (0.3, 0.01)}}},
                                        tmp_path / "o.png", title="t"),
        analysis_plots.logit_lines(torch.linspace(-1, 1, 5), torch.randn(3, 5, 10), torch.tensor([0, 1, 2]), torch.tensor([0.9, 0.8, 0.7]),
                                   tmp_path / "l.png", title="t", class_names=[str(i) for i in range(10)]),
    ]
    for p in paths:
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert not list(tmp_path.glob(".*tmp"))  # written through a temp file and renamed
