"""AutoAttack and its members (APGD, APGD-T, FAB-T, Square): the contract of RECIPES.md ("Attack
correctness"), exact oracles on linear models, gradient masking, and cross-checks against
torchattacks (a test-only reference) on the same points.

Small CPU models and budgets: the digits MLP / CNN of test_attacks, a few steps and queries.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advlab.attacks import APGD, APGDT, FABT, PGD, AutoAttack, Square, robust_accuracy
from advlab.attacks.apgd import checkpoints
from advlab.attacks.base import dlr_targeted_loss, per_sample_loss
from advlab.attacks.fab import project_hyperplane
from advlab.attacks.square import window_fraction
from conftest import attack_from_conf
from advlab.errors import ConfigError
from test_attacks import (  # noqa: F401  (module-scoped fixtures shared with test_attacks)
    _linear_problem, _linf_oracle, _norms, _probe_model, _signed_margin, batch, batch4d, cnn, digits, mlp,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW_ATTACKS = {
    "apgd_ce_linf": lambda: APGD(0.1, steps=10),
    "apgd_dlr_l2": lambda: APGD(0.8, norm="l2", steps=10, loss="dlr"),
    "apgd_l2_targeted": lambda: APGD(0.8, norm="l2", steps=10, targeted=True),
    "apgd_t_linf": lambda: APGDT(0.1, steps=5, n_target_classes=3),
    "apgd_t_l2": lambda: APGDT(0.8, norm="l2", steps=5, n_target_classes=3),
    "fab_t_linf": lambda: FABT(0.1, steps=5, n_target_classes=3),
    "fab_t_l2": lambda: FABT(0.8, norm="l2", steps=5, n_target_classes=3),
    "square_linf": lambda: Square(0.1, n_queries=60),
    "square_l2": lambda: Square(0.8, norm="l2", n_queries=60),
    "autoattack_linf": lambda: AutoAttack(0.1, apgd_steps=5, fab_steps=5, square_queries=30, n_target_classes=3),
    "autoattack_l2": lambda: AutoAttack(0.8, norm="l2", apgd_steps=5, fab_steps=5, square_queries=30, n_target_classes=3),
    # the L1 threat model (Croce & Hein 2021): APGD's sparse step, its 3ε/2ε/ε schedule, and the L1 ensemble
    "apgd_ce_l1": lambda: APGD(3.0, norm="l1", steps=10),
    "apgd_ce_l1_large_eps": lambda: APGD(3.0, norm="l1", steps=10, large_eps=True),
    "apgd_t_l1": lambda: APGDT(3.0, norm="l1", steps=10, n_target_classes=3),
    "fab_t_l1": lambda: FABT(3.0, norm="l1", steps=10, n_target_classes=3),
    "square_l1": lambda: Square(3.0, norm="l1", n_queries=60),
    "autoattack_l1": lambda: AutoAttack(3.0, norm="l1", apgd_steps=10, fab_steps=5, square_queries=30, n_target_classes=3),
}
RANDOM = ("apgd_ce_linf", "apgd_dlr_l2", "apgd_t_linf", "square_linf", "square_l2", "autoattack_linf")


def _labels(name, y):
    return (y + 1) % 10 if "targeted" in name else y


def _acc(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# --------------------------------------------------------------------------------------------
# contract: ε-ball, box, ε = 0, modes, parameters, gradients, RNG, grad contexts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NEW_ATTACKS))
def test_eps_ball_box_and_eps_zero(name, cnn, batch4d):
    x, y = batch4d
    y = _labels(name, y)
    attack = NEW_ATTACKS[name]()
    x_adv = attack(cnn, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    linf, l2 = _norms(x_adv - x)
    l1 = (x_adv - x).flatten(1).abs().sum(1)
    bound = {"linf": linf, "l2": l2, "l1": l1}[attack.norm]
    # L1: the projection lands on the sphere; a float32 sum over the pixels rounds by up to ~D ulps
    assert float(bound.max()) <= attack.eps * (1 + (1e-5 if attack.norm == "l1" else 0)) + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(bound.max()) > 0.3 * attack.eps  # it moved
    if not attack.targeted:
        assert robust_accuracy(cnn, NEW_ATTACKS[name](), (x, y)) < _acc(cnn, x, y)  # and it breaks some points
    attack.eps = 0.0
    x0 = attack(cnn, x, y)
    assert torch.equal(x0, x) and x0.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("name", list(NEW_ATTACKS))
def test_modes_parameters_and_grads_untouched(name, batch):
    x, y = batch
    model = _probe_model().train()
    model[1].eval()  # a mixed state must survive too
    before = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    NEW_ATTACKS[name]()(model, x, _labels(name, y))
    assert [m.training for m in model.modules()] == before
    assert model[4].seen and not any(model[4].seen)  # every forward in eval mode
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", RANDOM)
def test_rng_global_untouched_seeded_and_fresh_draws(name, mlp, batch):
    x, y = batch
    state = torch.get_rng_state()
    a1, a2 = NEW_ATTACKS[name](), NEW_ATTACKS[name]()
    first = a1(mlp, x, y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, a2(mlp, x, y))  # same seed, same result
    other = NEW_ATTACKS[name]()
    other.seed = 123
    assert not torch.equal(first, other(mlp, x, y))  # the seed matters
    a1.reset_rng()
    assert torch.equal(first, a1(mlp, x, y))


@pytest.mark.parametrize("name", ["apgd_ce_linf", "fab_t_l2", "square_linf", "autoattack_linf"])
def test_inference_mode_and_no_grad(name, mlp, batch):
    x, y = batch
    expected = NEW_ATTACKS[name]()(mlp, x, y)
    with torch.no_grad():
        assert torch.equal(NEW_ATTACKS[name]()(mlp, x, y), expected)
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()
        got = NEW_ATTACKS[name]()(mlp, xi, yi)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("make", [
    lambda e: APGD(e, steps=10),
    lambda e: APGDT(e, steps=5, n_target_classes=3),
    lambda e: FABT(e, steps=10, n_target_classes=3),
    lambda e: AutoAttack(e, apgd_steps=10, fab_steps=5, square_queries=30, n_target_classes=3),
], ids=["apgd", "apgd_t", "fab_t", "autoattack"])
def test_robust_accuracy_monotone_in_eps(make, mlp, batch):
    """Independent runs at each ε of a well-separated grid (empirical for the local searches; by
    construction for FAB, whose minimal distances are compared with ε): non-increasing, clean
    accuracy at ε = 0, near 0 at a large ε."""
    x, y = batch
    accs = [robust_accuracy(mlp, make(eps), (x, y)) for eps in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert accs[0] == _acc(mlp, x, y)
    assert all(b <= a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] <= 0.05 < accs[1]


# --------------------------------------------------------------------------------------------
# the algorithm's pieces
# --------------------------------------------------------------------------------------------
def test_checkpoints_and_square_schedule():
    # p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06): 0, .22, .41, .57, .70, .80, .87, .93, .99
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert window_fraction(0.8, 5, 10000) == 0.8 and window_fraction(0.8, 300, 10000) == 0.1
    assert window_fraction(0.8, 150, 5000) == 0.2  # AutoAttack's schedule: not rescaled to the budget
    assert window_fraction(0.8, 150, 5000, rescale=True) == 0.1  # resc_schedule: rescaled to it
    assert window_fraction(0.8, 9999, 10000) == pytest.approx(0.8 / 512)


def test_dlr_losses_scale_and_shift_invariant():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    t = (y + 3) % 10
    for k, c in ((7.0, 0.0), (1e4, -3.0)):
        torch.testing.assert_close(per_sample_loss("dlr", k * z + c, y), per_sample_loss("dlr", z, y))
        torch.testing.assert_close(dlr_targeted_loss(k * z + c, y, t), dlr_targeted_loss(z, y, t))
    s = z.sort(dim=1, descending=True).values
    own, other = z.gather(1, y[:, None])[:, 0], z.scatter(1, y[:, None], float("-inf")).amax(1)
    torch.testing.assert_close(per_sample_loss("dlr", z, y), (other - own) / (s[:, 0] - s[:, 2]))
    zt = z.gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(dlr_targeted_loss(z, y, t), (zt - own) / (s[:, 0] - (s[:, 2] + s[:, 3]) / 2))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_projection_is_minimal_and_feasible(norm):
    """Against brute force: the projection reaches w·d = c inside the box, and random feasible
    points of the hyperplane are never closer."""
    g = torch.Generator().manual_seed(1)
    p = torch.rand(8, 5, generator=g, dtype=torch.float64)
    w = torch.randn(8, 5, generator=g, dtype=torch.float64)
    c = 0.3 * torch.randn(8, generator=g, dtype=torch.float64)
    d = project_hyperplane(p, w, c, norm, (0.0, 1.0))
    torch.testing.assert_close((w * d).sum(1), c, atol=1e-9, rtol=0)
    assert float((p + d).min()) >= -1e-12 and float((p + d).max()) <= 1 + 1e-12
    q = float("inf") if norm == "linf" else 2
    dist = d.norm(p=q, dim=1)
    cand = torch.rand(20000, 8, 5, generator=g, dtype=torch.float64) - p  # points in the box
    gap = c - (w * cand).sum(2)
    # move each candidate onto the hyperplane along one coordinate; keep those still in the box
    j = w.abs().argmax(1)
    fix = cand.clone()
    fix[:, torch.arange(8), j] += gap / w[torch.arange(8), j]
    inside = ((p + fix) >= 0).all(2) & ((p + fix) <= 1).all(2)
    other = fix.norm(p=q, dim=2).masked_fill(~inside, float("inf")).amin(0)
    assert bool((dist <= other + 1e-9).all())
    free = project_hyperplane(p, w, c, norm, None)  # no box: closed form |c|/‖w‖_dual
    dual = w.abs().sum(1) if norm == "linf" else w.norm(dim=1)
    torch.testing.assert_close(free.norm(p=q, dim=1), c.abs() / dual, atol=1e-12, rtol=1e-9)


# --------------------------------------------------------------------------------------------
# exact oracles on linear two-class models
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.01, 0.05, 0.3])
@pytest.mark.parametrize("make", [
    lambda e: APGD(e, steps=10),
    lambda e: APGD(e, steps=10, loss="dlr", random_start=False),
    lambda e: APGD(e, steps=10, loss="margin", targeted=True),
    lambda e: APGDT(e, steps=10),
], ids=["apgd_ce", "apgd_dlr", "apgd_targeted", "apgd_t"])
def test_apgd_linf_matches_closed_form_on_linear_model(eps, make):
    """The box-constrained L∞ worst case is the corner that moves each pixel min(ε, room) against
    σ·sign(w): samples robust there stay robust and reach exactly that margin; the others break."""
    model, x, y = _linear_problem()
    attack = make(eps)
    x_adv = attack(model, x, 1 - y if attack.targeted else y)
    _, m_opt = _linf_oracle(model, x, y, eps)
    m_adv = _signed_margin(model, x_adv, y)
    robust = m_opt > 0
    assert int(robust.sum()) < len(x) and (eps > 0.1 or int(robust.sum()) > 0)
    assert bool((m_adv[~robust] <= 0).all())
    torch.testing.assert_close(m_adv[robust], m_opt[robust], atol=1e-9, rtol=0)
    assert float((x_adv - x).abs().max()) <= eps + 1e-12


def test_apgd_l2_matches_closed_form_on_linear_model():
    model, x, y = _linear_problem()
    eps = 0.7
    w = model.lin.weight.detach().view(1, -1)
    x_opt = x - eps * (2 * y - 1).to(x.dtype).view(-1, 1) * w / w.norm()
    m_opt = _signed_margin(model, x_opt, y)
    x_adv = APGD(eps, norm="l2", steps=10, random_start=False, bounds=None)(model, x, y)
    robust = m_opt > 0
    torch.testing.assert_close(x_adv[robust], x_opt[robust], atol=1e-9, rtol=0)
    assert bool((_signed_margin(model, x_adv, y)[~robust] <= 0).all())


def _boxed_linf_distance(model, x, y):
    """The smallest L∞ ε at which the closed-form worst case flips the sign (bisection on ε;
    inf where even the whole box does not)."""
    lo, hi = torch.zeros(len(x), dtype=x.dtype), torch.ones(len(x), dtype=x.dtype)
    for _ in range(60):
        mid = (lo + hi) / 2
        flips = torch.stack([_linf_oracle(model, x[i:i + 1], y[i:i + 1], float(mid[i]))[1] for i in range(len(x))]).view(-1) <= 0
        hi, lo = torch.where(flips, mid, hi), torch.where(flips, lo, mid)
    never = _linf_oracle(model, x, y, 1.0)[1] > 0
    return torch.where(never, torch.full_like(hi, float("inf")), hi)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_minimal_distance_on_linear_model(norm):
    """Without a box the minimal distance to the hyperplane w·x + b = 0 is |w·x + b| / ‖w‖_dual."""
    model, x, y = _linear_problem()
    w, b = model.lin.weight.detach().view(-1), float(model.lin.bias.detach())
    s = x @ w + b
    exact = s.abs() / (w.abs().sum() if norm == "linf" else w.norm())
    correct = (s > 0).long() == y
    x_min, dist = FABT(1.0, norm=norm, steps=20, bounds=None).minimal(model, x, y)
    assert bool((dist[~correct] == 0).all())
    ratio = dist[correct] / exact[correct]
    assert float(ratio.min()) >= 1 - 1e-9 and float(ratio.max()) <= 1.01
    assert bool((_signed_margin(model, x_min, y)[correct] < 0).all())
    # as an attack: broken exactly where the minimal distance is within ε
    eps = float(exact[correct].median())
    x_adv = FABT(eps, norm=norm, steps=20, bounds=None)(model, x, y)
    broken = _signed_margin(model, x_adv, y) <= 0
    assert torch.equal(broken[correct], (1.01 * exact[correct] <= eps) | broken[correct])
    assert int(broken[correct].sum()) >= int((1.01 * exact[correct] <= eps).sum()) > 0


def test_fab_boxed_linf_distance_on_linear_model():
    model, x, y = _linear_problem(n=24)
    exact = _boxed_linf_distance(model, x, y)
    correct = _signed_margin(model, x, y) > 0
    _, dist = FABT(1.0, steps=30).minimal(model, x, y)
    ok = correct & exact.isfinite()
    ratio = dist[ok] / exact[ok]
    assert float(ratio.min()) >= 1 - 1e-6 and float(ratio.max()) <= 1.02


# --------------------------------------------------------------------------------------------
# gradient masking: what AutoAttack is for
# --------------------------------------------------------------------------------------------
class Quantized(nn.Module):
    """round(16·x)/16 before the model: the digits' pixels are multiples of 1/16, so clean
    predictions are unchanged, but the input gradient is exactly zero everywhere."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 16) / 16)


