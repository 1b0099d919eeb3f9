"""Zhang et al.'s mutual-information procedure (issue 21): pre-activation hooks on LeNet, fresh seeded
draws per measurement, the log2 N ceiling they imply, and a measurement of the untrained network."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from advlab.analysis.activations import layer_outputs, pre_activation_layers, resolve_layers
from advlab.analysis.information import InformationEstimator
from advlab.callbacks import MutualInformation
from advlab.callbacks.mutual_information import draw_indices, fresh_generator
from advlab.errors import ConfigError
from advlab.models import LeNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRE = ["conv1", "conv2", "fc1", "fc2", "fc3"]
POST = ["pool1", "pool2", "act3", "act4", "fc3"]


def _lenet():
    torch.manual_seed(0)
    return LeNet((1, 28, 28), 10, normalize="none").eval()


def test_lenet_is_the_authors_and_pre_activation_hooks_are_its_conv_and_linear_outputs():
    model = _lenet()
    assert model.padding == 0 and model.fc1.in_features == 256  # LeNet_1_28_28: 16·4·4
    assert sum(p.numel() for p in model.parameters()) == 44426  # 156 + 2,416 + 30,840 + 10,164 + 850
    assert resolve_layers(model, None, "pre_activation") == pre_activation_layers(model) == PRE
    assert resolve_layers(model, None) == POST  # advlab's default: after ReLU / pooling
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the authors' forward, functional as in their Models/MNIST.py
        c1 = F.conv2d(x, model.conv1.weight, model.conv1.bias)
        c2 = F.conv2d(F.max_pool2d(F.relu(c1), 2), model.conv2.weight, model.conv2.bias)
        f1 = F.linear(F.max_pool2d(F.relu(c2), 2).flatten(1), model.fc1.weight, model.fc1.bias)
        f2 = F.linear(F.relu(f1), model.fc2.weight, model.fc2.bias)
        f3 = F.linear(F.relu(f2), model.fc3.weight, model.fc3.bias)
    acts = layer_outputs(model, x, PRE, batch_size=5)
    for name, manual in zip(PRE, (c1, c2, f1, f2, f3)):
        assert acts[name].shape == manual.shape and torch.allclose(acts[name], manual, atol=1e-6), name
    assert torch.allclose(model(x), f3, atol=1e-6)
    assert (acts["conv1"] < 0).float().mean() > 0.2  # before the ReLU: negative values survive
    assert LeNet((1, 8, 8), 10).padding == 2 and LeNet((3, 32, 32), 10).fc1.in_features == 400


def test_relu_and_pooling_can_only_lower_the_kde_information():
    # I(X;T) of the KDE bounds is ln N - mean_i logsumexp_j(-d_ij / 2σ²): decreasing in the distances,
    # and ReLU and 2×2 max-pooling are 1-Lipschitz, so the post-activation value is at most the
    # pre-activation one (the reason to hook where the authors do)
    model = _lenet()
    g = torch.Generator().manual_seed(2)  # images close together: conv1 distances of the order of σ² (not saturated)
    x = 0.5 + 0.02 * torch.randn(200, 1, 28, 28, generator=g)
    y = torch.arange(200) % 10
    acts = layer_outputs(model, x, ["conv1", "pool1", "conv2", "pool2", "fc1", "act3"])
    est = InformationEstimator(["kde_upper", "kde_lower"], noise_var=0.1).measure(x, y, acts)
    for bound in ("kde_upper", "kde_lower"):
        for pre, post in (("conv1", "pool1"), ("conv2", "pool2"), ("fc1", "act3")):
            assert est[bound][post][0] <= est[bound][pre][0] + 1e-9, (bound, pre, post)
        assert est[bound]["pool1"][0] < est[bound]["conv1"][0] - 0.05  # a real difference, not a tie


def _split(n: int, dim: int = 4, seed: int = 3):
    """n distinct points, pairwise far apart relative to σ² = 0.1, with balanced labels."""
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(x_test=torch.randn(n, dim, generator=g) * 1000.0, y_test=torch.arange(n) % 10, bounds=None)


def _fresh(**kw) -> MutualInformation:
    cb = MutualInformation(epochs="all", sampling="fresh", draws=kw.pop("draws", 2), n_points=kw.pop("n_points", 2500),
                           hook_point="pre_activation", estimators=["kde_upper", "kde_lower"], plot=False, **kw)
    return cb


def test_fresh_draws_differ_between_measurements_and_are_reproducible():
    data, model = _split(10_000), nn.Sequential(nn.Linear(4, 4))
    a, b = _fresh(seed=5), _fresh(seed=5)
    a.attach(data, model), b.attach(data, model)
    x0, y0, n0 = a.draw(0, 0)
    assert x0.shape == (5000, 4) and len(y0) == 5000
    assert torch.equal(x0, b.draw(0, 0)[0])  # same seed, epoch, kind: the same draw (also in a new callback)
    assert not torch.equal(x0, a.draw(1, 0)[0])  # another epoch
    assert not torch.equal(x0, a.draw(0, 1)[0])  # the adversarial copy's own draw
    c = _fresh(seed=6)
    c.attach(data, model)
    assert not torch.equal(x0, c.draw(0, 0)[0])
    idx = draw_indices(10_000, 2500, 2, fresh_generator(5, 0, 0))
    assert torch.equal(data.x_test[idx], x0)
    first, second = idx[:2500], idx[2500:]
    assert first.unique().numel() == second.unique().numel() == 2500  # no repeat within a draw
    shared = 5000 - n0
    assert shared == len(set(first.tolist()) & set(second.tolist())) and 450 < shared < 800  # E = 625 of 5000
    fixed = MutualInformation(n_points=300, seed=5, plot=False)
    fixed.attach(data, model)
    assert torch.equal(fixed.draw(0, 0)[0], fixed.draw(7, 1)[0])  # the default: one subset throughout


def test_the_fresh_two_by_2500_ceiling_is_log2_5000_less_the_shared_points():
    data = _split(10_000)
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4)), model[0].bias.zero_()
    cb = _fresh(seed=0)
    cb.attach(data, model)
    assert cb.layers == ["0"] and cb.points_per_measurement() == 5000
    rows = {r["estimator"]: r for r in cb.measure(model, epoch=0)}
    distinct = rows["kde_upper"]["n_distinct"]
    assert rows["kde_upper"]["n_points"] == 5000 and distinct < 5000
    # separated points: I(X;T) = log2 N - mean_i log2(multiplicity_i); a shared point appears twice
    expected = math.log2(5000) - 2 * (5000 - distinct) / 5000
    p = torch.bincount(cb.draw(0, 0)[1]).double() / 5000
    h_y = float(-(p * p.log2()).sum())
    assert h_y == pytest.approx(math.log2(10), abs=0.01)
    for r in rows.values():
        assert r["I_XT"] == pytest.approx(expected, abs=1e-6)
        assert r["I_TY"] == pytest.approx(h_y, abs=1e-6)  # separated points: all of H(Y)
    one = _fresh(seed=0, draws=1, n_points=5000)  # 5,000 distinct points: the ceiling log2 5000 = 12.29 bits
    one.attach(data, model)
    (row,) = [r for r in one.measure(model, epoch=0) if r["estimator"] == "kde_upper"]
    assert row["n_distinct"] == 5000 and row["I_XT"] == pytest.approx(math.log2(5000), abs=1e-6) and round(row["I_XT"], 2) == 12.29


@pytest.mark.parametrize("kw,key", [
    ({"sampling": "random"}, "sampling"), ({"timing": "before"}, "timing"), ({"draws": 2}, "draws"),
    ({"hook_point": "pre_relu"}, "hook_point"), ({"hook_point": "pre_activation", "layers": ["fc1"]}, "hook_point"),
    ({"epochs": "some"}, "epochs"), ({"sampling": "fresh", "draws": 0}, "draws"),
])
def test_bad_options_name_their_key(kw, key):
    with pytest.raises(ConfigError) as err:
        MutualInformation(**kw)
    assert err.value.key == key  # bare: the pre-flight re-roots it at callbacks.mutual_information


def test_schedule_of_start_timing_counts_epochs_trained():
    cb = MutualInformation(epochs="all", timing="start")
    assert cb.resolve_schedule(3) == {0, 1, 2, 3}  # 0 = untrained, 3 = trained
    assert MutualInformation(epochs=[0, -1], timing="start").resolve_schedule(3) == {0, 3}
    assert MutualInformation(epochs=[0, -1]).resolve_schedule(3) == {0, 2}  # the default: after epochs 0 and 2


def test_start_timing_measures_the_untrained_network_first_and_the_trained_one_last(tmp_path):
    import copy

    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from advlab.data import DigitsDataModule
    from advlab.methods import StandardTraining

    dm = DigitsDataModule(seed=0, max_train=300)
    dm.setup()
    torch.manual_seed(0)
    model = LeNet(dm.input_shape, dm.num_classes, normalize="none")
    untrained = copy.deepcopy(model)
    options = dict(epochs="all", timing="start", hook_point="pre_activation", sampling="fresh", draws=2, n_points=60,
                   estimators=["kde_upper", "binning"], plot=False, seed=4)
    cb = MutualInformation(**options)
    module = StandardTraining(model, OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9}))
    trainer = pl.Trainer(max_epochs=2, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False, accelerator="cpu", limit_val_batches=0,
                         default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert cb.schedule == {0, 1, 2} and sorted({r["epoch"] for r in cb.rows}) == [0, 1, 2]
    assert len(cb.rows) == 3 * 2 * len(PRE) and {r["layer"] for r in cb.rows} == set(PRE)
    check = MutualInformation(**options)
    check.attach(dm, untrained)

    def values(rows):
        return {(r["estimator"], r["layer"]): (r["I_XT"], r["I_TY"]) for r in rows}

    # label 0 is the network before any step; label 2 the one training ended with (same seeded draws)
    assert values(r for r in cb.rows if r["epoch"] == 0) == values(check.measure(untrained, 0))
    assert values(r for r in cb.rows if r["epoch"] == 2) == values(check.measure(module.model, 2))
    assert values(r for r in cb.rows if r["epoch"] == 0) != values(check.measure(module.model, 0))  # training moved it
    history = json.loads((tmp_path / "mi_history.json").read_text())
    assert history["meta"]["epochs"] == [0, 1, 2] and history["meta"]["n_points"] == 120
    assert cb.final_metrics["mi/clean/kde_upper/fc3/I_XT"] == values(check.measure(module.model, 2))["kde_upper", "fc3"][0]
