"""Any class count (issue 23): APGD-T and FAB-T attack min(n, C − 1) targets, AutoAttack on 3- and 2-class
models against the AutoAttack authors' code (pyautoattack 0.2.0, a test-only reference), the DLR losses
below 4 classes, perturbation learning's target rules and the robustness-curve and minimal-perturbation
analyses on 3- and 100-class models.

The reference is undefined below 4 classes: its targeted DLR reads the 4th-largest logit and its DLR the
3rd, so it fails with an IndexError there (after a warning from ``checks.check_n_classes``). advlab's
APGD-T runs on the targeted margin z_t − z_y below 4 classes; the cross-checks give the reference instance
that same loss, so everything else (targets, restarts, step sizes, members, order) is compared as it is.
Models are fixed random MLPs (no training); 3-class problems are images so that Square runs as AutoAttack's.
"""
from __future__ import annotations

import logging
import types

import pytest
import torch
from torch import nn

from advlab.analysis.deepfool import deepfool_summary
from advlab.analysis.linearity import linearity
from advlab.analysis.minimal_attacks import minimal_attack
from advlab.analysis.off_support import softmax_statistics
from advlab.analysis.robustness import robustness_curves
from advlab.attacks import APGDT, FABT, PGD, AutoAttack, DeepFool
from advlab.attacks.apgd import top_other_classes
from advlab.attacks.base import dlr_targeted_loss, per_sample_loss
from advlab.derived.perturbation import craft_dataset, make_targets
from advlab.errors import ConfigError

paa = pytest.importorskip("pyautoattack", reason="the AutoAttack reference is not installed (make install)")
from pyautoattack import AutoAttack as ReferenceAutoAttack  # noqa: E402
from pyautoattack import checks as reference_checks  # noqa: E402
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: E402
from pyautoattack.fab_pt import FABAttack_PT  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
AA_LOG = "advlab.attacks.autoattack"


# --------------------------------------------------------------------------------------------
# problems: fixed random models, labels = their predictions with every 10th one wrong
# --------------------------------------------------------------------------------------------
def _mlp(classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 24), nn.ReLU(), nn.Linear(24, classes)).eval().requires_grad_(False)


def _image_problem(classes: int, n: int):
    model = _mlp(classes)
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::10] = (y[::10] + 1) % classes  # misclassified from the start: returned as they are
    return model, x, y