class Saturated(nn.Module):
    """Logits × 1e4: the float32 softmax is exactly one-hot on confident points, so the
    cross-entropy and its gradient vanish (the sparsity λ = 1e4 case); DLR is scale-invariant."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return 1e4 * self.model(x)


def test_square_breaks_a_model_with_masked_gradients(mlp, batch):
    x, y = batch
    model = Quantized(mlp).eval()
    clean = _acc(model, x, y)
    assert clean == _acc(mlp, x, y) > 0.85
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(xr), y), xr)
    assert float(g.abs().max()) == 0.0
    assert robust_accuracy(model, APGD(0.15, steps=10, random_start=False), (x, y)) == clean  # white box: nothing
    square = robust_accuracy(model, Square(0.15, n_queries=300), (x, y))
    assert square <= clean - 0.3
    aa = AutoAttack(0.15, apgd_steps=5, fab_steps=5, square_queries=300, n_target_classes=3)
    assert robust_accuracy(model, aa, (x, y)) <= square + 0.02


def test_dlr_breaks_a_saturated_softmax(mlp, batch):
    x, y = batch
    model = Saturated(mlp).eval()
    clean = _acc(model, x, y)
    ce = robust_accuracy(model, APGD(0.15, steps=10), (x, y))
    pgd = robust_accuracy(model, PGD(0.15, steps=10), (x, y))
    dlr = robust_accuracy(model, APGD(0.15, steps=10, loss="dlr"), (x, y))
    assert ce >= clean - 0.1 and pgd >= clean - 0.1  # CE gradients vanish on most points
    assert dlr <= 0.1  # while the unsaturated model is broken at this ε
    assert robust_accuracy(mlp, APGD(0.15, steps=10), (x, y)) <= 0.1


# --------------------------------------------------------------------------------------------
# AutoAttack: robust-only equals all points, per sample
# --------------------------------------------------------------------------------------------
def _broken(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def test_autoattack_robust_only_equals_attacking_all_points(mlp, batch):
    """Each member attacks only the points still robust; per sample that equals running every
    member on all points and taking the worst case (deterministic members: no random start)."""
    x, y = batch
    aa = AutoAttack(0.07, attacks=("apgd-ce", "apgd-t", "fab-t"), apgd_steps=10, fab_steps=10, n_target_classes=3)
    for member in aa.members.values():
        if hasattr(member, "random_start"):
            member.random_start = False
    broken_aa = _broken(mlp, aa(mlp, x, y), y) | (mlp(x).argmax(1) != y)
    fresh = copy.deepcopy(aa)
    broken_all = mlp(x).argmax(1) != y
    for member in fresh.members.values():
        broken_all |= _broken(mlp, member(mlp, x, y), y)
    assert torch.equal(broken_aa, broken_all)
    report = aa.last_run
    assert [r["attack"] for r in report] == ["apgd-ce", "apgd-t", "fab-t"]
    assert report[0]["attacked"] == int((mlp(x).argmax(1) == y).sum())
    for prev, cur in zip(report, report[1:]):
        assert cur["attacked"] == prev["attacked"] - prev["broken"]
    assert report[-1]["robust_after"] == int((~broken_all).sum()) > 0
    assert sum(r["attacked"] for r in report) < len(report) * report[0]["attacked"]  # the saving


def test_autoattack_versions_members_and_options():
    aa = attack_from_conf("autoattack", eps=0.1, n_target_classes=4, square_queries=77, apgd_steps=12, fab_steps=7)
    assert list(aa.members) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert aa.members["apgd-t"].n_target_classes == 4 and aa.members["apgd-t"].steps == 12
    assert aa.members["fab-t"].steps == 7 and aa.members["square"].n_queries == 77
    assert aa.members["apgd-ce"].loss == "ce" and aa.members["apgd-ce"].restarts == 1
    seeds = [m.seed for m in aa.members.values()]
    aa.seed = 10
    assert seeds == [0] * 4 and [m.seed for m in aa.members.values()] == [10] * 4  # one seed, as the reference's members


# The reference's AutoAttack._set_version (pyautoattack 0.2.0), member by member:
# (members in order, {member: (restarts, targets, large_eps, eot)})
REFERENCE_VERSIONS = {
    ("standard", "linf"): (["apgd-ce", "apgd-t", "fab-t", "square"], {"apgd-ce": (1, None, False, 1), "apgd-t": (1, 9, False, 1), "fab-t": (1, 9, None, None)}),
    ("standard", "l2"): (["apgd-ce", "apgd-t", "fab-t", "square"], {"apgd-ce": (1, None, False, 1), "apgd-t": (1, 9, False, 1), "fab-t": (1, 9, None, None)}),
    ("standard", "l1"): (["apgd-ce", "apgd-t", "fab-t", "square"], {"apgd-ce": (5, None, True, 1), "apgd-t": (1, 5, True, 1), "fab-t": (1, 9, None, None)}),
    ("plus", "linf"): (["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"],
                       {"apgd-ce": (5, None, False, 1), "apgd-dlr": (5, None, False, 1), "fab": (5, None, None, None),
                        "apgd-t": (1, 9, False, 1), "fab-t": (1, 9, None, None)}),
    ("rand", "linf"): (["apgd-ce", "apgd-dlr"], {"apgd-ce": (1, None, False, 20), "apgd-dlr": (1, None, False, 20)}),
}


@pytest.mark.parametrize("version,norm", list(REFERENCE_VERSIONS))
def test_autoattack_versions_are_the_references(version, norm):
    aa = AutoAttack(0.1, norm=norm, version=version)
    members, settings = REFERENCE_VERSIONS[(version, norm)]
    assert list(aa.members) == members and aa.members[members[-1]].norm == norm
    for name, (restarts, targets, large_eps, eot) in settings.items():
        m = aa.members[name]
        assert m.restarts == restarts, name
        assert getattr(m, "n_target_classes", None) == targets, name
        assert getattr(m, "large_eps", None) == large_eps and getattr(m, "eot_iter", None) == eot, name
    if "square" in aa.members:
        sq = aa.members["square"]
        assert sq.n_queries == 5000 and sq.p_init == 0.8 and sq.rescale_schedule is False  # resc_schedule=False


@pytest.mark.parametrize("cls,kwargs,key", [
    (AutoAttack, dict(version="fast"), "version"),
    (AutoAttack, dict(attacks=["pgd"]), "attacks"),
    (AutoAttack, dict(n_target_classes=0), "n_target_classes"),
    (AutoAttack, dict(square_queries=1.5), "square_queries"),
    (AutoAttack, dict(targeted=True), "targeted"),
    (APGD, dict(loss="hinge"), "loss"),
    (APGD, dict(eot_iter=0), "eot_iter"),
    (APGDT, dict(loss="ce"), "loss"),
    (FABT, dict(beta=1.5), "alpha_max"),
    (Square, dict(p_init=2.0), "p_init"),
    (Square, dict(n_queries=0), "n_queries"),
])
def test_bad_arguments(cls, kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):  # the constructor names its parameter (the pre-flight its node)
        cls(0.1, **kwargs)


# --------------------------------------------------------------------------------------------
# cross-checks against torchattacks on the same points
# --------------------------------------------------------------------------------------------
def _torchattacks():
    return pytest.importorskip("torchattacks", reason="torchattacks not installed: pip install --no-deps torchattacks")


def _theirs(attack, x, y):
    with torch.random.fork_rng():  # torchattacks reseeds the global RNG
        return attack(x, y)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_cross_check_members_with_torchattacks(norm, eps, cnn, batch4d):
    ta = _torchattacks()
    x, y = batch4d
    tnorm = "Linf" if norm == "linf" else "L2"
    pairs = [
        ("apgd-ce", APGD(eps, norm=norm, steps=20), ta.APGD(cnn, norm=tnorm, eps=eps, steps=20)),
        ("apgd-dlr", APGD(eps, norm=norm, steps=20, loss="dlr"), ta.APGD(cnn, norm=tnorm, eps=eps, steps=20, loss="dlr")),
        ("apgd-t", APGDT(eps, norm=norm, steps=10), ta.APGDT(cnn, norm=tnorm, eps=eps, steps=10, n_classes=10)),
        ("fab-t", FABT(eps, norm=norm, steps=10), ta.FAB(cnn, norm=tnorm, eps=eps, steps=10, multi_targeted=True, n_classes=10)),
    ]
    clean = _acc(cnn, x, y)
    for name, ours, theirs in pairs:
        a, b = robust_accuracy(cnn, ours, (x, y)), _acc(cnn, _theirs(theirs, x, y), y)
        assert abs(a - b) <= 0.05, (name, a, b)
        assert a < clean, name
    # Square: ours draws windows per sample (theirs one per batch), so it is at least as strong; both with
    # AutoAttack's window schedule (torchattacks' default resc_schedule=True fits it to the 200 queries)
    a = robust_accuracy(cnn, Square(eps, norm=norm, n_queries=200), (x, y))
    b = _acc(cnn, _theirs(ta.Square(cnn, norm=tnorm, eps=eps, n_queries=200, resc_schedule=False), x, y), y)
    assert a <= b + 0.03 and a < clean, (a, b)


@pytest.mark.slow  # ~25 s on 2 cores: torchattacks' Square always spends its 5,000 queries
def test_cross_check_autoattack_with_torchattacks(cnn, batch4d):
    """torchattacks' AutoAttack runs its APGD / APGD-T / FAB-T members with 10 steps."""
    ta = _torchattacks()
    x, y = batch4d
    ours = AutoAttack(0.08, apgd_steps=10, fab_steps=10, square_queries=1000)
    a = robust_accuracy(cnn, ours, (x, y))
    b = _acc(cnn, _theirs(ta.AutoAttack(cnn, norm="Linf", eps=0.08, n_classes=10, seed=0), x, y), y)
    assert abs(a - b) <= 0.04, (a, b)
    assert 0 < a < _acc(cnn, x, y)


