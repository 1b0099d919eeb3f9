"""PGD's early stopping (``stop_on_success``): a point leaves the batch once an iterate breaks it.

Evaluations (``evaluate_attack``, robustness curves, ``test/adv_acc``) turn it on for attacks that keep
their best iterate: the per-sample robust flags must be the same as without it, at fewer model
evaluations (counted by a wrapper module, in rows forwarded). Crafting keeps it off by default: its
output is checked against a brute force over the iterates, which is independent of the stopping code.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from advlab.analysis.robustness import robustness_curves
from advlab.analysis.attack_transfer import craft_adversarial
from advlab.artifacts.keys import describe_object
from advlab.attacks import FGSM, MIFGSM, PGD, APGD, evaluate_attack, robust_curve_per_sample
from advlab.attacks.base import as_logits, per_sample_loss
from advlab.attacks.pgd import early_stopping
from advlab.derived.perturbation import craft_dataset
from advlab.errors import ConfigError
from conftest import attack_from_conf, trained_on_digits


class Counting(nn.Module):
    """Forwards to ``model``, counting calls and rows (the samples the model evaluates)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls, self.rows = model, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)


@pytest.fixture(scope="module")
def mlp(digits_mlp, one_torch_thread):
    return digits_mlp


@pytest.fixture(scope="module")
def cnn(digits_mlp, one_torch_thread):
    """A small CNN (convolutions: per-sample results must not depend on the batch either)."""
    model = trained_on_digits(lambda: nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2),
                                                    nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)), 800, 40)
    _, xt, yt = digits_mlp
    assert (model(xt).argmax(1) == yt).float().mean() > 0.8
    return model, xt, yt


CASES = {
    "linf": dict(eps=0.1, norm="linf", steps=10),
    "linf_no_random_start": dict(eps=0.1, norm="linf", steps=10, random_start=False, step_size=0.025),
    "l2": dict(eps=1.0, norm="l2", steps=10, random_start=False, rel_step_size=0.2),
    "l2_random_start": dict(eps=1.0, norm="l2", steps=8),
    "linf_restarts": dict(eps=0.08, norm="linf", steps=5, restarts=3),
    "l2_restarts_margin": dict(eps=0.8, norm="l2", steps=5, restarts=2, loss="margin"),
}


def _success(model, x_adv, y, targeted):
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    return pred == y if targeted else pred != y


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_same_success_fewer_rows(case, targeted, net, request):
    """On vs off: the same per-sample success (targeted: the target reached), the same point for every
    sample never broken, a valid point (ε-ball, bounds) for the others, and fewer rows forwarded."""
    model, x, y = request.getfixturevalue(net)
    y = (y + 1) % 10 if targeted else y
    kw = dict(CASES[case], targeted=targeted)
    counted = Counting(model)
    off = PGD(**kw)(counted, x, y)
    rows_off, calls_off = counted.rows, counted.calls
    counted.rows = counted.calls = 0
    on = PGD(**kw, stop_on_success=True)(counted, x, y)
    s_off, s_on = _success(model, off, y, targeted), _success(model, on, y, targeted)
    assert torch.equal(s_off, s_on)
    assert 0 < int(s_on.sum()) < len(y)  # some broken, some not: both paths are exercised
    # unbroken: the same trajectories, the same best point (up to rounding: a smaller batch may take
    # another GEMM path, e.g. a single row)
    assert torch.allclose(on[~s_on], off[~s_on], rtol=0, atol=1e-6)
    delta = (on - x).flatten(1)
    size = delta.abs().amax(1) if kw["norm"] == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= kw["eps"] * (1 + 1e-5) and float(on.min()) >= 0 and float(on.max()) <= 1
    restarts = kw.get("restarts", 1)
    assert calls_off == restarts * (kw["steps"] + 1)  # steps gradient forwards + the final scoring one
    assert counted.calls <= calls_off and counted.rows < rows_off
    if not targeted:  # most points break within a few steps
        assert counted.rows < 0.8 * rows_off, (counted.rows, rows_off)


