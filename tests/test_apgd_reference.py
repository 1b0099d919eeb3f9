"""APGD and APGD-T against the AutoAttack authors' code (pyautoattack 0.2.0, test-only reference):
point by point from the same start, for L∞, L2 and L1, the CE and DLR losses, and the L1 3ε/2ε/ε schedule;
plus the reproduction of the checkpoint defect (a point retired at a checkpoint that is not adversarial)."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from advlab.attacks import APGD, APGDT
from advlab.attacks.apgd import _Goal, _loss_goal
from advlab.attacks.l1_ball import l1_box_correction
from advlab.errors import ConfigError

EPS = {"linf": 0.03, "l2": 0.3, "l1": 3.0}
REF_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def _reference():
    return pytest.importorskip("pyautoattack.autopgd_base", reason="pyautoattack not installed: pip install --no-deps pyautoattack")


def _cnn(seed: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, classes)).eval()


@pytest.fixture(scope="module")
def setup():
    model = _cnn(0)
    torch.manual_seed(1)
    x = torch.rand(48, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10  # a few points misclassified from the start
    return model, x, y


def _goal(loss, y):
    return _Goal(partial(_loss_goal, loss, False), y)


def _start(x, norm, eps, seed=3):
    g = torch.Generator().manual_seed(seed)
    if norm == "linf":
        t = torch.rand(x.shape, generator=g) * 2 - 1
        return (x + eps * t / t.abs().flatten(1).amax(1).view(-1, 1, 1, 1)).clamp(0, 1)
    t = torch.randn(x.shape, generator=g)
    if norm == "l2":
        return (x + eps * t / t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    return (x + t + l1_box_correction(x, t, eps)).clamp(0, 1)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_apgd_run_equals_the_reference_point_by_point(norm, loss, setup):
    """One run from the same start: the same samples broken, the same best points and losses for the rest."""
    ref_mod = _reference()
    model, x, y = setup
    eps, steps = EPS[norm], 30
    x0 = _start(x, norm, eps)
    ref = ref_mod.APGDAttack(model, n_iter=steps, norm=REF_NORM[norm], eps=eps, loss=loss, device="cpu", seed=0)
    ref.init_hyperparam(x)
    r_best, r_acc, r_loss, r_adv = ref.attack_single_run(x, y, x_init=x0.clone())
    ours = APGD(eps, norm=norm, steps=steps, loss=loss)
    with torch.enable_grad():
        adv, hit, our_loss = ours.run_once(model, x, _goal(loss, y), start=x0.clone())
    assert torch.equal(hit, ~r_acc), f"broken sets differ: {int(hit.sum())} vs {int((~r_acc).sum())}"
    assert 0 < int(hit.sum()) < x.shape[0]  # the comparison is informative: some broken, some not
    kept = ~hit
    torch.testing.assert_close(adv[kept], r_best[kept], atol=1e-6, rtol=0)
    torch.testing.assert_close(our_loss[kept], r_loss[kept], atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # broken: ours is the first adversarial iterate, theirs the last; both adversarial
        assert bool((model(adv[hit]).argmax(1) != y[hit]).all()) and bool((model(r_adv[hit]).argmax(1) != y[hit]).all())


def test_apgd_l1_large_eps_schedule_equals_the_reference(setup):
    """AutoAttack's L1 APGD (use_largereps: 3ε, 2ε, ε over 30/30/40 % of the steps) from the same noise."""
    ref_mod = _reference()
    model, x, y = setup
    eps, steps = EPS["l1"], 30
    torch.manual_seed(5)
    noise = torch.randn_like(x)
    ref = ref_mod.APGDAttack(model, n_iter=steps, norm="L1", eps=eps, loss="ce", device="cpu", seed=0, use_largereps=True)
    ref.init_hyperparam(x)
    torch.manual_seed(5)
    epss, iters = [3 * eps, 2 * eps, eps], [9, 9, 12]
    r_best, r_acc, r_loss, _ = ref.decr_eps_pgd(x, y, epss, iters)
    ours = APGD(eps, norm="l1", steps=steps, loss="ce", large_eps=True)
    with torch.enable_grad():
        adv, hit, our_loss = ours.run_once(model, x, _goal("ce", y), start=noise)
    assert torch.equal(hit, ~r_acc) and 0 < int(hit.sum()) < x.shape[0]
    torch.testing.assert_close(adv[~hit], r_best[~hit], atol=1e-6, rtol=0)
    delta = (adv - x).flatten(1)
    assert float(delta.abs().sum(1).max()) <= eps + 1e-4 and float(adv.min()) >= 0 and float(adv.max()) <= 1


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_apgd_perturb_with_random_start_equals_the_reference(norm, setup):
    """The whole attack, random start included: the attack's generator seeded as the reference seeds the
    global RNG draws the same start, so even the random version agrees sample by sample."""
    ref_mod = _reference()
    model, x, y = setup
    eps = EPS[norm]
    ref = ref_mod.APGDAttack(model, n_iter=25, norm=REF_NORM[norm], eps=eps, loss="ce", device="cpu", seed=7)
    r_adv = ref.perturb(x, y)
    adv = APGD(eps, norm=norm, steps=25, loss="ce", seed=7)(model, x, y)
    with torch.no_grad():
        ours, theirs = model(adv).argmax(1) != y, model(r_adv).argmax(1) != y
    assert torch.equal(ours, theirs) and 4 < int(ours.sum()) < x.shape[0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_t_equals_the_reference(norm, setup):
    """APGD-T (9 targets, 1 restart) with the same seed: the same robust set."""
    ref_mod = _reference()
    model, x, y = setup
    eps = EPS[norm] / 2
    ref = ref_mod.APGDAttack_targeted(model, n_iter=20, norm=REF_NORM[norm], eps=eps, device="cpu", seed=2, n_target_classes=9)
    r_adv = ref.perturb(x, y)
    adv = APGDT(eps, norm=norm, steps=20, n_target_classes=9, seed=2)(model, x, y)
    with torch.no_grad():
        ours, theirs = model(adv).argmax(1) != y, model(r_adv).argmax(1) != y
    assert torch.equal(ours, theirs) and 4 < int(ours.sum()) < x.shape[0]


def test_apgd_t_on_three_classes_uses_two_targets():
    """Fewer classes than targets: C − 1 targets, every point still attacked, results in the ball."""
    model = _cnn(4, classes=3)
    torch.manual_seed(2)
    x = torch.rand(32, 3, 8, 8)
    y = model(x).argmax(1).detach()
    adv = APGDT(0.05, steps=15, n_target_classes=9)(model, x, y)
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6
    with torch.no_grad():
        assert int((model(adv).argmax(1) != y).sum()) > 0


def test_checkpoint_retires_the_misclassifying_iterate():
    """Reproduction of the defect: a sample first misclassified at a checkpoint iteration whose step was
    halved there had its iterate replaced by its best-loss point before it was retired, so it was
    counted broken while the returned point was classified correctly (this seed: 1 of 400 points)."""
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.rand(400, 20)
    y = model(x).argmax(1).detach()
    with torch.enable_grad():
        adv, hit, _ = APGD(0.05, steps=20, loss="ce", random_start=False).run_once(model, x, _goal("ce", y))
    with torch.no_grad():
        misclassified = model(adv).argmax(1) != y
    assert int(hit.sum()) > 50
    assert torch.equal(hit, misclassified)


def test_l1_projection_lands_in_the_ball_and_the_box_and_is_the_closest():
    torch.manual_seed(0)
    x = torch.rand(64, 30)
    for scale in (0.1, 1.0, 5.0):
        d = torch.randn(64, 30) * scale
        p = d + l1_box_correction(x, d, 2.0)
        assert float(p.abs().sum(1).max()) <= 2.0 + 1e-4
        assert float((x + p).min()) >= -1e-6 and float((x + p).max()) <= 1 + 1e-6
        # closest: no random feasible point in the intersection is nearer to d
        q = torch.rand(64, 30) - x
        q = q * torch.clamp(2.0 / q.abs().sum(1, keepdim=True), max=1.0)
        assert bool(((p - d).norm(dim=1) <= (q - d).norm(dim=1) + 1e-5).all())


def test_large_eps_is_for_l1_only():
    with pytest.raises(ConfigError, match=r"^large_eps: .*allowed: false"):
        APGD(0.1, norm="linf", large_eps=True)
    with pytest.raises(ConfigError, match=r"^norm: .*allowed: linf, l2, l1"):
        APGD(0.1, norm="l0")


@pytest.mark.parametrize("norm", ["linf", pytest.param("l2", marks=pytest.mark.slow)])
def test_standard_autoattack_equals_the_reference(norm, setup):
    """The full standard version (100 iterations, 9 targets, 5,000 Square queries), one batch, seed 0: the
    reference's robust accuracy and its per-member counts (APGD-CE, APGD-T and FAB-T draw the same starts;
    Square's draws differ, so after it the two may differ by chance on the few points left)."""
    pytest.importorskip("pyautoattack", reason="pyautoattack not installed: pip install --no-deps pyautoattack")
    import logging

    from pyautoattack import AutoAttack as Reference

    from advlab.attacks import AutoAttack

    model, x, y = setup
    eps = EPS[norm] / 2
    ref = Reference(model, eps=eps, norm=REF_NORM[norm], version="standard", seed=0)
    ref.logger.setLevel(logging.WARNING)
    r_adv, _ = ref.run_standard_evaluation(x, y, batch_size=len(y))
    ours = AutoAttack(eps, norm=norm, seed=0)
    adv = ours(model, x, y)
    with torch.no_grad():
        o_rob, r_rob = model(adv).argmax(1) == y, model(r_adv).argmax(1) == y
    after = {m["attack"]: m["robust_after"] for m in ours.last_run}
    assert 4 < int(r_rob.sum()) < int((model(x).argmax(1) == y).sum())  # informative: some points robust, some broken
    assert abs(int(o_rob.sum()) - int(r_rob.sum())) <= 1 and after["fab-t"] >= int(o_rob.sum())
    # before Square, the same points survive: robust after FAB-T equals the reference's robust set or exceeds it by
    # exactly the points Square broke there
    assert after["fab-t"] - after["square"] <= 2
