"""Square against the AutoAttack authors' ``SquareAttack`` (pyautoattack ``square.py``, a test-only
reference) as AutoAttack runs it: p_init 0.8, ``resc_schedule=False``, margin loss, one restart.

* What is deterministic is compared exactly: the schedule of p for every iteration, the window side
  per iteration (read off the reference's ``random_int(0, h − s)`` calls), the L2 / L1 initial
  points, and whole searches replayed from the reference's own random draws (recorded from its
  ``random_int`` / ``random_choice`` / ``eta``): same points, same broken set, same number of draws.
* What is random (advlab draws per sample from its own generator, the reference per batch from the
  global RNG) is compared statistically: robust accuracy over several seeds of each.
"""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

from advlab.attacks import Square
from advlab.attacks.square import window_fraction, window_side
from advlab.attacks.square_pulses import grid, init_pulses
from advlab.errors import ConfigError
from conftest import attack_from_conf
from test_attacks import cnn, digits  # noqa: F401  (module-scoped fixtures)

SquareAttack = pytest.importorskip("pyautoattack.square").SquareAttack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def _reference(model, norm, eps, n_queries, seed=0, rescale=False):
    return SquareAttack(model, norm=NAMES[norm], n_queries=n_queries, eps=eps, p_init=0.8, n_restarts=1, seed=seed,
                        resc_schedule=rescale, device="cpu")


class _Constant(nn.Module):
    """Logits (1, 0, …, 0) for every input: label 0 keeps margin 1, the search never stops or moves."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 10, dtype=x.dtype)
        out[:, 0] = 1.0
        return out


class _Recorder:
    """Records the reference's random draws: ``random_int`` (value, high), ``random_choice`` tensors,
    and whether each ``eta`` call transposes (its own ``torch.rand([1]) > 0.5``, peeked)."""

    def __init__(self, ref):
        self.ints, self.choices, self.flips = [], [], []
        random_int, random_choice, eta = ref.random_int, ref.random_choice, ref.eta

        def rec_int(low=0, high=1, shape=(1,)):
            t = random_int(low, high, list(shape))
            self.ints.append((int(t), int(high)))
            return t

        def rec_choice(shape):
            t = random_choice(shape)
            self.choices.append(t.clone())
            return t

        def rec_eta(s):
            state = torch.get_rng_state()
            self.flips.append(bool(torch.rand([1]) > 0.5))
            torch.set_rng_state(state)
            return eta(s)

        ref.random_int, ref.random_choice, ref.eta = rec_int, rec_choice, rec_eta


class _Replay(Square):
    """advlab's Square fed with the reference's recorded draws (one window per batch, broadcast)."""

    def __init__(self, rec, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ints = collections.deque(v for v, _ in rec.ints)
        self.choices, self.flips = collections.deque(rec.choices), collections.deque(rec.flips)

    def left(self):
        return len(self.ints) + len(self.choices) + len(self.flips)

    def _full(self, n, x):
        return torch.full((n,), self.ints.popleft(), dtype=torch.long, device=x.device)

    def _draw_stripes(self, shape, gen, x):
        return self.choices.popleft().to(x)

    def _draw_grid(self, n_blocks, n, c, gen, x):
        flips, signs = [], []
        for _ in range(n_blocks):
            flips.append(self.flips.popleft())
            signs.append(self.choices.popleft().view(n, c))
        return torch.tensor(flips).view(-1, 1).expand(n_blocks, n), torch.stack(signs).to(x)

    def _draw_linf(self, n, c, h, w, size, gen, x):
        vh, vw = self._full(n, x), self._full(n, x)
        return vh, vw, (self.choices.popleft().view(1, c) < 0).expand(n, c)

    def _draw_pulse_move(self, n, c, h, w, size, gen, x):
        first = (self._full(n, x), self._full(n, x))
        second = (self._full(n, x), self._full(n, x))
        flips = torch.full((n,), self.flips.popleft())
        return first, second, flips, self.choices.popleft().view(n, c).to(x)


def _images(shape, n=4, seed=0):
    return torch.rand((n,) + shape, generator=torch.Generator().manual_seed(seed))


def _lp(delta, norm):
    flat = delta.flatten(1)
    return {"linf": flat.abs().amax(1), "l2": flat.norm(dim=1), "l1": flat.abs().sum(1)}[norm]


# --------------------------------------------------------------------------------------------
# schedule and window sides
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_queries", [5000, 1000])
@pytest.mark.parametrize("rescale", [False, True])
def test_schedule_equals_p_selection(n_queries, rescale):
    ref = _reference(None, "linf", 0.1, n_queries, rescale=rescale)
    for p_init in (0.8, 0.05):
        ref.p_init = p_init
        ours = [window_fraction(p_init, it, n_queries, rescale) for it in range(n_queries)]
        assert ours == [ref.p_selection(it) for it in range(n_queries)]


def test_rescale_option_config_and_norms():
    assert Square(0.1).rescale_schedule is False  # AutoAttack's setting is the default, also from the YAML
    assert attack_from_conf("square").rescale_schedule is False
    assert attack_from_conf("square", rescale_schedule=True, norm="l1").rescale_schedule is True
    with pytest.raises(ConfigError, match=r"^rescale_schedule: "):
        Square(0.1, rescale_schedule="yes")
    with pytest.raises(ConfigError, match=r"^norm: .*linf, l2, l1"):
        Square(0.1, norm="l0")


def _reference_sides(norm, shape, n_queries, rescale):
    """The reference's window side per iteration, read off its corner draws ``random_int(0, h − s)``."""
    ref = _reference(_Constant(), norm, 0.1, n_queries, rescale=rescale)
    x = _images(shape, n=2)
    ref.init_hyperparam(x)
    rec = _Recorder(ref)
    torch.manual_seed(0)
    ref.attack_single_run(x, torch.zeros(2, dtype=torch.long))
    per_iter = 2 if norm == "linf" else 4  # L∞: one window; L2 / L1: two
    assert len(rec.ints) == per_iter * n_queries  # one iteration per query, it = 0 … n_queries − 1
    return [shape[1] - high for _, high in rec.ints[::per_iter]]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["28x28x1", "32x32x3"])