# --------------------------------------------------------------------------------------------
# robust-only evaluation over an ε grid
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: PGD(0.1, steps=5, random_start=False),
    lambda: APGD(0.1, steps=5, random_start=False),
    lambda: FABT(0.1, steps=5, n_target_classes=3),
], ids=["pgd", "apgd", "fab_t"])
def test_robust_only_curve_equals_all_points_per_sample(make, mlp, batch):
    from advlab.attacks import robust_curve_per_sample

    x, y = batch
    grid = [0.0, 0.02, 0.04, 0.07, 0.1]
    fast, full = {}, {}
    only = robust_curve_per_sample(mlp, make(), (x, y), grid, robust_only=True, stats=fast)
    every = robust_curve_per_sample(mlp, make(), (x, y), grid, robust_only=False, stats=full)
    assert torch.equal(only, every)
    assert 0 < only[-2].sum() and only[-1].sum() < only[1].sum() < only[0].sum()  # non-trivial curve
    assert full["attacked_all"] == full["attacked"] == len(grid) * len(x)
    # the saving: ε = 0 needs no attack, and every ε only the points robust at the previous one
    assert fast["attacked"] == int(only[:-1].sum())
    assert fast["attacked"] < 0.75 * full["attacked"]


def test_robustness_curves_report_the_saving(mlp, batch):
    from advlab.analysis.robustness import robustness_curves

    x, y = batch
    curves = robustness_curves(mlp, {"pgd": PGD(0.1, steps=3, random_start=False)}, {"linf": [0.0, 0.05, 0.1]},
                               x, y, losses=("ce", "margin"), diagnostics=True, progress=False)
    c = curves["pgd"]
    assert c["attacked_all"] == 2 * 3 * len(x)
    assert c["attacked"] == int(c["by_loss"]["ce"][:-1].sum() + c["by_loss"]["margin"][:-1].sum())


