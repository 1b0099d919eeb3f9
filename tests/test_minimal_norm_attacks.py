"""Carlini–Wagner L2 and FMN: on affine models, where the minimal L2 / L∞ / L1 distance to the decision
boundary is known in closed form, they find it (within a small tolerance) and are no larger than DeepFool's
(exact there); on a trained network they find smaller perturbations than DeepFool; advlab-eval's
minimal-perturbation analysis runs any of them."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.analysis.deepfool import DeepFoolAnalysis, deepfool_summary
from advlab.attacks import FMN, CarliniWagnerL2, DeepFool
from advlab.errors import ConfigError
from conftest import attack_from_conf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DUAL = {"l2": 2, "linf": 1, "l1": float("inf")}


def _affine(d: int, c: int, seed: int, scale: float = 0.1) -> nn.Linear:
    """Small weights: the distances to the boundary are O(1), far above the optimisers' step sizes."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Linear(d, c)
    with torch.no_grad():
        model.weight.mul_(scale)
        model.bias.mul_(scale)
    return model


def _exact(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """The class region of an affine model is an intersection of half-spaces, so the distance to its outside
    is min over k of |f_k − f_y| / ‖w_k − w_y‖_q, q the dual norm (L2: 2, L∞: 1, L1: ∞)."""
    with torch.no_grad():
        out = model(x)
        gap = (out - out.gather(1, y[:, None])).abs()
        dw = torch.linalg.vector_norm(model.weight[None] - model.weight[y][:, None], ord=DUAL[norm], dim=2)
        return torch.where(dw > 0, gap / dw, torch.full_like(gap, float("inf"))).min(dim=1).values


def _case(classes: int):
    model = _affine(32, classes, seed=classes)
    x = torch.rand(40, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.fixture(scope="module")
def affine_case():
    return _case(5)


def _check(distance, exact, deepfool, classes: int, tol: float):
    """Never closer than the boundary; on two classes (one boundary) within ``tol`` of it everywhere, and no
    larger than DeepFool's (exact here, tests/test_deepfool.py) to that precision. With several classes the
    region's outside is a union of half-spaces: a margin-loss descent can settle on the nearest point of a
    face that is not the nearest one (a local optimum DeepFool, which ranks every face, avoids), so there
    the bound holds for the median and for most points."""
    ratio = distance / exact
    assert float(ratio.min()) > 1 - 1e-4
    if classes == 2:
        assert float(ratio.max()) < 1 + tol
        if deepfool is not None:
            assert float((distance / deepfool).max()) < 1 + tol
    else:
        assert float(ratio.median()) < 1 + tol / 4 and float((ratio < 1 + tol).float().mean()) >= 0.9
        if deepfool is not None:
            assert float((distance / deepfool).median()) < 1 + tol / 4


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_fmn_finds_the_closed_form_distance(norm, classes):
    model, x, y = _case(classes)
    res = FMN(norm=norm, steps=100, bounds=None).run(model, x, y)
    assert bool(res.success.all())
    deepfool = None
    if norm != "l1":  # DeepFool has no L1
        df = DeepFool(norm=norm, bounds=None).run(model, x, y)
        deepfool = df.l2 if norm == "l2" else df.linf
    _check(res.distance, _exact(model, x, y, norm), deepfool, classes, tol=0.1 if norm == "l1" else 0.01)


@pytest.mark.parametrize("classes", [2, 5])
def test_cw_finds_the_closed_form_distance(classes):
    model, x, y = _case(classes)
    res = CarliniWagnerL2(steps=300, binary_search_steps=6, initial_const=1.0, bounds=None).run(model, x, y)
    assert bool(res.success.all())
    deepfool = DeepFool(norm="l2", bounds=None).run(model, x, y).l2
    _check(res.distance, _exact(model, x, y, "l2"), deepfool, classes, tol=0.02)


def test_confidence_moves_cw_past_the_boundary_by_kappa(affine_case):
    """κ > 0: the logit margin at the returned point is at least κ, so its distance grows by about κ/‖w_k − w_y‖."""
    model, x, y = affine_case
    plain = CarliniWagnerL2(steps=300, binary_search_steps=6, initial_const=1.0, bounds=None).run(model, x[:10], y[:10])
    kappa = CarliniWagnerL2(confidence=0.2, steps=300, binary_search_steps=6, initial_const=1.0, bounds=None)
    res = kappa.run(model, x[:10], y[:10])
    with torch.no_grad():
        out = model(res.x_adv)
        own = out.gather(1, y[:10, None]).squeeze(1)
        other = out.scatter(1, y[:10, None], float("-inf")).amax(dim=1)
    assert bool((other - own >= 0.2 - 1e-6).all())
    assert bool((res.distance > plain.distance).all())


def test_on_a_trained_network_they_match_deepfool(digits_mlp):
    """A small ReLU network is nearly piecewise linear, so DeepFool is close to optimal there: CW and FMN
    break every point and are no larger than DeepFool's on most (measured on these 30: per-sample ratio to
    DeepFool's median 1.000, ≤ 1.01 on 83 % for CW, 80 % (L2) and 87 % (L∞) for FMN)."""
    model, x, y = digits_mlp
    x = x[:30]
    with torch.no_grad():
        pred = model(x).argmax(1)
    for norm, attack in (("l2", CarliniWagnerL2(steps=500, binary_search_steps=6, initial_const=1.0, lr=0.02)),
                         ("l2", FMN(norm="l2", steps=100, alpha_init=0.1)), ("linf", FMN(norm="linf", steps=100))):
        res = attack.run(model, x, pred)
        deepfool = DeepFool(norm=norm).run(model, x, pred)
        ratio = res.distance / (deepfool.l2 if norm == "l2" else deepfool.linf)
        assert bool(res.success.all()) and bool(deepfool.success.all())
        assert float((ratio <= 1.01).float().mean()) >= 0.75 and float(ratio.median()) <= 1.01, (type(attack).__name__, ratio)
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
        assert all(p.grad is None for p in model.parameters())  # input gradients only: the shared model is left as it was


def test_eps_turns_them_into_bounded_attacks_and_targets_are_reached(affine_case):
    model, x, y = affine_case
    free = FMN(norm="l2", bounds=None).run(model, x, y)
    budget = float(free.distance.median())
    bounded = FMN(norm="l2", bounds=None, eps=budget).run(model, x, y)
    small = free.distance <= budget
    assert torch.equal(bounded.success, small) and torch.equal(bounded.x_adv[~small], x[~small])
    target = (y + 1) % 5
    for attack in (FMN(norm="linf", bounds=None, targeted=True),
                   CarliniWagnerL2(steps=200, binary_search_steps=5, initial_const=1.0, bounds=None, targeted=True)):
        with torch.no_grad():
            hit = model(attack(model, x, target)).argmax(1) == target
        assert float(hit.float().mean()) == 1.0, type(attack).__name__


def test_the_minimal_perturbation_analysis_runs_any_of_them(digits_mlp):
    model, x, y = digits_mlp
    x = x[:20]
    with torch.no_grad():
        pred = model(x).argmax(1)
    analysis = DeepFoolAnalysis(norms=["linf", "l1"], steps=50, overshoot=0.02, bounds=(0.0, 1.0), attack="fmn",
                                fmn={"steps": 50})
    assert all(type(a) is FMN and a.steps == 50 and a.eps is None for a in analysis.attacks.values())
    s = deepfool_summary(model, x, pred, analysis.attacks["l1"], progress=False)
    direct = analysis.attacks["l1"].run(model, x, pred)
    assert torch.allclose(s["r"], direct.distance) and s["success_rate"] == 1.0
    assert s["rho"] == pytest.approx(float((direct.distance / x.flatten(1).abs().sum(1)).mean()), rel=1e-5)
    cw = DeepFoolAnalysis(norms=["l2"], steps=50, overshoot=0.02, attack="cw", cw={"steps": 100, "confidence": 0.5})
    assert type(cw.attacks["l2"]) is CarliniWagnerL2 and cw.attacks["l2"].confidence == 0.5
    for kwargs, key, allowed in (({"attack": "jsma"}, "attack", "allowed: deepfool, cw, fmn"),
                                 ({"attack": "cw"}, "norms", "allowed: l2"),
                                 ({"attack": "fmn", "fmn": {"stepz": 3}}, "fmn.stepz", "allowed: steps, alpha_init"),
                                 ({"attack": "cw", "cw": {"confidence": -1}}, "cw.confidence", ">= 0")):
        with pytest.raises(ConfigError) as err:
            DeepFoolAnalysis(norms=kwargs.pop("norms", ["l2", "linf"]), steps=50, overshoot=0.02, **kwargs)
        # the analysis' constructor names its own keys; the pre-flight puts them under its node (deepfool.fmn.stepz)
        assert err.value.key == key and allowed in str(err.value), str(err.value)


def test_settings_are_checked_and_yaml_builds():
    for build, key in ((lambda: CarliniWagnerL2(confidence=-0.5), "confidence"),
                       (lambda: CarliniWagnerL2(steps=-1), "steps"),
                       (lambda: CarliniWagnerL2(binary_search_steps=0), "binary_search_steps"),
                       (lambda: CarliniWagnerL2(lr=0), "lr"),
                       (lambda: CarliniWagnerL2(initial_const=-1), "initial_const"),
                       (lambda: CarliniWagnerL2(norm="linf"), "norm"),
                       (lambda: FMN(norm="l0"), "norm"),
                       (lambda: FMN(steps=0), "steps"),
                       (lambda: FMN(gamma_init=0.01, gamma_final=0.1), "gamma_init"),
                       (lambda: FMN(alpha_init=-1.0), "alpha_init"),
                       (lambda: FMN(eps=-0.1), "eps")):
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.key == key and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"allowed: linf, l2, l1$"):
        FMN(norm="l0")
    cw, fmn = attack_from_conf("cw", eps=2.0), attack_from_conf("fmn", eps=0.1)
    assert type(cw) is CarliniWagnerL2 and (cw.eps, cw.confidence, cw.binary_search_steps, cw.steps, cw.lr) == (2.0, 0.0, 6, 200, 0.05)
    assert type(fmn) is FMN and (fmn.norm, fmn.eps, fmn.steps, fmn.alpha_final, fmn.gamma_final) == ("linf", 0.1, 100, 0.01, 0.001)