def test_linf_window_side_per_iteration(shape):
    c, h, w = shape
    sides = [window_side(window_fraction(0.8, it, 5000), c, h, w, odd=False) for it in range(5000)]
    assert sides == [(s, s) for s in _reference_sides("linf", shape, 5000, rescale=False)]
    # the last 2,000 of AutoAttack's 5,000 queries: 4×4 then 3×3 windows on 32×32 (rescaled: 2×2, 1×1)
    late = {28: (3, 2), 32: (4, 3)}[h]
    assert {s for s, _ in sides[3000:4001]} == {late[0]} and {s for s, _ in sides[4001:]} == {late[1]}
    old = [window_side(window_fraction(0.8, it, 5000, True), c, h, w, odd=False)[0] for it in range(3001, 5000)]
    assert set(old[:1000]) == {2} and set(old[1000:]) == {1}


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["28x28x1", "32x32x3"])
def test_pulse_window_side_for_every_p(norm, shape):
    """The reference's L2 / L1 iterations are slow (~2 ms): the rescaled schedule over 200 queries
    visits every p of the schedule; the side is a function of p (and p per iteration is the test
    above)."""
    c, h, w = shape
    sides = [window_side(window_fraction(0.8, it, 200, True), c, h, w, odd=True) for it in range(200)]
    assert sides == [(s, s) for s in _reference_sides(norm, shape, 200, rescale=True)]
    assert len({s for s, _ in sides}) >= 6 and all(s % 2 == 1 or s == min(h, w) for s, _ in sides)


@pytest.mark.slow  # ~30 s each: 5,000 reference iterations
@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["28x28x1", "32x32x3"])
def test_pulse_window_side_per_iteration(norm, shape):
    c, h, w = shape
    sides = [window_side(window_fraction(0.8, it, 5000), c, h, w, odd=True) for it in range(5000)]
    assert sides == [(s, s) for s in _reference_sides(norm, shape, 5000, rescale=False)]