def test_robustness_curves_run_fixed_loss_attacks_once(mlp, batch):
    from advlab.analysis.robustness import robustness_curves

    x, y = batch
    aa = AutoAttack(0.1, attacks=("apgd-ce", "apgd-t"), apgd_steps=5, n_target_classes=3)
    curves = robustness_curves(mlp, {"aa": aa, "pgd": PGD(0.1, steps=3)}, {"linf": [0.0, 0.05, 0.1]}, x, y,
                               losses=("ce", "margin"), diagnostics=True, progress=False)
    assert list(curves["aa"]["by_loss"]) == ["own"] and list(curves["pgd"]["by_loss"]) == ["ce", "margin"]
    assert torch.equal(curves["aa"]["alone"], curves["aa"]["by_loss"]["own"])
    assert curves["aa"]["alone"][-1].float().mean() < curves["aa"]["alone"][0].float().mean()
    # robust-only: PGD runs only where AutoAttack left points robust, so it has no exact curve of its own
    only = robustness_curves(mlp, {"aa": copy.deepcopy(aa), "pgd": PGD(0.1, steps=3)}, {"linf": [0.0, 0.05, 0.1]}, x, y,
                             losses=("ce", "margin"), progress=False)
    assert list(only["aa"]["by_loss"]) == ["own"] and only["pgd"]["by_loss"] == {} and only["pgd"]["alone"] is None
    assert only["pgd"]["attacked"] <= int(only["aa"]["robust"][1:].sum()) * 2 < curves["pgd"]["attacked"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(NEW_ATTACKS))