def test_first_successful_iterate_and_crafting_unchanged(mlp):
    """Brute force over the iterates (iterate k = PGD(steps=k, keep_best=False), no random start):
    off (the default: crafting) = the best iterate by (success, loss); on = the FIRST successful
    iterate where one exists, else the best. craft_dataset with the conf's pgd_l2 gives the former."""
    model, x, y = mlp
    t = (y + 1) % 10
    steps, eps = 6, 1.5
    kw = dict(eps=eps, norm="l2", rel_step_size=0.2, random_start=False, targeted=True)  # as conf/attack/pgd_l2
    iterates = [x] + [PGD(steps=k, keep_best=False, **kw)(model, x, t) for k in range(1, steps + 1)]
    scores = []
    for it in iterates:
        with torch.no_grad():
            logits, tt = as_logits(model(it), t)
        scores.append((logits.argmax(1) == tt, -per_sample_loss("ce", logits, tt)))
    best, first = iterates[0].clone(), iterates[0].clone()
    best_s, best_l = scores[0]
    found = best_s.clone()
    for it, (s, lo) in zip(iterates[1:], scores[1:]):
        better = (s & ~best_s) | ((s == best_s) & (lo > best_l))
        best[better], best_s, best_l = it[better], best_s | s, torch.where(better, lo, best_l)
        new = s & ~found
        first[new], found = it[new], found | s
    first[~found] = best[~found]
    attack = attack_from_conf("pgd_l2", eps=eps, steps=steps)  # the crafting attack (keep_best, no random start)
    assert attack.stop_on_success is False and "stop_on_success" not in describe_object(attack)
    # one batch, as the brute force: the same computations, bit for bit
    crafted = craft_dataset(model, attack, x, y, 10, target_rule="det", batch_size=len(x), progress=False)
    assert torch.equal(crafted["x"], best)
    stopped = craft_dataset(model, attack_from_conf("pgd_l2", eps=eps, steps=steps, stop_on_success=True), x, y, 10,
                            target_rule="det", batch_size=64, progress=False)
    assert torch.allclose(stopped["x"], first, rtol=0, atol=1e-6)  # rounding: batches shrink as points leave
    assert not torch.equal(first, best)  # the option changes the crafted points here, not their success
    assert stopped["success_rate"] == crafted["success_rate"] > 0.3


def test_evaluation_curves_and_counts(mlp):
    """evaluate_attack and robust_curve_per_sample stop early by default: the same numbers and masks
    as stop_early=False, fewer rows; attacks that do not keep their best iterate are left as they are."""
    model, x, y = mlp
    counted = Counting(model)
    attack = PGD(eps=0.1, steps=10)
    numbers = []
    for stop in (False, True):
        counted.rows = 0
        numbers.append((evaluate_attack(counted, attack, (x, y), batch_size=64, stop_early=stop), counted.rows))
        attack.reset_rng()
    (off, rows_off), (on, rows_on) = numbers
    assert off == on and 0.05 < on["robust_acc"] < on["clean_acc"] and rows_on < 0.7 * rows_off
    assert attack.stop_on_success is False  # restored
    grid = [0.0, 0.03, 0.06, 0.1]
    masks = []
    for stop in (False, True):
        counted.rows = 0
        masks.append((robust_curve_per_sample(counted, PGD(eps=0.1, norm="linf", steps=8), (x, y), grid, batch_size=64,
                                              stop_early=stop), counted.rows))
    assert torch.equal(masks[0][0], masks[1][0]) and masks[1][1] < masks[0][1]
    curves = [robustness_curves(model, {"pgd": PGD(eps=0.1, steps=6), "pgd_l2": PGD(eps=1.0, norm="l2", steps=6)},
                                {"linf": grid, "l2": [0.0, 0.5, 1.0]}, x, y, progress=False, stop_early=stop)
              for stop in (False, True)]
    for name in ("pgd", "pgd_l2"):
        assert torch.equal(curves[0][name]["robust"], curves[1][name]["robust"])
        assert curves[1][name]["robust"][-1].float().mean() < curves[1][name]["robust"][0].float().mean()


