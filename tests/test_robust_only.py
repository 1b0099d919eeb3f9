"""Robust-only evaluation: attacking only the points still robust (across ε, losses and attacks of a
norm, and the clean-correct points in `test/adv_acc`) gives, per sample, the same robustness as
attacking every point, with fewer attacked points. Deterministic attacks (no random start), so the
per-sample results can be compared exactly."""
from __future__ import annotations

import pytest
import torch
from test_attacks import batch, digits, mlp  # noqa: F401  (module-scoped fixtures)
from test_methods import _trained_digits_mlp, _trainer

from advlab.analysis.robustness import robustness_curves
from advlab.attacks import FGSM, PGD, robust_accuracy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRIDS = {"linf": [0.0, 0.02, 0.05, 0.1, 0.2], "l2": [0.0, 0.25, 0.5, 1.0, 2.0]}


def _counting(cls):
    """`cls` that records how many points each call attacks (in a list shared by its copies)."""
    class Counting(cls):
        def __call__(self, model, x, y):
            self.calls.append(len(x))
            return super().__call__(model, x, y)
    return Counting


def _attacks():
    attacks = {"fgsm_linf": _counting(FGSM)(0.1), "pgd_linf": _counting(PGD)(0.1, steps=5, random_start=False),
               "fgsm_l2": _counting(FGSM)(1.0, norm="l2"), "pgd_l2": _counting(PGD)(1.0, norm="l2", steps=5, random_start=False)}
    for attack in attacks.values():
        attack.calls = []
    return attacks


def _curves(mlp, x, y, **kwargs):
    attacks = _attacks()
    curves = robustness_curves(mlp, attacks, GRIDS, x, y, progress=False, batch_size=50, **kwargs)
    for name, c in curves.items():  # the reported counts are the points the attack really received
        assert c["attacked"] == sum(attacks[name].calls), name
    return curves


@pytest.mark.parametrize("cumulative", [True, False])
def test_robust_only_curves_equal_attacking_all_per_sample(cumulative, mlp, batch):
    x, y = batch
    every = _curves(mlp, x, y, cumulative=cumulative, robust_only=False)
    diag = _curves(mlp, x, y, cumulative=cumulative, diagnostics=True)
    only = _curves(mlp, x, y, cumulative=cumulative)
    for name, ref in every.items():
        assert torch.equal(only[name]["robust"], ref["robust"]), name
        assert torch.equal(diag[name]["robust"], ref["robust"]), name
        for loss in ("ce", "margin"):  # the diagnostics are exact ...
            assert torch.equal(diag[name]["by_loss"][loss], ref["by_loss"][loss]), (name, loss)
        assert torch.equal(diag[name]["alone"], ref["alone"]), name
        for loss, mask in only[name]["by_loss"].items():  # ... and so is what robust-only reports of them
            assert torch.equal(mask, ref["by_loss"][loss]), (name, loss)
        if only[name]["alone"] is not None:
            assert torch.equal(only[name]["alone"], ref["alone"]), name
        assert only[name]["attacked_all"] == ref["attacked"] == ref["attacked_all"] == 2 * len(GRIDS["linf"]) * len(x)
        assert only[name]["attacked"] <= diag[name]["attacked"] < ref["attacked"]
    robust = every["pgd_linf"]["robust"]
    assert 0 < robust[2].sum() and robust[-1].sum() < robust[1].sum() < robust[0].sum()  # a non-trivial curve
    # what robust-only reports of the diagnostics: the first loss of a run that no earlier run restricts
    first = {"fgsm_linf", "fgsm_l2"} if cumulative else set(every)
    assert {n for n, c in only.items() if c["alone"] is not None} == first
    assert all(list(only[n]["by_loss"]) == (["ce"] if n in first else []) for n in only)
    saving = sum(c["attacked"] for c in only.values()) / sum(c["attacked"] for c in every.values())
    pgd_saving = sum(only[n]["attacked"] for n in ("pgd_linf", "pgd_l2")) / sum(diag[n]["attacked"] for n in ("pgd_linf", "pgd_l2"))
    print(f"attacked: robust-only / all {saving:.3f}, PGD robust-only / diagnostics {pgd_saving:.3f}")
    assert saving < 0.5 and pgd_saving < (0.75 if cumulative else 0.9), (saving, pgd_saving)


def test_robust_only_rejects_a_non_boolean_diagnostics(mlp, batch):
    from advlab.errors import ConfigError

    with pytest.raises(ConfigError, match="robustness.diagnostics"):
        robustness_curves(mlp, {"f": FGSM(0.1)}, GRIDS, *batch, diagnostics="yes", progress=False)


def test_test_step_attacks_only_the_clean_correct_points():
    module, dm = _trained_digits_mlp()
    module.eval_attack = _counting(PGD)(0.05, steps=5, random_start=False)
    module.eval_attack.calls = []
    res = _trainer().test(module, dm, verbose=False)[0]
    with torch.no_grad():
        correct = int((module.model(dm.x_test).argmax(1) == dm.y_test).sum())
    n = len(dm.y_test)
    assert sum(module.eval_attack.calls) == correct == round(res["test/acc"] * n) < n
    # attacking all points (evaluate_attack) gives the same robust accuracy; other batch sizes may
    # round a borderline logit differently, hence one point of slack
    reference = robust_accuracy(module.model, PGD(0.05, steps=5, random_start=False), (dm.x_test, dm.y_test))
    assert 0.05 < res["test/adv_acc"] < res["test/acc"] - 0.05
    assert res["test/adv_acc"] == pytest.approx(reference, abs=1.01 / n)