def test_cuda_device_and_generator(name, cnn, batch4d):
    x, y = (t.cuda() for t in batch4d)
    y = _labels(name, y)
    model = copy.deepcopy(cnn).cuda()
    state = torch.cuda.get_rng_state()
    out = NEW_ATTACKS[name]()(model, x, y)
    assert out.device == x.device and torch.equal(out, NEW_ATTACKS[name]()(model, x, y))
    attack = NEW_ATTACKS[name]()
    linf, l2 = _norms(out - x)
    assert float((linf if attack.norm == "linf" else l2).max()) <= attack.eps + 1e-6
    assert torch.equal(torch.cuda.get_rng_state(), state)


@pytest.mark.parametrize("cls", [APGDT, FABT, Square, AutoAttack])
def test_targeted_cannot_be_set_on_untargeted_only_attacks(cls):
    """The perturbation-learning method sets ``attack.targeted = True`` on its attack: these must
    refuse (they take true labels and choose their own targets) rather than silently run untargeted."""
    with pytest.raises(ConfigError, match="^targeted: "):
        cls(0.1, targeted=True)
    attack = cls(0.1)
    with pytest.raises(ConfigError, match="allowed: false"):
        attack.targeted = True
    attack.targeted = False
    assert APGD(0.1, targeted=True).targeted  # APGD itself supports targets


