"""DeepFool: exact on affine models (closed-form distances), and it fools a trained model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import PGD, DeepFool
from advlab.errors import ConfigError



pytestmark = pytest.mark.usefixtures("one_torch_thread")

def _affine(d: int, c: int, seed: int) -> nn.Linear:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Linear(d, c)


def _exact_distance(model: nn.Linear, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor:
    """Distance from x to the outside of its class region {f_y >= f_k for all k}: an intersection of
    half-spaces, so the minimum over k of |f_k − f_y| / ‖w_k − w_y‖_q (q = 2 for L2, 1 for L∞)."""
    with torch.no_grad():
        w, out = model.weight, model(x)
        gap = (out - out.gather(1, y[:, None])).abs()
        dw = torch.linalg.vector_norm(w[None] - w[y][:, None], ord=2 if norm == "l2" else 1, dim=2)
        return torch.where(dw > 0, gap / dw, torch.full_like(gap, float("inf"))).min(dim=1).values


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("classes", [2, 10])
def test_affine_model_gives_the_exact_distance(norm, classes):
    model = _affine(64, classes, seed=classes)
    x = torch.rand(300, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    res = DeepFool(norm=norm, bounds=None).run(model, x, y)
    exact = _exact_distance(model, x, y, norm)
    got = res.l2 if norm == "l2" else res.linf
    assert bool(res.success.all())
    assert float(((got - exact) / exact).abs().max()) < 0.01  # acceptance: within 1 %
    assert float(((got - exact) / exact).abs().median()) < 1e-3
    if classes == 2:  # the textbook formula |w·x + b| / ‖w‖ for the two-class case
        w = model.weight[1] - model.weight[0]
        f = (x @ w + model.bias[1] - model.bias[0]).abs()
        closed = f / (w.norm(2) if norm == "l2" else w.norm(1))
        assert torch.allclose(got, closed.detach(), rtol=0.01)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_without_refinement_the_overshoot_shows(norm):
    """The raw DeepFool output overshoots the boundary by (1 + overshoot); the bisection removes it."""
    model = _affine(32, 2, seed=3)
    x = torch.rand(100, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    exact = _exact_distance(model, x, y, norm)
    raw = DeepFool(norm=norm, bounds=None, refine_steps=0, overshoot=0.02).run(model, x, y)
    got = raw.l2 if norm == "l2" else raw.linf
    ratio = got / exact
    far = exact > 0.05  # the 1e-4 slack per step is negligible there
    assert float(ratio[far].min()) >= 1.02 - 1e-4 and float(ratio[far].max()) < 1.03
    assert bool(raw.success.all())


def test_binary_score_models_and_bounds():
    """A model with one score per sample (positive = class 1), inputs clipped to [0, 1]."""
    lin = _affine(16, 1, seed=4)
    model = nn.Sequential(lin, nn.Flatten(0))
    x = torch.rand(64, 16, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.25
    with torch.no_grad():
        y = (model(x) > 0).long()
    res = DeepFool(norm="l2", bounds=(0.0, 1.0)).run(model, x, y)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    exact = (lin(x).squeeze(1).abs() / lin.weight.norm()).detach()
    inside = res.success & (res.l2 < 0.2)  # boundary points inside the box: clipping does not bite
    assert inside.sum() > 5
    assert torch.allclose(res.l2[inside], exact[inside], rtol=0.01)


def test_misclassified_points_stay_and_eps_bounds_the_attack():
    model = _affine(20, 5, seed=6)
    x = torch.rand(50, 20, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = (pred + 1) % 5
    res = DeepFool(norm="l2", bounds=None).run(model, x, wrong)  # every "label" is already wrong
    assert torch.equal(res.x_adv, x) and bool(res.success.all())
    free = DeepFool(norm="linf", bounds=None).run(model, x, pred)
    budget = float(free.linf.median())
    bounded = DeepFool(norm="linf", bounds=None, eps=budget).run(model, x, pred)
    small = free.linf <= budget
    assert torch.equal(bounded.success, small)  # the larger perturbations are dropped, not shrunk
    assert torch.equal(bounded.x_adv[~small], x[~small])


def test_arguments_are_checked():
    with pytest.raises(ConfigError, match="^norm: "):
        DeepFool(norm="l1")
    with pytest.raises(ConfigError, match="^targeted: "):
        DeepFool(targeted=True)
    with pytest.raises(ConfigError, match="^steps: "):
        DeepFool(steps=0)
    with pytest.raises(ConfigError, match="^overshoot: "):
        DeepFool(overshoot=-0.1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fools_a_trained_model_with_small_perturbations(digits_mlp, norm):
    model, x, y = digits_mlp
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert float((pred == y).float().mean()) > 0.9
    model.train()  # the attack runs in eval mode and restores the mode; no parameter gradients
    res = DeepFool(norm=norm, steps=50).run(model, x, pred)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert float(res.success.float().mean()) >= 0.99  # acceptance: ≥ 99 % of the points
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    size = res.l2 if norm == "l2" else res.linf
    with torch.no_grad():
        assert bool((model(res.x_adv).argmax(1) != pred)[res.success].all())
    # minimal means small: PGD with a budget at DeepFool's median size fools at most about as many
    # points as DeepFool does at that size (DeepFool is an upper bound per point, PGD a search)
    budget = float(size[res.success].median())
    pgd = PGD(eps=budget, norm=norm, steps=50, rel_step_size=0.05, random_start=False)
    pgd_fooled = float((model(pgd(model, x, pred)).argmax(1) != pred).float().mean())
    deepfool_fooled = float(((size <= budget) & res.success).float().mean())
    assert 0.4 <= deepfool_fooled <= 0.6
    assert pgd_fooled >= deepfool_fooled - 0.1


def test_rho_in_the_authors_units_on_an_affine_model():
    """Paknezhad et al.'s ρ (getRho.py): DeepFool without bisection or clipping, in Normalize(mean, std)
    units, over all points. On a two-class affine model f = w·x + b one step lands on the hyperplane:
    ‖r‖ = (1 + overshoot)·(|f(x)|/‖w‖ + 1e-4) in the units it runs in. In normalised units the model is
    z ↦ f(mean + std·z), so the distance is |f(x)|/(std·‖w‖), and ‖x‖ becomes ‖(x − mean)/std‖."""
    from advlab.analysis.deepfool import DeepFoolAnalysis, deepfool_summary

    model = _affine(64, 2, seed=3)
    x = torch.rand(50, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(1)
        w = model.weight[1] - model.weight[0]
        dist = (x @ w + model.bias[1] - model.bias[0]).abs() / w.norm()
    mean, std = 0.1307, 0.3081
    analysis = DeepFoolAnalysis(norms=["l2"], steps=23, overshoot=0.02, refine_steps=0, bounds=(0.0, 1.0),
                                units="normalized", mean=mean, std=std, over="all", clip=False)
    attack = analysis.attacks["l2"]
    assert attack.bounds is None and attack.refine_steps == 0 and attack.steps == 23
    norm = deepfool_summary(model, x, y, attack, progress=False, normalize=analysis.normalize, over="all")
    pixel = deepfool_summary(model, x, y, attack, progress=False, over="all")
    r_pix = 1.02 * (dist + 1e-4)
    r_norm = 1.02 * (dist / std + 1e-4)
    assert torch.allclose(pixel["r"], r_pix, rtol=1e-4)
    assert torch.allclose(norm["r"], r_norm, rtol=1e-4)
    rho_pix = float((r_pix / x.norm(dim=1)).mean())
    rho_norm = float((r_norm / ((x - mean) / std).norm(dim=1)).mean())
    assert pixel["rho"] == pytest.approx(rho_pix, rel=1e-4)
    assert norm["rho"] == pytest.approx(rho_norm, rel=1e-4)
    assert norm["rho"] != pytest.approx(pixel["rho"], rel=1e-2)  # the units matter: ‖x‖ is not just rescaled


def test_rho_over_all_points_counts_failures():
    """``over: all`` averages over every point (a failed one counts ‖r‖ = 0 here), ``successful`` over
    the fooled ones only; the box is converted to normalised units when clipping."""
    from advlab.analysis.deepfool import DeepFoolAnalysis, deepfool_summary

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3), nn.Tanh())
    x = torch.rand(60, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = DeepFool(norm="l2", bounds=None, steps=1, refine_steps=0, overshoot=0.0)
    some = deepfool_summary(model, x, y, attack, progress=False)
    every = deepfool_summary(model, x, y, attack, progress=False, over="all")
    assert 0 < int(some["success"].sum()) < len(x)  # one step: some points are not fooled yet
    ratio = some["r"] / some["x_norm"]
    assert some["rho"] == pytest.approx(float(ratio[some["success"]].mean()), rel=1e-6)
    assert every["rho"] == pytest.approx(float(ratio.mean()), rel=1e-6)
    boxed = DeepFoolAnalysis(norms=["l2"], steps=5, overshoot=0.02, bounds=(0.0, 1.0), units="normalized", mean=0.5, std=0.25)
    assert boxed.attacks["l2"].bounds == pytest.approx((-2.0, 2.0))
    with pytest.raises(ConfigError, match="^units: normalized needs mean and std"):
        DeepFoolAnalysis(norms=["l2"], steps=5, overshoot=0.02, units="normalized")
    with pytest.raises(ConfigError, match="^over: unknown value"):
        DeepFoolAnalysis(norms=["l2"], steps=5, overshoot=0.02, over="some")
    with pytest.raises(ConfigError, match="^std: must be"):
        DeepFoolAnalysis(norms=["l2"], steps=5, overshoot=0.02, units="normalized", mean=0.1, std=0.0)


def test_the_preflight_names_deepfool_settings_under_their_node():
    """The analysis raises bare parameter names; the eval pre-flight roots them at deepfool."""
    from advlab.preflight.jobs import precheck

    with pytest.raises(ConfigError, match=r"^deepfool\.over: unknown value 'some'; allowed: successful, all"):
        precheck(["experiment=paknezhad_mnist", "deepfool.over=some"], "eval")
