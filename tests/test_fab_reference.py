"""FAB and FAB-T against the AutoAttack authors' implementation (``pyautoattack``, a test-only
reference: ``FABAttack_PT`` and ``fab_projections``) for L∞, L2 and L1, point by point.

advlab's FAB repeats the reference's float operations in the same order (gradients, closest class,
hyperplane, projection, update, bookkeeping, final selection) on the same batches, so the points
agree exactly: the tests assert a max abs difference of 0 (besides ``assert_close`` and equal
broken flags); a reordered sum or a different branch would show. Small briefly trained models
(≈0.3 s each), 48 points, 10–20 steps.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import FAB, FABT
from advlab.attacks.fab_projections import project_box_hyperplane, project_hyperplane
from advlab.errors import ConfigError

paa = pytest.importorskip("pyautoattack", reason="the AutoAttack reference is not installed (make install)")
from pyautoattack.fab_projections import projection_l1, projection_l2, projection_linf  # noqa: E402
from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NORMS = ("linf", "l2", "l1")
REF_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}
REF_PROJECTION = {"linf": projection_linf, "l2": projection_l2, "l1": projection_l1}


# --------------------------------------------------------------------------------------------
# small problems: class prototypes plus noise, a model trained for 60 Adam steps
# --------------------------------------------------------------------------------------------
def _train(model, sample, steps=60):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        xb, yb = sample(256)
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    x, y = sample(48)
    y[::8] = (y[::8] + 1) % model(x[:1]).shape[1]  # a few misclassified points: returned unchanged
    return model, x, y


def _prototypes(shape, n_classes, arch):
    g = torch.Generator().manual_seed(0)
    proto = torch.rand((n_classes,) + shape, generator=g)

    def sample(m):
        y = torch.randint(0, n_classes, (m,), generator=g)
        return 0.35 * proto[y] + 0.65 * torch.rand((m,) + shape, generator=g), y
    torch.manual_seed(0)
    if arch == "cnn":
        model = nn.Sequential(nn.Conv2d(shape[0], 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(8 * shape[1] * shape[2] // 4, n_classes))
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], 32), nn.ReLU(), nn.Linear(32, n_classes))
    return _train(model, sample)


def _gated():
    """Pixels below 0.6 are cut (zero gradient): FAB from x moves only the active pixels, a random
    start at ε/2 wakes others up, so the restarts break many more points (what restarts are for)."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(10, 192, generator=g) < 0.15

    def sample(m):
        y = torch.randint(0, 10, (m,), generator=g)
        x = torch.where(masks[y], 0.6 + 0.4 * torch.rand(m, 192, generator=g), 0.6 * torch.rand(m, 192, generator=g))
        return x.view(m, 3, 8, 8), y
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Threshold(0.6, 0.0), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 10))
    return _train(model, sample)


@pytest.fixture(scope="module")
def cnn_problem():
    return _prototypes((3, 8, 8), 10, "cnn")


@pytest.fixture(scope="module")
def mlp_problem():
    return _prototypes((1, 28, 28), 10, "mlp")


@pytest.fixture(scope="module")
def three_class_problem():
    return _prototypes((3, 8, 8), 3, "cnn")


@pytest.fixture(scope="module")
def gated_problem():
    return _gated()


# eps near the median minimal distance of each problem (measured with FAB.minimal): about half the
# correctly classified points are broken, so both outcomes are exercised
EPS = {
    "cnn": {"linf": 0.025, "l2": 0.27, "l1": 1.4},
    "mlp": {"linf": 0.04, "l2": 0.93, "l1": 10.8},
    "three": {"linf": 0.054, "l2": 0.58, "l1": 3.1},
    "gated": {"linf": 0.4268, "l2": 1.6035, "l1": 8.1372},
}


def _reference(model, x, y, norm, eps, steps, restarts=1, targeted=False, n_target_classes=9, seed=0):
    ref = FABAttack_PT(model, norm=REF_NORM[norm], n_restarts=restarts, n_iter=steps, eps=eps, seed=seed,
                       targeted=targeted, n_target_classes=n_target_classes)
    with torch.random.fork_rng():  # it reseeds the global RNG
        return ref.perturb(x, y)