def test_cache_description_is_stable_and_names_the_options(mlp, batch):
    from advlab.artifacts.keys import describe_object

    x, y = batch
    aa = AutoAttack(0.1, version="standard", attacks=("apgd-ce",), apgd_steps=3, square_queries=11)
    before = describe_object(aa)
    aa(mlp, x, y)
    assert describe_object(aa) == before and aa.last_run[0]["attacked"] > 0
    assert before["version"] == "standard" and before["attacks"] == ["apgd-ce"] and before["square_queries"] == 11


class _Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_eot_averages_over_passes(mlp, batch):
    """eot_iter = k: k forward/backward passes per gradient (AutoAttack's rand version); on a
    deterministic model the averaged L∞ step is the same as a single pass."""
    x, y = batch
    model = _Counting(mlp)
    APGD(1e-4, steps=2, eot_iter=3)(model, x, y)  # ε too small to break anything: every step runs
    assert model.calls == 1 + 3 + 3 + 1  # clean check (1), start (3), step 1 (3), last step: loss only (1)
    one = APGD(0.05, steps=5, random_start=False)(mlp, x, y)
    three = APGD(0.05, steps=5, random_start=False, eot_iter=3)(mlp, x, y)
    torch.testing.assert_close(three, one, atol=1e-6, rtol=0)
    rand = AutoAttack(0.1, version="rand", eot_iter=2, apgd_steps=3)
    assert robust_accuracy(mlp, rand, (x, y)) < _acc(mlp, x, y)
