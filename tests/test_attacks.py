"""Correctness of advlab.attacks (RECIPES.md, "Attack correctness: what every implementation must hold").

Small CPU models only: an MLP and a CNN trained for a moment on scikit-learn's 8×8 digits (pixels in
[0, 1]), and linear two-class models whose worst case has a closed form (exact oracles).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advlab.attacks import (
    FGSM, MIFGSM, PGD, Attack, OneStepL2, evaluate_attack, per_sample_loss, robust_accuracy,
    robust_accuracy_curve, success,
)
from advlab.attacks.base import as_logits
from advlab.errors import ConfigError
from conftest import attack_from_conf

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    return x[tr], y[tr], x[te], y[te]


def _train(model, x, y, iters, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(iters):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


@pytest.fixture(scope="module")
def mlp(digits):
    xtr, ytr, _, _ = digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return _train(model, xtr, ytr, iters=80)


@pytest.fixture(scope="module")
def cnn(digits):
    """1×8×8 CNN: 4-D inputs, as torchattacks requires."""
    xtr, ytr, _, _ = digits
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8 * 64, 10))
    return _train(model, xtr.view(-1, 1, 8, 8), ytr, iters=40)


@pytest.fixture(scope="module")
def batch(digits):
    _, _, xte, yte = digits
    return xte[:128], yte[:128]


@pytest.fixture(scope="module")
def batch4d(batch):
    x, y = batch
    return x[:64].view(-1, 1, 8, 8).clone(), y[:64].clone()  # 64 = power of 2, see the torchattacks test


class LinearTwoClass(nn.Module):
    """s(x) = w·x + b; outputs logits [0, s] (class 1 iff s > 0) or, with scalar=True, s itself."""

    def __init__(self, w: torch.Tensor, b: float, scalar: bool = False):
        super().__init__()
        self.lin = nn.Linear(w.numel(), 1).to(w.dtype)
        with torch.no_grad():
            self.lin.weight.copy_(w.view(1, -1))
            self.lin.bias.fill_(b)
        self.scalar = scalar

    def forward(self, x):
        s = self.lin(x.flatten(1)).squeeze(1)
        return s if self.scalar else torch.stack((torch.zeros_like(s), s), dim=1)


def _linear_problem(n=64, d=30, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g, dtype=dtype)
    w[:3] = 0.0  # pixels the attack must leave alone
    x = torch.rand(n, d, generator=g, dtype=dtype)
    edge = torch.rand(n, d, generator=g, dtype=dtype)
    x = torch.where(edge < 0.15, torch.zeros_like(x), torch.where(edge > 0.85, torch.ones_like(x), x))  # boxed pixels
    s = x @ w
    b = 0.0123 - float(s.median())  # no sample exactly on the boundary
    y = (s + b > 0).long()
    y[:8] = 1 - y[:8]  # a few samples misclassified when clean
    return LinearTwoClass(w, b), x, y


def _signed_margin(model, x, y):
    """σ·s(x) with σ = ±1 for class 1/0: positive = correctly classified."""
    s = model.lin(x.flatten(1)).squeeze(1)
    return torch.where(y > 0, s, -s)


def _linf_oracle(model, x, y, eps, lo=0.0, hi=1.0):
    w = model.lin.weight.detach().view(-1)
    sigma = (2 * y - 1).to(x.dtype).view(-1, 1)
    direction = -sigma * torch.sign(w)  # decrease σ·s
    room = torch.where(direction > 0, hi - x, x - lo)
    x_opt = x + direction * torch.minimum(torch.full_like(x, eps), room)
    return x_opt, _signed_margin(model, x_opt, y)


def _norms(delta):
    flat = delta.flatten(1)
    return flat.abs().amax(1), flat.norm(dim=1)


def _loss_and_success(model, x_adv, y, targeted=False):
    with torch.no_grad():
        logits, yy = as_logits(model(x_adv), y)
        loss = per_sample_loss("ce", logits, yy)
        pred = logits.argmax(1)
    return (pred == yy, -loss) if targeted else (pred != yy, loss)


ALL_ATTACKS = {
    "pgd_linf": lambda: PGD(0.1, steps=5),
    "pgd_l2": lambda: PGD(0.8, norm="l2", steps=5),
    "pgd_linf_restarts_margin": lambda: PGD(0.1, steps=3, restarts=2, loss="margin"),
    "pgd_l2_targeted": lambda: PGD(0.8, norm="l2", steps=5, targeted=True),
    "fgsm": lambda: FGSM(0.1),
    "fgm_l2": lambda: FGSM(0.8, norm="l2"),
    "one_step_l2": lambda: OneStepL2(0.8),
    "mifgsm_linf": lambda: MIFGSM(0.1, steps=5),
    "mifgsm_l2": lambda: MIFGSM(0.8, norm="l2", steps=5, random_start=True),
}


# --------------------------------------------------------------------------------------------
# the ε-ball, bounds, shapes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_eps_ball_bounds_shape(name, cnn, batch4d):
    x, y = batch4d
    attack = ALL_ATTACKS[name]()
    x_adv = attack(cnn, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    linf, l2 = _norms(x_adv - x)
    bound = linf if attack.norm == "linf" else l2
    assert float(bound.max()) <= attack.eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(bound.max()) > 0.5 * attack.eps  # it moved


@pytest.mark.parametrize("norm,eps", [("linf", 0.5), ("l2", 3.0)])
def test_bounds_none_leaves_values_unclipped(norm, eps):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(20, generator=g)
    model = LinearTwoClass(w, 0.0)
    x = 3 * torch.randn(32, 20, generator=g)  # unbounded synthetic data
    y = (x @ w > 0).long()
    for attack in (PGD(eps, norm=norm, bounds=None), FGSM(eps, norm=norm, bounds=None)):
        x_adv = attack(model, x, y)
        linf, l2 = _norms(x_adv - x)
        assert float((linf if norm == "linf" else l2).max()) <= eps + 1e-5
        assert float(x_adv.max()) > 1.5 and float(x_adv.min()) < -1.5
    with pytest.raises(ValueError, match="bounds"):  # default bounds (0, 1) refuse such inputs
        PGD(eps, norm=norm)(model, x, y)


def test_float64_and_flat_inputs_keep_dtype():
    model, x, y = _linear_problem()
    x_adv = PGD(0.1, steps=3)(model, x, y)
    assert x_adv.dtype == torch.float64 and x_adv.shape == x.shape


# --------------------------------------------------------------------------------------------
# side effects: mode, parameters, gradients, RNG, grad contexts
# --------------------------------------------------------------------------------------------
class ModeProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def _probe_model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), ModeProbe(),
                             nn.Linear(32, 10))


@pytest.mark.parametrize("initial", ["train", "eval", "mixed"])
def test_model_mode_restored_and_attack_runs_in_eval(initial, batch):
    x, y = batch
    model = _probe_model()
    model.train(initial != "eval")
    if initial == "mixed":
        model[1].eval()  # e.g. a frozen BatchNorm inside a training model
    before = [m.training for m in model.modules()]
    PGD(0.1, steps=3, restarts=2)(model, x, y)
    assert [m.training for m in model.modules()] == before
    assert model[4].seen and not any(model[4].seen)  # every forward ran in eval mode


def test_model_mode_restored_on_exception(batch):
    x, y = batch

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Linear(64, 10), Boom()).train()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(0.1)(model, x, y)
    assert all(m.training for m in model.modules())


def test_parameters_buffers_and_grads_untouched(batch):
    x, y = batch
    model = _probe_model().train()
    state = copy.deepcopy(model.state_dict())  # includes BatchNorm running statistics
    for attack in (PGD(0.1, steps=3), PGD(0.5, norm="l2", restarts=2), FGSM(0.1), MIFGSM(0.1)):
        attack(model, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_global_rng_untouched(mlp, batch):
    x, y = batch
    cpu_state = torch.get_rng_state()
    for attack in (PGD(0.1, steps=2, restarts=2), PGD(0.5, norm="l2", steps=2), MIFGSM(0.1, random_start=True)):
        attack(mlp, x, y)
    assert torch.equal(torch.get_rng_state(), cpu_state)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_seed_reproducible_successive_calls_differ(norm, eps, mlp, batch):
    x, y = batch
    a1, a2 = PGD(eps, norm=norm, steps=3, seed=7), PGD(eps, norm=norm, steps=3, seed=7)
    first = a1(mlp, x, y)
    assert torch.equal(first, a2(mlp, x, y))  # same seed, same output
    assert not torch.equal(first, a1(mlp, x, y))  # the generator is kept: the next batch gets new draws
    assert not torch.equal(first, PGD(eps, norm=norm, steps=3, seed=8)(mlp, x, y))
    a1.reset_rng()
    assert torch.equal(first, a1(mlp, x, y))


def test_copies_and_pickles_continue_the_random_stream(mlp, batch):
    import pickle

    x, y = batch
    attack = PGD(0.1, steps=2, seed=4)
    attack(mlp, x, y)  # advance the generator
    clone, pickled = copy.deepcopy(attack), pickle.loads(pickle.dumps(attack))
    expected = attack(mlp, x, y)
    assert torch.equal(clone(mlp, x, y), expected) and torch.equal(pickled(mlp, x, y), expected)


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
def test_works_inside_no_grad_and_inference_mode(ctx, mlp, batch):
    x, y = batch
    expected = PGD(0.1, steps=3)(mlp, x, y)
    with ctx():
        got = PGD(0.1, steps=3)(mlp, x, y)
    assert torch.equal(got, expected)
    with torch.inference_mode():  # inference tensors as inputs (Lightning validation/test)
        xi, yi = x.clone(), y.clone()
        got = PGD(0.1, steps=3)(mlp, xi, yi)
    assert torch.equal(got, expected)


# --------------------------------------------------------------------------------------------
# ε = 0, monotonicity in ε, PGD vs FGSM, best iterate, restarts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_eps_zero_returns_x_exactly(name, cnn, batch4d):
    x, y = batch4d
    attack = ALL_ATTACKS[name]()
    attack.eps = 0.0
    x_adv = attack(cnn, x, y)
    assert torch.equal(x_adv, x) and x_adv.data_ptr() != x.data_ptr()
    if not attack.targeted:
        clean = float((cnn(x).argmax(1) == y).float().mean())
        assert robust_accuracy(cnn, attack, (x, y)) == clean


def test_robust_accuracy_monotone_in_eps_linear_oracle():
    """On a linear model PGD finds the exact worst case, so independent runs at each ε are
    monotone and equal the closed-form robust accuracy."""
    model, x, y = _linear_problem()
    grid = [0.0, 0.01, 0.03, 0.05, 0.1, 0.2, 0.4]
    accs = []
    for eps in grid:
        acc = robust_accuracy(model, PGD(eps, steps=10, seed=0), (x, y))
        _, m_opt = _linf_oracle(model, x, y, eps)
        assert acc == float((m_opt > 0).float().mean())
        accs.append(acc)
    assert all(b <= a for a, b in zip(accs, accs[1:]))
    assert accs[0] > accs[-1]


@pytest.mark.parametrize("name,make", [
    ("pgd_linf", lambda: PGD(1.0, steps=10, random_start=False)),
    ("pgd_l2", lambda: PGD(1.0, norm="l2", steps=10, random_start=False)),
    ("fgsm", lambda: FGSM(1.0)),
    ("pgd_l2_random_start", lambda: PGD(1.0, norm="l2", steps=10, seed=0)),
])
def test_robust_accuracy_monotone_in_eps_trained_model(name, make, mlp, batch):
    """Independent attacks at different ε are NOT monotone in general (a local search; FGSM in
    particular can do worse at a larger ε). What guarantees it is that a point found at ε' ≤ ε is
    feasible at ε: robust_accuracy_curve counts a sample as broken at ε once broken at any smaller
    ε. It must be monotone, equal clean accuracy at ε = 0 and, for deterministic attacks (no random
    start, so the same runs happen inside), be at least as strong as the independent runs."""
    x, y = batch
    attack = make()
    grid = [0.0, 0.02, 0.05, 0.1, 0.2] if attack.norm == "linf" else [0.0, 0.25, 0.5, 1.0, 2.0]
    curve = robust_accuracy_curve(mlp, attack, (x, y), grid)
    assert attack.eps == 1.0  # restored
    assert all(b <= a for a, b in zip(curve, curve[1:]))
    assert curve[0] == float((mlp(x).argmax(1) == y).float().mean())  # ε = 0: clean accuracy
    assert curve[-1] < 0.5 * curve[0]
    independent = []
    for eps in grid:
        a = make()
        a.eps = eps
        independent.append(robust_accuracy(mlp, a, (x, y)))
    if not attack.random_start:
        assert all(c <= i for c, i in zip(curve, independent))
    if attack.steps > 1:
        # 10 steps with keep_best and a fixed seed on this well-separated grid: the independent runs
        # are monotone too (deterministic here; an empirical property, not a theorem).
        assert all(b <= a for a, b in zip(independent, independent[1:]))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 0.2), ("l2", 0.8), ("l2", 1.5)])
def test_pgd_at_least_as_strong_as_fgsm_per_sample(norm, eps, mlp, batch):
    x, y = batch
    fgsm = FGSM(eps, norm=norm)
    # first iterate == FGSM: no random start, step size eps
    pgd1 = PGD(eps, norm=norm, steps=1, step_size=eps, random_start=False, keep_best=False)
    assert torch.equal(pgd1(mlp, x, y), fgsm(mlp, x, y))
    pgd = PGD(eps, norm=norm, steps=10, step_size=eps, random_start=False, keep_best=True)
    s_f, l_f = _loss_and_success(mlp, fgsm(mlp, x, y), y)
    s_p, l_p = _loss_and_success(mlp, pgd(mlp, x, y), y)
    assert bool((s_f <= s_p).all())  # fooled by FGSM ⇒ fooled by PGD
    same = s_f == s_p
    assert bool((l_p[same] >= l_f[same] - 1e-6).all())
    assert int(s_p.sum()) >= int(s_f.sum())


@pytest.mark.parametrize("norm,eps,targeted", [("linf", 0.1, False), ("l2", 0.8, False), ("l2", 0.8, True)])
def test_keep_best_dominates_last_iterate(norm, eps, targeted, mlp, batch):
    x, y = batch
    if targeted:
        y = (y + 1) % 10
    kw = dict(eps=eps, norm=norm, steps=6, rel_step_size=0.5, targeted=targeted, seed=3)
    s_last, l_last = _loss_and_success(mlp, PGD(keep_best=False, **kw)(mlp, x, y), y, targeted)
    s_best, l_best = _loss_and_success(mlp, PGD(keep_best=True, **kw)(mlp, x, y), y, targeted)
    assert bool((s_last <= s_best).all())
    same = s_last == s_best
    assert bool((l_best[same] >= l_last[same] - 1e-6).all())


@pytest.mark.parametrize("norm,eps,targeted", [("linf", 0.1, False), ("l2", 1.0, False), ("linf", 0.1, True)])
def test_keep_best_equals_brute_force_over_iterates(norm, eps, targeted, mlp, batch):
    """Reference: iterate k is PGD(steps=k, keep_best=False) (no random start, fixed step size);
    pick per sample the first iterate with the best (succeeded, loss). Must match exactly."""
    x, y = batch
    if targeted:
        y = (y + 1) % 10
    steps = 6
    kw = dict(eps=eps, norm=norm, step_size=eps / 3, random_start=False, targeted=targeted)
    iterates = [x] + [PGD(steps=k, keep_best=False, **kw)(mlp, x, y) for k in range(1, steps + 1)]
    best_x, best_s, best_l = iterates[0].clone(), *_loss_and_success(mlp, iterates[0], y, targeted)
    for it in iterates[1:]:
        s_, l_ = _loss_and_success(mlp, it, y, targeted)
        better = (s_ & ~best_s) | ((s_ == best_s) & (l_ > best_l))
        best_x[better], best_s, best_l = it[better], best_s | s_, torch.where(better, l_, best_l)
    got = PGD(steps=steps, keep_best=True, **kw)(mlp, x, y)
    assert torch.equal(got, best_x)
    assert not torch.equal(got, iterates[-1])  # the best is not simply the last iterate here


@pytest.mark.parametrize("norm,eps", [("linf", 0.06), ("l2", 0.5)])
def test_restarts_per_sample_worst_case(norm, eps, mlp, batch):
    """Restart r draws its start like the (r+1)-th call of a restarts=1 attack with the same seed,
    so the restarts=3 result must dominate each of those three runs per sample."""
    x, y = batch
    kw = dict(eps=eps, norm=norm, steps=3, rel_step_size=0.5, seed=11)
    single = PGD(restarts=1, **kw)
    runs = [_loss_and_success(mlp, single(mlp, x, y), y) for _ in range(3)]
    s_k, l_k = _loss_and_success(mlp, PGD(restarts=3, **kw)(mlp, x, y), y)
    for s_r, l_r in runs:
        assert bool((s_r <= s_k).all())
        same = s_r == s_k
        assert bool((l_k[same] >= l_r[same] - 1e-6).all())
    assert int(s_k.sum()) >= max(int(s.sum()) for s, _ in runs)
    assert robust_accuracy(mlp, PGD(restarts=3, **kw), (x, y)) <= robust_accuracy(mlp, PGD(restarts=1, **kw), (x, y))


# --------------------------------------------------------------------------------------------
# exact oracles on linear models
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.05, 0.3])
@pytest.mark.parametrize("name,make", [
    ("fgsm", lambda e: FGSM(e)),
    ("pgd", lambda e: PGD(e, steps=10, random_start=False)),
    ("pgd_random_start", lambda e: PGD(e, steps=10)),
    ("pgd_no_keep_best", lambda e: PGD(e, steps=10, keep_best=False)),
    ("pgd_margin", lambda e: PGD(e, steps=10, loss="margin")),
    ("pgd_targeted", lambda e: PGD(e, steps=10, targeted=True)),
    ("mifgsm", lambda e: MIFGSM(e, steps=10)),
])
def test_linf_matches_closed_form_on_linear_model(eps, name, make):
    model, x, y = _linear_problem()
    attack = make(eps)
    target = 1 - y if attack.targeted else y
    x_adv = attack(model, x, target)
    x_opt, m_opt = _linf_oracle(model, x, y, eps)
    m_adv = _signed_margin(model, x_adv, y)
    torch.testing.assert_close(m_adv, m_opt, atol=1e-5, rtol=0)
    moved = model.lin.weight.detach().view(-1) != 0  # pixels with w = 0 keep their random start
    torch.testing.assert_close(x_adv[:, moved], x_opt[:, moved], atol=1e-6, rtol=0)
    if not attack.random_start:
        torch.testing.assert_close(x_adv, x_opt, atol=1e-6, rtol=0)


@pytest.mark.parametrize("scalar", [False, True])
@pytest.mark.parametrize("name,make", [
    ("one_step_l2", lambda e: OneStepL2(e, bounds=None)),
    ("fgm_l2", lambda e: FGSM(e, norm="l2", bounds=None)),
    ("pgd_l2", lambda e: PGD(e, norm="l2", steps=10, random_start=False, bounds=None)),
    ("pgd_l2_targeted_margin", lambda e: PGD(e, norm="l2", steps=10, random_start=False, bounds=None,
                                            targeted=True, loss="margin")),
])
def test_l2_matches_closed_form_on_linear_model(scalar, name, make):
    """Without clipping, the L2 worst case of a linear model is x − ε·σ·w/‖w‖ (σ = ±1 the label).
    With scalar=True the model outputs one score and labels are ±1 (Kumano et al. NeurIPS 2024)."""
    model, x, y = _linear_problem()
    model.scalar = scalar
    eps = 0.7
    w = model.lin.weight.detach().view(1, -1)
    sigma = (2 * y - 1).to(x.dtype).view(-1, 1)
    x_opt = x - eps * sigma * w / w.norm()
    labels = (2 * y - 1) if scalar else y  # ±1 for the score model
    attack = make(eps)
    x_adv = attack(model, x, -labels if (attack.targeted and scalar) else (1 - labels) if attack.targeted else labels)
    torch.testing.assert_close(x_adv, x_opt, atol=1e-6, rtol=0)
    torch.testing.assert_close(_signed_margin(model, x_adv, y), _signed_margin(model, x_opt, y), atol=1e-5, rtol=0)


def test_l2_random_start_converges_to_closed_form():
    """From a random start, projected L2 steps approach the optimum geometrically."""
    model, x, y = _linear_problem()
    eps = 0.7
    w = model.lin.weight.detach().view(1, -1)
    x_opt = x - eps * (2 * y - 1).to(x.dtype).view(-1, 1) * w / w.norm()
    x_adv = PGD(eps, norm="l2", steps=60, rel_step_size=0.5, bounds=None)(model, x, y)
    torch.testing.assert_close(_signed_margin(model, x_adv, y), _signed_margin(model, x_opt, y), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# strength on a trained model
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps,steps", [("l2", 2.0, 30), ("linf", 0.3, 20)])
def test_targeted_reaches_targets_untargeted_breaks_model(norm, eps, steps, mlp, batch):
    x, y = batch
    t = (y + 1) % 10  # D_det targets
    attack = PGD(eps, norm=norm, steps=steps, targeted=True)
    x_adv = attack(mlp, x, t)
    assert float(attack.success(mlp, x_adv, t).float().mean()) >= 0.9
    assert float(success(mlp, x_adv, t, targeted=True).float().mean()) >= 0.9
    attack.targeted = False  # as the perturbation-learning method flips it on an instance
    clean = float((mlp(x).argmax(1) == y).float().mean())
    assert clean > 0.85
    assert robust_accuracy(mlp, attack, (x, y)) <= 0.05


def test_one_step_l2_targeted_moves_towards_target(mlp, batch):
    x, y = batch
    t = (y + 1) % 10
    attack = OneStepL2(1.0, targeted=True)
    x_adv = attack(mlp, x, t)
    with torch.no_grad():
        before = nn.functional.cross_entropy(mlp(x), t, reduction="none")
        after = nn.functional.cross_entropy(mlp(x_adv), t, reduction="none")
    assert float((after < before).float().mean()) > 0.95
    assert float(_norms(x_adv - x)[1].max()) <= 1.0 + 1e-6  # clipping to [0, 1] can shorten δ
    x_free = OneStepL2(1.0, targeted=True, bounds=None)(mlp, x, t)
    torch.testing.assert_close(_norms(x_free - x)[1], torch.ones(len(x)), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# cross-check against torchattacks (reference implementation; tests only)
# --------------------------------------------------------------------------------------------
def _torchattacks():
    return pytest.importorskip("torchattacks", reason="torchattacks not installed: pip install --no-deps torchattacks")


@pytest.mark.parametrize("targeted", [False, True])
def test_matches_torchattacks(targeted, cnn, batch4d):
    """Equal outputs for FGSM, PGD (L∞), PGDL2 and MIFGSM without random start.

    torchattacks takes the gradient of the batch-MEAN cross-entropy, ours of the per-sample sum.
    With a batch of 64 (a power of two) the two gradients differ by an exact factor 2^-6, so signs
    agree bit for bit. Remaining float differences: L∞ projection (theirs clamps x_adv − x and adds
    x back, ours clamps x_adv into the precomputed box: ≤ 1 ulp); L2 (theirs divides by ‖g‖ + 1e-10
    on the mean-scaled gradient, ours guards ‖g‖ = 0 with a zero step instead).

    That 1e-10 is NOT negligible: on a trained model the mean-reduced gradient norm of confident
    samples is 1e-10…1e-6 (it shrinks with the batch size too), so torchattacks' L2 steps get
    shorter for them (to ~78 % at ‖g‖ = 3.5e-10 here). We compare with eps_for_division=1e-30,
    which makes the two conventions agree; the observed differences are then ≤ 2e-7 with two
    threads and ≤ 1.5e-6 with one (another reduction order, accumulated over 10 L2 steps), asserted
    ≤ 4e-6: a wrong step, projection or sign would differ by ~1e-2."""
    ta = _torchattacks()
    x, y = batch4d
    labels = (y + 3) % 10 if targeted else y
    eps, alpha, steps, eps2, alpha2 = 0.1, 0.02, 10, 1.0, 0.2
    pairs = [
        (FGSM(eps, targeted=targeted), ta.FGSM(cnn, eps=eps)),
        (PGD(eps, steps=steps, step_size=alpha, random_start=False, keep_best=False, targeted=targeted),
         ta.PGD(cnn, eps=eps, alpha=alpha, steps=steps, random_start=False)),
        (PGD(eps2, norm="l2", steps=steps, step_size=alpha2, random_start=False, keep_best=False, targeted=targeted),
         ta.PGDL2(cnn, eps=eps2, alpha=alpha2, steps=steps, random_start=False, eps_for_division=1e-30)),
        (MIFGSM(eps, steps=steps, step_size=alpha, targeted=targeted),
         ta.MIFGSM(cnn, eps=eps, alpha=alpha, steps=steps, decay=1.0)),
    ]
    for ours, theirs in pairs:
        if targeted:
            theirs.set_mode_targeted_by_label(quiet=True)
        expected = theirs(x, labels)
        got = ours(cnn, x, labels)
        assert float((got - x).abs().max()) > 0  # non-trivial
        torch.testing.assert_close(got, expected, atol=4e-6, rtol=0, msg=lambda m: f"{type(ours).__name__}: {m}")
        assert not cnn.training


# --------------------------------------------------------------------------------------------
# evaluation helpers and API
# --------------------------------------------------------------------------------------------
class _HelpfulAttack(Attack):
    """Returns a point the linear model classifies as the label: robust accuracy must still count
    clean-misclassified samples as non-robust."""

    def _perturb(self, model, x, y):
        w = model.lin.weight.detach().view(1, -1)
        return x + (2 * y - 1).to(x.dtype).view(-1, 1) * 100.0 * w / w.norm()


def test_robust_accuracy_counts_clean_errors_and_accepts_loaders():
    model, x, y = _linear_problem()
    clean = (_signed_margin(model, x, y) > 0).float().mean().item()
    assert clean < 1.0
    res = evaluate_attack(model, _HelpfulAttack(eps=1.0, bounds=None), (x, y))
    assert res["robust_acc"] == res["clean_acc"] == clean and res["n"] == len(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    attack = PGD(0.1, steps=5)
    assert robust_accuracy(model, attack, loader, "cpu") == robust_accuracy(model, PGD(0.1, steps=5), (x, y), batch_size=7)
    with pytest.raises(ConfigError, match="attack.targeted"):
        robust_accuracy(model, PGD(0.1, targeted=True), (x, y))


def test_settable_attributes_and_attacks_from_their_yaml(mlp, batch):
    x, y = batch
    attack = attack_from_conf("pgd_linf", norm="L2", steps=2, rel_step_size=None)
    assert isinstance(attack, PGD) and attack.norm == "l2"
    attack.eps, attack.norm, attack.targeted = 0.05, "linf", True
    assert (attack.eps, attack.norm, attack.targeted) == (0.05, "linf", True)
    assert attack.alpha == pytest.approx(2.5 * 0.05 / 2)
    assert float((attack(mlp, x, y) - x).abs().max()) <= 0.05 + 1e-6
    assert isinstance(attack_from_conf("one_step_l2", eps=1.0), OneStepL2)
    assert PGD(0.3, rel_step_size=0.2).alpha == pytest.approx(0.06)
    assert PGD(0.3, step_size=0.01).alpha == 0.01
    assert MIFGSM(0.3, steps=10).alpha == pytest.approx(0.03)
    assert PGD("8/255", step_size="2/255").alpha == pytest.approx(2 / 255)  # YAML-friendly fractions
    assert PGD("8/255").eps == pytest.approx(8 / 255)
    for obj in (PGD(0.1), FGSM(0.1), OneStepL2(1.0), MIFGSM(0.1)):
        assert hasattr(obj, "eps") and hasattr(obj, "norm") and hasattr(obj, "targeted")
        assert obj.success(mlp, x, y).dtype == torch.bool


@pytest.mark.parametrize("kwargs,key", [
    (dict(eps=-0.1), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(eps="big"), "eps"),
    (dict(eps=0.1, norm="l1"), "norm"),
    (dict(eps=0.1, steps=0), "steps"),
    (dict(eps=0.1, steps=2.5), "steps"),
    (dict(eps=0.1, step_size=-1.0), "step_size"),
    (dict(eps=0.1, rel_step_size=0.0), "rel_step_size"),
    (dict(eps=0.1, step_size=0.1, rel_step_size=0.1), "step_size"),
    (dict(eps=0.1, restarts=0), "restarts"),
    (dict(eps=0.1, loss="hinge"), "loss"),
    (dict(eps=0.1, bounds=(1.0, 0.0)), "bounds"),
    (dict(eps=0.1, bounds=(0.0,)), "bounds"),
    (dict(eps=0.1, seed=1.5), "seed"),
    (dict(eps=0.1, targeted="yes"), "targeted"),
    (dict(eps=0.1, random_start="no"), "random_start"),
])
def test_bad_arguments_raise_config_error(kwargs, key):
    """The constructor names its bare parameter; the pre-flight names the node (`attack.steps`, `eval_attack.steps`)."""
    with pytest.raises(ConfigError, match=f"^{key}: ") as info:
        PGD(**kwargs)
    assert info.value.key == key and "\n" not in str(info.value)
    assert str(info.value.under("eval_attack", "attack")).startswith(f"eval_attack.{key}: ")


def test_bad_arguments_other_classes_and_setters():
    with pytest.raises(ConfigError, match="allowed: linf, l2"):
        FGSM(0.1, norm="l0")
    with pytest.raises(ConfigError, match="^decay: "):
        MIFGSM(0.1, decay=-1.0)
    from advlab.preflight.jobs import precheck

    with pytest.raises(ConfigError, match=r"^attack: unknown option 'deepfool'; allowed: .*pgd_linf"):
        precheck(["attack=deepfool"], "train")  # an attack by name is one of conf/attack/
    attack = PGD(0.1)
    with pytest.raises(ConfigError, match="^eps: "):
        attack.eps = -1
    with pytest.raises(ConfigError, match="^norm: "):
        attack.norm = "l3"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_and_generator(batch4d, cnn):
    x, y = (t.cuda() for t in batch4d)
    model = copy.deepcopy(cnn).cuda()
    state = torch.cuda.get_rng_state()
    a1, a2 = PGD(0.1, steps=3, seed=5), PGD(0.1, steps=3, seed=5)
    out = a1(model, x, y)
    assert out.device == x.device and torch.equal(out, a2(model, x, y))
    assert float((out - x).abs().max()) <= 0.1 + 1e-6
    assert torch.equal(torch.cuda.get_rng_state(), state)