def _broken(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def _lp(v, norm):
    v = v.flatten(1)
    return v.abs().amax(1) if norm == "linf" else v.norm(p=2 if norm == "l2" else 1, dim=1)


def _check_same(model, x, y, ours, theirs, norm, eps, attack):
    """Same points, same broken flags; broken points within ε, the rest x; and FAB.minimal agrees:
    broken exactly where the closest point found over all runs is within ε."""
    torch.testing.assert_close(ours, theirs)
    broken = _broken(model, ours, y)
    assert torch.equal(broken, _broken(model, theirs, y))
    clean_ok = ~_broken(model, x, y)
    assert 0 < int((broken & clean_ok).sum()) < int(clean_ok.sum())  # non-trivial: some broken, some robust
    assert float(_lp(ours - x, norm)[broken].max()) <= eps * (1 + 1e-6)
    assert torch.equal(ours[~broken], x[~broken])
    _, dist = attack.minimal(model, x, y)
    assert torch.equal(dist <= eps, broken)
    return float((ours - theirs).abs().max())


# --------------------------------------------------------------------------------------------
# the projection onto the hyperplane inside the box
# --------------------------------------------------------------------------------------------
def _projection_inputs(n, dim, dtype):
    g = torch.Generator().manual_seed(dim)
    t = torch.rand(n, dim, generator=g, dtype=dtype)
    edge = torch.rand(n, dim, generator=g) < 0.3  # points on and next to the box edges
    t = torch.where(edge, t.round() + (t - 0.5).sign() * torch.rand(n, dim, generator=g, dtype=dtype) * 1e-7, t).clamp(0, 1)
    w = torch.randn(n, dim, generator=g, dtype=dtype)
    w[:, :2] = 0.0  # gradient-free coordinates (and one below the reference's 1e-8 threshold)
    w[:, 2] = 1e-9
    # from next to the plane to beyond what the box can reach (about ‖w‖₁ / 2 on average)
    offset = torch.randn(n, generator=g, dtype=dtype) * torch.logspace(-5, 0, n, dtype=dtype) * w.abs().sum(1)
    return t, w, (w * t).sum(1) + offset


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [5, 192, 784])
@pytest.mark.parametrize("norm", NORMS)
def test_projection_equals_reference(norm, dim, dtype):
    t, w, b = _projection_inputs(256, dim, dtype)
    theirs = REF_PROJECTION[norm](t, w.clone(), b.clone())
    ours = project_box_hyperplane(t, w, b, norm, (0.0, 1.0))
    assert torch.equal(ours, theirs)  # the same float operations in the same order
    # both branches occur: on the hyperplane inside the box, and the whole box when it cannot reach
    on_plane = ((w * (t + ours)).sum(1) - b).abs() <= 1e-4 * (1 + b.abs())
    assert 20 < int(on_plane.sum()) < 256
    assert float((t + ours).min()) >= -1e-6 and float((t + ours).max()) <= 1 + 1e-6
    frozen = 2 if norm == "linf" else 3  # L∞ freezes w = 0 only; L2 and L1 also |w| ≤ 1e-8
    assert bool((ours[:, :frozen] == 0).all()) and bool((ours[:, 2] != 0).any()) == (norm == "linf")