@pytest.mark.parametrize("attack", [MIFGSM(0.1), FGSM(0.1), PGD(0.1, keep_best=False), APGD(0.1, steps=5)])
def test_early_stopping_leaves_others_alone(attack, mlp):
    """Last-iterate PGD (stopping would make it stronger, not the same) and APGD stay as they are."""
    model, x, y = mlp
    with early_stopping(attack):
        assert getattr(attack, "stop_on_success", False) is False
    counted = Counting(model)
    evaluate_attack(counted, attack, (x[:32], y[:32]))
    assert getattr(attack, "stop_on_success", False) is False


def test_early_stopping_restores_after_an_error():
    attack = PGD(0.1)
    with pytest.raises(RuntimeError), early_stopping(attack):
        assert attack.stop_on_success is True and "stop_on_success" in describe_object(attack)
        raise RuntimeError("boom")
    assert attack.stop_on_success is False and "stop_on_success" not in describe_object(attack)


def test_last_iterate_with_stopping_is_at_least_as_strong(mlp):
    """keep_best=False with stop_on_success (opt-in): every point broken without stopping stays broken."""
    model, x, y = mlp
    for attack_cls in (MIFGSM, PGD):
        off = attack_cls(0.1, keep_best=False)(model, x, y)
        on = attack_cls(0.1, keep_best=False, stop_on_success=True)(model, x, y)
        s_off, s_on = _success(model, off, y, False), _success(model, on, y, False)
        assert bool((s_on | ~s_off).all()) and int(s_on.sum()) >= int(s_off.sum())


def test_test_step_stops_early(mlp):
    """test/adv_acc: the evaluation attack runs with stop_on_success on, and it is restored after."""
    from advlab.methods import StandardTraining

    model, x, y = mlp
    seen = []

    class Spy(PGD):
        def _perturb(self, model, x, y):
            seen.append(self.stop_on_success)
            return super()._perturb(model, x, y)

    spy = Spy(eps=0.1, steps=5)
    net = Counting(model)
    net.num_classes = 10
    module = StandardTraining(net, {"_target_": "torch.optim.SGD", "lr": 0.1}, eval_attack=spy)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # self.log outside a Trainer
        module.test_step((x[:64], y[:64]), 0)
    assert seen == [True] and spy.stop_on_success is False
    robust = float(module.test_adv_acc.compute())
    reference = evaluate_attack(model, Spy(eps=0.1, steps=5), (x[:64], y[:64]), stop_early=False)["robust_acc"]
    assert robust == pytest.approx(reference)


def test_transfer_crafting_does_not_stop(mlp):
    """The transfer set is the returned points themselves: crafted as configured (off by default)."""
    model, x, y = mlp
    attack = PGD(eps=0.1, steps=5)
    got = craft_adversarial(model, attack, x[:64], y[:64], batch_size=32, device="cpu", progress=False)
    attack.reset_rng()
    expected = torch.cat([attack(model, x[i:i + 32], y[i:i + 32]) for i in (0, 32)])
    assert torch.equal(got, expected)
    stopped = craft_adversarial(model, PGD(eps=0.1, steps=5, stop_on_success=True), x[:64], y[:64], batch_size=32,
                                device="cpu", progress=False)
    assert not torch.equal(stopped, got)


def test_option_from_config_and_bad_values():
    for name in ("pgd_linf", "pgd_l2", "fgsm", "fgsm_l2", "mifgsm"):
        assert attack_from_conf(name).stop_on_success is False
        assert attack_from_conf(name, stop_on_success=True).stop_on_success is True
    with pytest.raises(ConfigError, match="^stop_on_success: "):
        PGD(0.1, stop_on_success="yes")