# --------------------------------------------------------------------------------------------
# initial points
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("l2", 1.5), ("l1", 12.0)])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["28x28x1", "32x32x3"])
def test_pulse_init_equals_reference(norm, eps, shape):
    n, (c, h, w) = 4, shape
    x = _images(shape, n=n)
    ref = _reference(_Constant(), norm, eps, 0)  # no iteration: attack_single_run returns its start
    ref.init_hyperparam(x)
    rec = _Recorder(ref)
    torch.manual_seed(3)
    _, start = ref.attack_single_run(x, torch.zeros(n, dtype=torch.long))
    (s, _), corners = grid(h, w)
    assert s == h // 5 and len(rec.flips) == len(rec.choices) == len(corners) == 25
    flips = torch.tensor(rec.flips).view(-1, 1).expand(-1, n)
    signs = torch.stack(rec.choices).view(-1, n, c)
    ours = init_pulses(x, eps, norm, (0.0, 1.0), flips, signs)
    torch.testing.assert_close(ours, start, rtol=0, atol=1e-6)
    assert float(_lp(ours - x, norm).max()) <= eps + 1e-6 and 0 <= float(ours.min()) and float(ours.max()) <= 1
    free = init_pulses(x, eps, norm, None, flips, signs) - x  # no box: the whole budget is used
    torch.testing.assert_close(_lp(free, norm), torch.full((n,), eps * (1 - 1e-6 if norm == "l1" else 1)))
    # structure: 5 × 5 blocks from the reference's first corner, nothing outside them; L2: every block
    # of every channel a pulse of the same norm ε / sqrt(25 c); L1: signs kept or zeroed by the projection
    a = (h - 5 * s) // 2
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[a:a + 5 * s, a:a + 5 * s] = True
    assert not bool(free[..., ~inside].any())
    blocks = free[..., a:a + 5 * s, a:a + 5 * s].reshape(n, c, 5, s, 5, s).transpose(3, 4).flatten(4)
    if norm == "l2":
        torch.testing.assert_close(blocks.norm(dim=4), torch.full((n, c, 5, 5), eps / (25 * c) ** 0.5))
    else:
        raw = init_pulses(x, 1e9, norm, None, flips, signs) - x  # a radius the grid is inside: δ unprojected
        kept = free.abs() > 1e-6  # the others are cut to 0 (up to the rounding of (x + δ + r) − x)
        assert bool((free.sign() == raw.sign())[kept].all()) and float(raw.abs().flatten(1).sum(1).min()) > eps
        assert 0 < int(kept.sum()) < int((raw != 0).sum())  # the projection shrinks, some coordinates to 0


# --------------------------------------------------------------------------------------------
# whole searches replayed from the reference's draws
# --------------------------------------------------------------------------------------------
class _RandomCNN(nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                                     nn.Linear(8 * 64, 10))

    def forward(self, x):
        return self.net(x)


class _RowByRow(nn.Module):
    """The model one row at a time. oneDNN's convolutions on AVX512 / AMX CPUs give a row logits that
    differ in the last bits with the batch around it (1e-5 on a Xeon with AMX), and advlab evaluates
    only the proposals it cannot skip, the reference every point: one row at a time, both see the same
    logits for the same image, so the comparison tests the search, not the kernels."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.cat([self.model(row[None]) for row in x])


def _problem(name, cnn, digits):  # noqa: F811
    if name == "digits":
        _, _, xte, yte = digits
        return _RowByRow(cnn), xte[:48].view(-1, 1, 8, 8), yte[:48]
    model = _RowByRow(_RandomCNN().eval())
    x = _images((3, 16, 16), n=32, seed=1)
    with torch.no_grad():
        return model, x, model(x).argmax(1)


REPLAY = {"linf": {"digits": 0.1, "rgb16": 0.03}, "l2": {"digits": 0.8, "rgb16": 0.5}, "l1": {"digits": 2.0, "rgb16": 4.0}}
CASES = [(norm, data, False) for norm in REPLAY for data in ("digits", "rgb16")] + [("linf", "digits", True), ("l1", "rgb16", True)]


@pytest.mark.parametrize("norm,data,rescale", CASES)
def test_search_replayed_from_reference_draws(norm, data, rescale, cnn, digits):  # noqa: F811
    """The whole search (start, 200–600 proposals through four or five stages of the schedule, all
    ten when rescaled; acceptance, stops, the points returned) is the reference's bit for bit when it gets the reference's draws; for
    L∞ this includes advlab's skipping of proposals known to be rejected."""
    model, x, y = _problem(data, cnn, digits)
    eps, n_queries = REPLAY[norm][data], {"linf": 600, "l2": 300, "l1": 200}[norm]  # L1: its projection is slow
    ref = _reference(model, norm, eps, n_queries, seed=7, rescale=rescale)
    rec = _Recorder(ref)
    theirs = ref.perturb(x, y)
    ours_attack = _Replay(rec, eps, norm=norm, n_queries=n_queries, rescale_schedule=rescale)
    ours = ours_attack(model, x, y)
    assert ours_attack.left() == 0  # the same number of iterations and draws
    assert torch.equal(ours, theirs.clamp(0, 1) if norm == "l1" else theirs)  # L1: advlab returns points in the box
    with torch.no_grad():
        broken, clean_wrong = model(ours).argmax(1) != y, model(x).argmax(1) != y
    assert 0 < int((broken & ~clean_wrong).sum()) < int((~clean_wrong).sum())  # some broken, some not
    assert float(_lp(ours - x, norm).max()) <= eps + 1e-6 and 0 <= float(ours.min()) and float(ours.max()) <= 1