def _linear_problem(classes: int, n: int = 64, dim: int = 48):
    """An affine model on unbounded inputs, with log-normal class weight norms (so the nearest boundary
    is not always the runner-up logit's): its minimal perturbations are known in closed form."""
    g = torch.Generator().manual_seed(classes)
    model = nn.Linear(dim, classes)
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, dim, generator=g) * torch.randn(classes, 1, generator=g).exp())
        model.bias.copy_(torch.randn(classes, generator=g))
    model.eval().requires_grad_(False)
    x = torch.randn(n, dim, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _exact_distances(model: nn.Linear, x, y, dual: float) -> torch.Tensor:
    """min over k ≠ y of (z_y − z_k) / ‖w_y − w_k‖_dual: the exact minimal perturbation of an affine
    model (its class region is an intersection of half-spaces) in the norm whose dual is ``dual``."""
    with torch.no_grad():
        z = model(x)
        w = model.weight
        gap = z.gather(1, y[:, None]) - z  # (N, C)
        dw = torch.linalg.vector_norm(w[y][:, None, :] - w[None, :, :], ord=dual, dim=2)  # (N, C)
        d = gap / dw.clamp_min(1e-30)
        return d.scatter(1, y[:, None], float("inf")).amin(1)


@pytest.fixture(scope="module")
def three():
    return _image_problem(3, 40)


@pytest.fixture(scope="module")
def two():
    return _image_problem(2, 40)


def _targeted_margin(self, logits, y):
    """advlab's targeted loss below 4 classes, in the reference's form (it has none there)."""
    u = torch.arange(logits.shape[0])
    return -(logits[u, y] - logits[u, self.y_target])


def _broken(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def _in_ball_and_box(x_adv, x, eps):
    return float((x_adv - x).abs().max()) <= eps + 1e-6 and float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


class RecordingAPGDT(APGDT):
    """APGD-T that records each target run: (points, true labels, targets) it attacks."""

    def _restarts(self, model, x, goal):
        self.runs.append((x.clone(), goal.labels[0].clone(), goal.labels[1].clone()))
        return super()._restarts(model, x, goal)


class RecordingFABT(FABT):
    """FAB-T that records the target rank of each run."""

    def _single_run(self, model, x0, y, rank, random_start):
        self.ranks.append(rank)
        return super()._single_run(model, x0, y, rank, random_start)


def _recording_apgdt(*args, **kwargs):
    attack = RecordingAPGDT(*args, **kwargs)
    attack.runs = []
    return attack


def _recording_fabt(*args, **kwargs):
    attack = RecordingFABT(*args, **kwargs)
    attack.ranks = []
    return attack


# --------------------------------------------------------------------------------------------
# the losses below 4 classes, and what the reference does there
# --------------------------------------------------------------------------------------------
def test_the_reference_fails_below_four_classes_where_advlab_defines_the_losses(three, two):
    model3, x3, y3 = three
    model2, x2, y2 = two
    with pytest.raises(IndexError), torch.random.fork_rng():  # targeted DLR: x_sorted[:, -4]
        APGDAttack_targeted(model3, n_iter=2, eps=0.05, device="cpu", n_target_classes=2).perturb(x3, y3)
    with pytest.raises(IndexError), torch.random.fork_rng():  # DLR: x_sorted[:, -3]
        APGDAttack(model2, n_iter=2, eps=0.05, device="cpu", loss="dlr").perturb(x2, y2)
    with pytest.warns(Warning, match="only 2 classes it is not possible to use the DLR loss"):
        reference_checks.check_n_classes(2, ["apgd-ce", "apgd-t", "fab-t", "square"], 9, 9)
    with pytest.warns(Warning, match="only 3 classes it is not possible to use the targeted DLR loss"):
        reference_checks.check_n_classes(3, ["apgd-ce", "apgd-t", "fab-t", "square"], 9, 9)
    # DLR with exactly 3 classes is the reference's (z_π1 − z_π3 exists), misclassified points included
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    ref = APGDAttack(model3, eps=0.05, device="cpu", loss="dlr")
    torch.testing.assert_close(per_sample_loss("dlr", z, y), ref.dlr_loss(z, y))
    # the targeted loss below 4 classes is the margin; with z_π3 standing in for the missing z_π4 the
    # third class's loss would be −1 for every correctly classified point (no gradient, no attack)
    right = z.argmax(1)
    third = z.argsort(1)[:, 0]
    torch.testing.assert_close(dlr_targeted_loss(z, right, third), z.gather(1, third[:, None])[:, 0] - z.amax(1))
    assert float(dlr_targeted_loss(z, right, third).std()) > 0.1
    torch.testing.assert_close(dlr_targeted_loss(z[:, :2], right % 2, 1 - right % 2),
                               z[:, :2].gather(1, (1 - right % 2)[:, None])[:, 0] - z[:, :2].gather(1, (right % 2)[:, None])[:, 0])


# --------------------------------------------------------------------------------------------
# APGD-T and FAB-T: C − 1 targets below 10 classes, the version's count otherwise
# --------------------------------------------------------------------------------------------
def test_apgd_t_on_three_classes_runs_two_targets_and_equals_the_reference(three):
    model, x, y = three
    eps = 0.1
    ours = _recording_apgdt(eps, steps=20, seed=2)  # n_target_classes = 9: capped to C − 1 = 2
    adv = ours(model, x, y)
    assert len(ours.runs) == 2
    for rank, (xs, ys, ts) in enumerate(ours.runs, start=2):  # the 2nd- then the 3rd-highest clean logit
        assert torch.equal(ts, model(xs).sort(dim=1, descending=True).indices[:, rank - 1]) and bool((ts != ys).all())
    first, second = ours.runs[0][0], ours.runs[1][0]
    assert 0 < len(second) < len(first)  # the second target attacks only what the first left robust
    ref = APGDAttack_targeted(model, n_iter=20, eps=eps, device="cpu", seed=2, n_target_classes=2)
    ref.dlr_loss_targeted = types.MethodType(_targeted_margin, ref)
    with torch.random.fork_rng():
        theirs = ref.perturb(x, y)
    assert torch.equal(_broken(model, adv, y), _broken(model, theirs, y))
    broken = int(_broken(model, adv, y).sum())
    correct = int((model(x).argmax(1) == y).sum())
    assert broken - (len(x) - correct) > len(first) - len(second)  # the third class broke points too
    assert 0 < correct - broken and _in_ball_and_box(adv, x, eps)


def test_fab_t_on_three_classes_runs_two_targets_and_equals_the_reference(three):
    model, x, y = three
    eps = 0.1
    ours = _recording_fabt(eps, steps=20, seed=2)
    adv = ours(model, x, y)
    assert ours.ranks == [2, 3]
    ref = FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=20, eps=eps, seed=2, targeted=True, n_target_classes=2)
    with torch.random.fork_rng():
        theirs = ref.perturb(x, y)
    assert torch.equal(adv, theirs)
    correct = model(x).argmax(1) == y
    broken = int((_broken(model, adv, y) & correct).sum())
    assert 0 < broken < int(correct.sum()) and _in_ball_and_box(adv, x, eps)


def test_a_hundred_classes_use_the_versions_target_count():
    model, x, y = _linear_problem(100)
    tiny = 1e-5  # nothing is broken: every target gets its run
    apgdt = _recording_apgdt(tiny, steps=2, bounds=None)
    apgdt(model, x, y)
    assert len(apgdt.runs) == 9
    top9 = top_other_classes(model(x), y, 9)
    assert top9.shape == (64, 9) and torch.equal(torch.stack([t for _, _, t in apgdt.runs], 1), top9)
    fabt = _recording_fabt(tiny, steps=2, bounds=None)
    fabt(model, x, y)
    assert fabt.ranks == list(range(2, 11))
    assert top_other_classes(model(x)[:, :3], y % 3, 9).shape == (64, 2)
    for norm, apgd_targets in (("linf", 9), ("l1", 5)):
        aa = AutoAttack(0.1, norm=norm)
        assert (aa.members["apgd-t"].n_target_classes, aa.members["fab-t"].n_target_classes) == (apgd_targets, 9)


# --------------------------------------------------------------------------------------------
# AutoAttack on 3 and 2 classes
# --------------------------------------------------------------------------------------------
def _reference_autoattack(model, eps, classes, attacks=None, square_queries=5000):
    ref = ReferenceAutoAttack(model, eps=eps, version="standard", seed=0)
    ref.logger.setLevel(logging.ERROR)
    ref.apgd_targeted.n_target_classes = ref.fab.n_target_classes = classes - 1
    ref.apgd_targeted.dlr_loss_targeted = types.MethodType(_targeted_margin, ref.apgd_targeted)
    ref.square.n_queries = square_queries
    if attacks is not None:
        ref.attacks_to_run = list(attacks)
    return ref


def test_standard_autoattack_on_three_classes_equals_the_reference(three, caplog):
    """The full standard version (100 APGD steps, 2 targets, 5,000 Square queries), seed 0."""
    model, x, y = three
    x, y = x[:24], y[:24]
    eps = 0.1
    ref = _reference_autoattack(model, eps, 3)
    with torch.random.fork_rng():
        theirs, _ = ref.run_standard_evaluation(x, y, batch_size=len(y))
    ours = AutoAttack(eps, seed=0)
    with caplog.at_level(logging.INFO, logger=AA_LOG):
        adv = ours(model, x, y)
    assert torch.equal(_broken(model, adv, y), _broken(model, theirs, y))
    robust = int((~_broken(model, adv, y)).sum())
    correct = int((model(x).argmax(1) == y).sum())
    assert 0 < robust < correct and _in_ball_and_box(adv, x, eps) and _in_ball_and_box(theirs, x, eps)
    rows = {r["attack"]: r for r in ours.last_run}
    assert list(rows) == ["apgd-ce", "apgd-t", "fab-t", "square"] and not any("skipped" in r for r in rows.values())
    assert rows["apgd-t"]["broken"] > 0 and rows["square"]["robust_after"] == robust
    notes = [r.getMessage() for r in caplog.records if r.name == AA_LOG]
    assert len(notes) == 1 and "2 target classes (C − 1) instead of apgd-t 9, fab-t 9" in notes[0]
    assert not [r for r in caplog.records if r.name == AA_LOG and r.levelno >= logging.WARNING]


def test_autoattack_on_two_classes_skips_the_dlr_members_once_and_equals_the_reference(two, caplog):
    """The reference's standard version fails on 2 classes (APGD-T's DLR); where it is defined (its
    members without APGD-T) it breaks the same points as advlab's standard version, which skips APGD-T."""
    model, x, y = two
    eps = 0.05
    ref = _reference_autoattack(model, eps, 2, attacks=["apgd-ce", "fab-t", "square"], square_queries=500)
    with torch.random.fork_rng():
        theirs, _ = ref.run_standard_evaluation(x, y, batch_size=len(y))
    ours = AutoAttack(eps, seed=0, square_queries=500)
    with caplog.at_level(logging.INFO, logger=AA_LOG):
        adv = ours(model, x, y)
        ours(model, x[:8], y[:8])  # a second batch: no second warning
    assert torch.equal(_broken(model, adv, y), _broken(model, theirs, y))
    robust = int((~_broken(model, adv, y)).sum())
    assert 0 < robust < int((model(x).argmax(1) == y).sum()) and _in_ball_and_box(adv, x, eps)
    warnings = [r.getMessage() for r in caplog.records if r.name == AA_LOG and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "apgd-t skipped" in warnings[0] and "no third logit" in warnings[0] and "running apgd-ce, fab-t, square" in warnings[0]
    skipped = [r for r in ours.last_run if "skipped" in r]
    assert [r["attack"] for r in skipped] == ["apgd-t"] and skipped[0]["attacked"] == 0


def test_autoattack_versions_on_two_classes_and_a_single_score_model(two, caplog):
    model, x, y = two
    fast = dict(apgd_steps=5, fab_steps=5, square_queries=20, eot_iter=2, seed=0)
    for version, left in (("plus", ["apgd-ce", "fab", "square", "fab-t"]), ("rand", ["apgd-ce"])):
        aa = AutoAttack(0.05, version=version, **fast)
        adv = aa(model, x, y)
        assert [r["attack"] for r in aa.last_run if "skipped" not in r] == left and _in_ball_and_box(adv, x, 0.05)
    with pytest.raises(ConfigError, match=r"^attack.attacks: apgd-dlr, apgd-t use the DLR loss, .*has 2; allowed here: apgd-ce, fab"):
        AutoAttack(0.05, attacks=["apgd-dlr", "apgd-t"], **fast)(model, x, y)
    # one score per sample (positive = class 1): the two logits [−s/2, s/2]
    single_model = _Lambda(lambda inputs: model(inputs)[:, 1] - model(inputs)[:, 0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=AA_LOG):
        adv = AutoAttack(0.05, **fast)(single_model, x, y)
    assert len(caplog.records) == 1 and "apgd-t skipped" in caplog.records[0].getMessage()
    assert _in_ball_and_box(adv, x, 0.05) and bool(_broken(model, adv, y).any())


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# --------------------------------------------------------------------------------------------
# perturbation learning's target rules
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [2, 3, 100])
def test_target_rules_use_the_class_count(classes):
    y = torch.arange(3000) % classes
    gen = torch.Generator().manual_seed(0)
    det = make_targets(y, classes, "det", gen)
    assert torch.equal(det, (y + 1) % classes) and bool((det != y).all())
    rand = make_targets(y, classes, "rand", gen)
    assert bool((rand != y).all()) and int(rand.min()) >= 0 and int(rand.max()) < classes
    offsets = set(((rand - y) % classes).tolist())
    assert offsets == set(range(1, classes))  # every other class is drawn
    uniform = make_targets(y, classes, "uniform", gen)
    assert set(uniform.tolist()) == set(range(classes))


@pytest.mark.parametrize("classes,rule", [(3, "det"), (3, "rand"), (100, "det"), (100, "rand")])
def test_crafting_relabels_with_targets_of_the_models_classes(classes, rule):
    model, x, y = _linear_problem(classes, dim=128)  # as many dimensions as classes: every class has a region
    attack = PGD(eps=200.0, norm="l2", steps=100, bounds=None)
    out = craft_dataset(model, attack, x, y, classes, target_rule=rule, bounds=None, progress=False)
    t = out["y"]
    assert int(t.min()) >= 0 and int(t.max()) < classes and bool((t != y).all())
    if rule == "det":
        assert torch.equal(t, (y + 1) % classes)
    with torch.no_grad():
        assert out["success_rate"] == pytest.approx(float((model(out["x"]).argmax(1) == t).float().mean()))
    assert out["success_rate"] > 0.9


# --------------------------------------------------------------------------------------------
# the analyses on 3 and 100 classes
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes", [3, 100])
def test_robustness_curves_are_sound_on_any_class_count(classes):
    model, x, y = _linear_problem(classes)
    d_inf = _exact_distances(model, x, y, dual=1)
    grid = [0.0, float(d_inf.quantile(0.25)), float(d_inf.median()), float(d_inf.quantile(0.75))]
    attacks = {"pgd": PGD(1.0, steps=10, bounds=None), "apgd_t": APGDT(1.0, steps=10, bounds=None)}
    curves = robustness_curves(model, attacks, {"linf": grid}, x, y, progress=False)
    for name in attacks:
        mask = curves[name]["robust"]
        assert mask.shape == (len(grid), len(x)) and bool(mask[0].all())  # every point is correct clean
        assert bool((mask[1:] <= mask[:-1]).all())  # never rises with ε
        for k, eps in enumerate(grid):
            assert bool(mask[k][d_inf > eps * (1 + 1e-4)].all())  # provably robust points are never broken
    # the targeted margin (below 4 classes) on an affine model is maximised in one step: APGD-T is exact
    if classes == 3:
        mask = curves["apgd_t"]["robust"]
        for k, eps in enumerate(grid[1:], start=1):
            clear = (d_inf - eps).abs() > 1e-4 * eps
            assert torch.equal(mask[k][clear], (d_inf > eps)[clear])
    assert 0.1 < float(curves["apgd_t"]["robust"][2].float().mean()) < 0.9


@pytest.mark.parametrize("classes", [3, 100])
def test_minimal_perturbations_are_exact_on_affine_models_of_any_class_count(classes):
    model, x, y = _linear_problem(classes)
    for norm, dual in (("l2", 2), ("linf", 1)):
        exact = _exact_distances(model, x, y, dual)
        found = deepfool_summary(model, x, y, DeepFool(norm=norm, bounds=None), progress=False)
        assert bool(found["success"].all())
        torch.testing.assert_close(found["r"], exact, rtol=1e-3, atol=1e-5)
    if classes == 100:  # the nearest boundary is often not among the 9 highest other logits: all are linearised
        d = _exact_distances(model, x, y, 2)
        with torch.no_grad():
            z = model(x)
            gap = z.gather(1, y[:, None]) - z
            dw = torch.linalg.vector_norm(model.weight[y][:, None, :] - model.weight[None], dim=2)
            nearest = (gap / dw.clamp_min(1e-30)).scatter(1, y[:, None], float("inf")).argmin(1)
        assert int((top_other_classes(z, y, 9) != nearest[:, None]).all(1).sum()) > 0 and bool((d > 0).all())
    fmn = deepfool_summary(model, x, y, minimal_attack("fmn", "l2", {"steps": 50}, None), progress=False)
    exact = _exact_distances(model, x, y, 2)
    assert bool(fmn["success"].all()) and bool((fmn["r"] >= exact * (1 - 1e-4)).all())
    assert float((fmn["r"] / exact).median()) < 1.05


@pytest.mark.parametrize("classes", [2, 100])
def test_linearity_and_softmax_statistics_on_any_class_count(classes):
    model, x, y = _linear_problem(classes, n=16)
    lin = linearity(model, x, y, eps_max=0.5, points=9)
    assert lin["logits"].shape == (16, 9, classes)
    torch.testing.assert_close(lin["r2"], torch.ones(16), atol=1e-5, rtol=0)  # affine: straight lines
    stats = softmax_statistics(model, torch.zeros(8, 48))
    assert len(stats["mean_softmax"]) == classes and 0.0 <= stats["entropy_ratio"] <= 1.0 + 1e-6