@pytest.mark.parametrize("norm", NORMS)
def test_projection_other_boxes_and_no_box(norm):
    """A box (lo, hi) is the unit box scaled: d' = (hi − lo)·d; without a box, the closed form
    ‖d‖ = |c| / ‖w‖_dual with w·d = c."""
    t, w, b = _projection_inputs(128, 40, torch.float64)
    unit = project_box_hyperplane(t, w, b, norm, (0.0, 1.0))
    scaled = project_box_hyperplane(2 * t - 1, w / 2, b - (w / 2).sum(1), norm, (-1.0, 1.0))
    torch.testing.assert_close(scaled, 2 * unit, atol=1e-9, rtol=0)
    c = torch.randn(128, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    free = project_hyperplane(t, w, c, norm, None)
    torch.testing.assert_close((w * free).sum(1), c, atol=1e-12, rtol=1e-9)
    dual = {"linf": w.abs().sum(1), "l2": w.norm(dim=1), "l1": w.abs().amax(1)}[norm]
    torch.testing.assert_close(_lp(free, norm), c.abs() / dual, atol=1e-12, rtol=1e-9)


def test_l1_projection_is_minimal():
    """Brute force for L1 (test_autoattack checks L∞ and L2): no feasible point of the hyperplane
    in the box is closer."""
    g = torch.Generator().manual_seed(1)
    p = torch.rand(8, 5, generator=g, dtype=torch.float64)
    w = torch.randn(8, 5, generator=g, dtype=torch.float64)
    c = 0.3 * torch.randn(8, generator=g, dtype=torch.float64)
    d = project_hyperplane(p, w, c, "l1", (0.0, 1.0))
    torch.testing.assert_close((w * d).sum(1), c, atol=1e-9, rtol=0)
    assert float((p + d).min()) >= -1e-12 and float((p + d).max()) <= 1 + 1e-12
    cand = torch.rand(20000, 8, 5, generator=g, dtype=torch.float64) - p
    j = w.abs().argmax(1)
    cand[:, torch.arange(8), j] += (c - (w * cand).sum(2)) / w[torch.arange(8), j]
    inside = ((p + cand) >= 0).all(2) & ((p + cand) <= 1).all(2)
    best = cand.abs().sum(2).masked_fill(~inside, float("inf")).amin(0)
    assert bool((d.abs().sum(1) <= best + 1e-9).all())


# --------------------------------------------------------------------------------------------
# the attacks, point by point
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", NORMS)
def test_fab_t_equals_reference(norm, cnn_problem):
    model, x, y = cnn_problem
    eps = EPS["cnn"][norm]
    attack = FABT(eps, norm=norm, steps=20, n_target_classes=3)
    ours = attack(model, x, y)
    theirs = _reference(model, x, y, norm, eps, 20, targeted=True, n_target_classes=3)
    assert _check_same(model, x, y, ours, theirs, norm, eps, attack) == 0.0


@pytest.mark.parametrize("norm", NORMS)
def test_fab_equals_reference(norm, mlp_problem):
    model, x, y = mlp_problem
    eps = EPS["mlp"][norm]
    attack = FAB(eps, norm=norm, steps=20)
    ours = attack(model, x, y)
    theirs = _reference(model, x, y, norm, eps, 20)
    assert _check_same(model, x, y, ours, theirs, norm, eps, attack) == 0.0


@pytest.mark.parametrize("norm", NORMS)
def test_three_classes_clip_the_targets(norm, three_class_problem):
    """n_target_classes = 9 with 3 classes: the 2 other classes (the reference needs n ≤ C − 1)."""
    model, x, y = three_class_problem
    eps = EPS["three"][norm]
    attack = FABT(eps, norm=norm, steps=20, n_target_classes=9)
    ours = attack(model, x, y)
    theirs = _reference(model, x, y, norm, eps, 20, targeted=True, n_target_classes=2)
    assert _check_same(model, x, y, ours, theirs, norm, eps, attack) == 0.0
    assert torch.equal(ours, FABT(eps, norm=norm, steps=20, n_target_classes=2)(model, x, y))
    untargeted = FAB(eps, norm=norm, steps=20)
    theirs = _reference(model, x, y, norm, eps, 20)
    assert _check_same(model, x, y, untargeted(model, x, y), theirs, norm, eps, untargeted) == 0.0


@pytest.mark.parametrize("norm", NORMS)
def test_fab_restarts_against_reference(norm, gated_problem):
    """5 restarts on a model where they matter (one restart leaves 19 / 32 / 27 of 48 points robust
    for L∞ / L2 / L1, five about 1 / 2 / 11). Same seed: the attack's CPU generator seeded s draws the same Mersenne-Twister
    stream as the reference's global RNG reseeded with s, so the points are equal. Other seeds: the
    robust counts are sums of per-point Bernoulli outcomes of the random starts; the mean over 3
    seeds of each must agree within 4 standard errors of the difference (spread measured here) + 1."""
    model, x, y = gated_problem
    eps, steps = EPS["gated"][norm], 10
    one = _reference(model, x, y, norm, eps, steps)
    theirs = [_reference(model, x, y, norm, eps, steps, restarts=5, seed=s) for s in range(3)]
    ours = FAB(eps, norm=norm, steps=steps, restarts=5, seed=0)(model, x, y)
    torch.testing.assert_close(ours, theirs[0], rtol=0, atol=0)
    robust_one = int((~_broken(model, one, y)).sum())
    ref_counts = torch.tensor([float((~_broken(model, t, y)).sum()) for t in theirs])
    our_counts = torch.tensor([float((~_broken(model, FAB(eps, norm=norm, steps=steps, restarts=5, seed=s)(model, x, y), y)).sum())
                               for s in (10, 11, 12)])
    assert float(ref_counts.max()) + 5 <= robust_one and float(our_counts.max()) + 5 <= robust_one
    se = (ref_counts.var() / 3 + our_counts.var() / 3).sqrt()
    assert abs(float(ref_counts.mean() - our_counts.mean())) <= 4 * float(se) + 1, (ref_counts, our_counts)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [FAB, FABT])
def test_bad_norm_and_settings(cls):
    with pytest.raises(ConfigError, match=r"^norm: .*allowed: linf, l2, l1"):
        cls(0.1, norm="l0")
    with pytest.raises(ConfigError, match=r"^restarts: "):
        cls(0.1, restarts=0)
    assert cls(0.1, norm="l1").norm == "l1" and cls.fixed_losses and cls.untargeted_only


def test_yaml_configs_build_fab_and_fab_t():
    from conftest import attack_from_conf

    fab, fab_t = attack_from_conf("fab", eps=0.2, norm="l1", restarts=5), attack_from_conf("fab_t", eps=0.2)
    assert type(fab) is FAB and (fab.norm, fab.restarts, fab.steps, fab.eps) == ("l1", 5, 100, 0.2)
    assert type(fab_t) is FABT and (fab_t.n_target_classes, fab_t.restarts, fab_t.norm) == (9, 1, "linf")