# --------------------------------------------------------------------------------------------
# invariants of advlab's own (per-sample) draws
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.7), ("l1", 4.0)])
def test_eps_ball_box_and_unbroken_points_unchanged(norm, eps):
    model = _RandomCNN().eval()
    x = _images((3, 16, 16), n=32, seed=2)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # misclassified points: not attacked, returned as they are
    x_adv = Square(eps, norm=norm, n_queries=200, seed=1)(model, x, y)
    assert float(_lp(x_adv - x, norm).max()) <= eps + 1e-6
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    with torch.no_grad():
        broken = model(x_adv).argmax(1) != y
    moved = (x_adv != x).flatten(1).any(1)
    assert torch.equal(moved[4:], broken[4:]) and not bool(moved[:4].any())
    assert 0 < int(broken[4:].sum()) < 28


# --------------------------------------------------------------------------------------------
# robust accuracy, advlab's draws vs the reference's, on the same points
# --------------------------------------------------------------------------------------------
def _robust_flags(model, x, y, norm, eps, n_queries, seeds):
    """(advlab, reference): per seed, per point, robust after the attack (k, m) float."""
    ours, theirs = [], []
    with torch.no_grad():
        for seed in seeds:
            a = Square(eps, norm=norm, n_queries=n_queries, seed=seed)(model, x, y)
            ours.append((model(a).argmax(1) == y).float())
            b = _reference(model, norm, eps, n_queries, seed=seed).perturb(x, y)
            theirs.append((model(b).argmax(1) == y).float())
    return torch.stack(ours), torch.stack(theirs)


def assert_same_robust_accuracy(ours, theirs):
    """Under "same attack", each point survives with the same probability q_i in both; per run the
    robust accuracy has variance Σ q_i(1 − q_i) / m² (advlab's samples are independent; measured
    seed-to-seed spreads of the reference's match it). The difference of the means of k runs each
    then has SE = sqrt(2 Σ q_i(1 − q_i) / (k m²)), q_i estimated from all 2k runs: 4 SE (plus half a
    point for the discreteness) is a 1-in-10⁴ false alarm, while the old rescaled schedule moved L∞
    robust accuracy on these points by 0.10 (≈ 10 SE at k = 4; measured: 0.54 vs 0.65)."""
    k, m = ours.shape
    q = torch.cat((ours, theirs)).mean(0)
    se = float((2 * (q * (1 - q)).sum() / (k * m * m)).sqrt())
    diff = float(ours.mean() - theirs.mean())
    assert abs(diff) <= 4 * se + 0.5 / m, (float(ours.mean()), float(theirs.mean()), se)
    return diff, se


@pytest.mark.parametrize("norm,eps,m,n_queries", [("linf", 0.1, 200, 500), ("l2", 0.6, 150, 400), ("l1", 1.5, 120, 300)])
def test_robust_accuracy_matches_reference(norm, eps, m, n_queries, cnn, digits):  # noqa: F811
    """Digits CNN, 120–200 test points, 4 seeds of each: robust accuracy mid-range (0.55–0.7)."""
    _, _, xte, yte = digits
    x, y = xte[:m].view(-1, 1, 8, 8), yte[:m]
    ours, theirs = _robust_flags(cnn, x, y, norm, eps, n_queries, range(4))
    assert 0.3 < float(theirs.mean()) < 0.8  # mid-range: the comparison can see a difference
    assert_same_robust_accuracy(ours, theirs)


@pytest.mark.slow  # ~6 min on 2 cores: AutoAttack's 5,000 queries
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.6), ("l1", 1.5)])
def test_robust_accuracy_matches_reference_at_5000_queries(norm, eps, cnn, digits):  # noqa: F811
    _, _, xte, yte = digits
    x, y = xte[:200].view(-1, 1, 8, 8), yte[:200]
    ours, theirs = _robust_flags(cnn, x, y, norm, eps, 5000, range(4))
    diff, se = assert_same_robust_accuracy(ours, theirs)
    print(f"square {norm} eps={eps}: advlab {float(ours.mean()):.4f} reference {float(theirs.mean()):.4f} "
          f"(diff {diff:+.4f}, SE {se:.4f})")
