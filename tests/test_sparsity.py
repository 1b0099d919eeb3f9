"""Data-sparsity training (Paknezhad et al.): the softmax-slope penalty, the LightningModule on batches
> 1, the FGSM adversarial-training option, and model specs naming the method (cached by Artifacts)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn

from advlab.artifacts.models import Artifacts
from advlab.attacks import FGSM
from advlab.artifacts.cache import ArtifactCache
from advlab.data import DigitsDataModule
from advlab.errors import ConfigError
from advlab.methods import SparsityTraining, softmax_slope_penalty
from advlab.models import MLP

OPT = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(seed=0, batch_size=64, max_train=512)
    dm.setup()
    return dm


def _pairs(model, n=64, d=8, k=3, sigma=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    anchors = torch.randn(n, d, generator=gen)
    neighbors = anchors.repeat_interleave(k, 0) + sigma * torch.randn(n * k, d, generator=gen)
    return softmax_slope_penalty(model(anchors).softmax(1), model(neighbors).softmax(1), anchors, neighbors)


def test_penalty_is_the_mean_squared_softmax_slope():
    gen = torch.Generator().manual_seed(1)
    pa, xa = torch.rand(2, 3, generator=gen), torch.rand(2, 5, generator=gen)
    pn, xn = torch.rand(4, 3, generator=gen), torch.rand(4, 5, generator=gen)
    expected = torch.stack([((pa[i // 2] - pn[i]) / (xa[i // 2] - xn[i]).norm()).pow(2) for i in range(4)]).mean()
    assert float(softmax_slope_penalty(pa, pn, xa, xn)) == pytest.approx(float(expected), rel=1e-6)


def test_penalty_is_zero_for_a_constant_model_and_grows_with_the_slope():
    constant = nn.Linear(8, 4)
    nn.init.zeros_(constant.weight)
    assert float(_pairs(constant).detach()) == 0.0
    base = nn.Linear(8, 4)
    values = []
    for scale in (0.25, 0.5, 1.0, 2.0):
        scaled = nn.Linear(8, 4)
        with torch.no_grad():
            scaled.weight.copy_(base.weight * scale)
            scaled.bias.copy_(base.bias * scale)
        values.append(float(_pairs(scaled).detach()))
    assert all(b > a for a, b in zip(values, values[1:]))
    # small slopes: softmax ≈ linear in the logits, so the squared slope grows about as scale²
    assert values[1] / values[0] == pytest.approx(4.0, rel=0.15)


def test_penalty_gradient_flows_to_the_parameters_and_lowers_the_slope():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
    before = float(_pairs(model).detach())
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        loss = _pairs(model)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    assert any(float(p.grad.abs().max()) > 0 for p in model.parameters())
    assert float(_pairs(model).detach()) < 0.5 * before


def _trainer(epochs):
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False, accelerator="cpu")


def _slope_on(model, x, sigma=0.01, seed=0):
    """The penalty of a trained model on test points and their neighbours (no unlabelled points)."""
    gen = torch.Generator().manual_seed(seed)
    near = x + sigma * torch.randn(x.shape, generator=gen)
    with torch.no_grad():
        return float(softmax_slope_penalty(model(x).softmax(1), model(near).softmax(1), x, near))


def test_module_trains_on_batches_and_flattens_the_softmax(digits):
    """Batch size 64 (the reference handles one anchor per step): it learns the labels, and a larger
    λ gives a flatter softmax around the test points than λ = 0."""
    results = {}
    for lam in (0.0, 1000.0):
        torch.manual_seed(0)
        model = MLP(digits.input_shape, 10, width=64, mean=digits.mean, std=digits.std)
        module = SparsityTraining(model, OPT, sigma_u=0.1, n_unlabeled=2, sigma_n=0.01, n_neighbors=2, lam=lam)
        trainer = _trainer(4)
        trainer.fit(module, digits)
        assert torch.isfinite(trainer.callback_metrics["train/penalty"]) and trainer.callback_metrics["train/ce"] > 0
        with torch.no_grad():
            acc = float((model(digits.x_test).argmax(1) == digits.y_test).float().mean())
        results[lam] = (acc, _slope_on(model.eval(), digits.x_test))
    assert results[0.0][0] > 0.8 and results[1000.0][0] > 0.8
    assert results[1000.0][1] < 0.5 * results[0.0][1]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_fgsm_adversarial_training_option(digits):
    torch.manual_seed(0)
    model = MLP(digits.input_shape, 10, width=32, mean=digits.mean, std=digits.std)
    module = SparsityTraining(model, OPT, adv_ratio=0.3, adv_eps=0.1, n_unlabeled=1, lam=10.0)
    assert isinstance(module.adv_attack, FGSM) and module.adv_attack.eps == 0.1 and module.adv_attack.norm == "linf"
    fitted = SparsityTraining(MLP(digits.input_shape, 10, width=32, mean=digits.mean, std=digits.std), OPT, adv_ratio=0.3, adv_eps=0.1,
                              n_unlabeled=1, lam=10.0)
    pl.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu").fit(fitted, digits)
    assert fitted.adv_attack.bounds == digits.bounds  # the FGSM step's bounds follow the data (`setup`)
    module.adv_attack.bounds = digits.bounds
    calls = []
    attack_call = module.adv_attack.__call__

    class Spy(FGSM):  # records what the FGSM step is given and returns
        def __call__(self, m, x, y):
            out = attack_call(m, x, y)
            calls.append((x, out))
            return out

    module.adv_attack.__class__ = Spy
    x, y = digits.x_train[:16], digits.y_train[:16]
    loss = module.training_step((x, y), 0)
    assert torch.isfinite(loss) and len(calls) == 1
    x_in, x_adv = calls[0]
    assert torch.equal(x_in, x) and float((x_adv - x).abs().max()) == pytest.approx(0.1, abs=1e-6)
    assert SparsityTraining(model, OPT).adv_attack is None  # adv_ratio = 0: no adversarial examples


@pytest.mark.parametrize("kwargs,key", [({"sigma_n": 0.0}, "sigma_n"), ({"n_neighbors": 0}, "n_neighbors"),
                                        ({"lam": -1.0}, "lam"), ({"n_unlabeled": 1.5}, "n_unlabeled")])
def test_bad_arguments(kwargs, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):  # its bare parameter: the pre-flight names the node (method.lam)
        SparsityTraining(MLP((1, 8, 8), 10, width=8), OPT, **kwargs)


def test_model_specs_name_the_method_and_its_params(digits, tmp_path, caplog):
    arch = {"_target_": "advlab.models.MLP", "_partial_": True, "width": 32, "depth": 1}
    sparsity = {"_target_": "advlab.methods.SparsityTraining", "lam": 10.0, "n_unlabeled": 1}
    spec = OmegaConf.create({"arch": arch, "method": sparsity, "optimizer": OPT, "scheduler": None, "max_epochs": 1, "seed": 0})
    art = Artifacts(ArtifactCache(tmp_path), accelerator="cpu", progress=False)
    key = art.model_spec(spec, digits)
    assert key["method"] == sparsity
    standard = OmegaConf.create({**OmegaConf.to_container(spec), "method": {"_target_": "advlab.methods.StandardTraining"}})
    assert "trainer" not in art.model_spec(standard, digits)  # the default training settings add nothing to the key
    model, metrics, _ = art.model(spec, digits)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and not model.training
    with caplog.at_level("INFO"):
        again, _, _ = art.model(spec, digits)
    assert "Cache hit" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ConfigError, match=r"^models.x.method.lambda: unknown key\(s\) lambda .* allowed: sigma_u"):
        art.model_spec(OmegaConf.merge(spec, {"method": {"lambda": 1.0}}), digits, where="models.x")
    with pytest.raises(ConfigError, match="allowed: label_smoothing, channels_last, compile, loss$"):
        art.model_spec(OmegaConf.merge(standard, {"method": {"lam": 1.0}}), digits)


def test_a_cached_model_does_not_depend_on_what_was_trained_before(digits, tmp_path):
    """Two specs trained in one process on one datamodule, in either order, give the same weights."""
    arch = {"_target_": "advlab.models.MLP", "_partial_": True, "width": 16, "depth": 1}
    a = OmegaConf.create({"arch": arch, "method": {"_target_": "advlab.methods.StandardTraining"}, "optimizer": OPT,
                          "scheduler": None, "max_epochs": 1, "seed": 0})
    b = OmegaConf.merge(a, {"seed": 1})
    first = Artifacts(ArtifactCache(tmp_path / "1"), accelerator="cpu", progress=False)
    wa, _, _ = first.model(a, digits)
    second = Artifacts(ArtifactCache(tmp_path / "2"), accelerator="cpu", progress=False)
    second.model(b, digits)
    wa2, _, _ = second.model(a, digits)
    assert all(torch.equal(p, q) for p, q in zip(wa.state_dict().values(), wa2.state_dict().values()))


class _Linear(nn.Linear):
    """An affine classifier the LightningModule accepts (it reads ``num_classes``)."""

    num_classes = 3


def _per_anchor_reference(model, x, y, lam, sigma_u, u, sigma_n, k, seed, mean=0.0, std=1.0):
    """The reference's loop (main.py, batch size 1): for every anchor, CE (labelled only; CELoss) + λ ·
    mse over neighbours and classes of p/‖a − x'‖ (GRLoss), averaged over the shuffled anchors, in the
    coordinates z = (x − mean)/std the reference trains in (the model sees mean + std·z). The noise is
    drawn in the order SparsityTraining draws it: unlabelled points, then neighbours."""
    torch.manual_seed(seed)
    z = (x - mean) / std
    noise_u = torch.randn(len(x) * u, *x.shape[1:])
    anchors = torch.cat([z, z.repeat_interleave(u, 0) + sigma_u * noise_u])
    noise_n = torch.randn(len(anchors) * k, *x.shape[1:])
    losses = []
    for i, a in enumerate(anchors):
        near = a[None] + sigma_n * noise_n[i * k:(i + 1) * k]
        pa, pn = model(mean + std * a[None]).softmax(1), model(mean + std * near).softmax(1)
        dist = (near - a[None]).flatten(1).norm(dim=1, keepdim=True)
        gr = torch.nn.functional.mse_loss(pa.expand_as(pn) / dist, pn / dist)
        ce = torch.nn.functional.cross_entropy(model(mean + std * a[None]), y[i:i + 1]) if i < len(x) else 0.0
        losses.append(ce + lam * gr)
    return float(torch.stack([torch.as_tensor(v) for v in losses]).mean())


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_per_anchor_weighting_is_the_mean_of_the_reference_per_anchor_loss():
    """penalty_weighting=per_anchor: (CE + …)/(1 + u) + λ·penalty, the mean over the batch's anchors of
    the reference's batch-size-1 loss; batch_mean: CE + λ·penalty ((1 + u)× less weight on the penalty)."""
    torch.manual_seed(0)
    model = _Linear(6, 3)
    x, y = torch.rand(4, 6), torch.tensor([0, 1, 2, 1])
    kw = dict(sigma_u=0.3, n_unlabeled=2, sigma_n=0.05, n_neighbors=2, lam=7.0)
    torch.manual_seed(11)
    per_anchor = float(SparsityTraining(model, OPT, penalty_weighting="per_anchor", **kw).training_step((x, y), 0).detach())
    ref = _per_anchor_reference(model, x, y, 7.0, 0.3, 2, 0.05, 2, seed=11)
    assert per_anchor == pytest.approx(ref, rel=1e-5)
    torch.manual_seed(11)
    batch_mean = float(SparsityTraining(model, OPT, **kw).training_step((x, y), 0).detach())
    with torch.no_grad():
        ce = float(torch.nn.functional.cross_entropy(model(x), y))
    # per_anchor = CE/(1+u) + λ·pen and batch_mean = CE + λ·pen: their difference is CE·u/(1+u)
    assert batch_mean - per_anchor == pytest.approx(ce * 2 / 3, rel=1e-4)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_normalized_units_are_converted_once_in_the_constructor():
    """units=normalized: σ_u, σ_n, the FGSM ε in Normalize(0.1307, 0.3081) units are × 0.3081 in pixels and
    λ × 0.3081² (the penalty divides by a squared distance); the loss equals the reference's computed in
    normalised coordinates with the paper's values."""
    std = 0.3081
    module = SparsityTraining(_Linear(6, 3), OPT, sigma_u=0.016, sigma_n=0.002, lam=1e5, adv_ratio=0.3, adv_eps=0.1,
                              units="normalized")
    assert module.sigma_u == pytest.approx(0.016 * std) and module.sigma_n == pytest.approx(0.002 * std)
    assert module.lam == pytest.approx(1e5 * std ** 2) and module.lam == pytest.approx(9492.6, rel=1e-4)
    assert module.adv_eps == pytest.approx(0.1 * std) and module.adv_attack.eps == pytest.approx(0.1 * std)
    pixel = SparsityTraining(_Linear(6, 3), OPT, sigma_u=0.016, lam=1e5)
    assert pixel.sigma_u == 0.016 and pixel.lam == 1e5  # the default units: unchanged
    torch.manual_seed(0)
    model = _Linear(6, 3)
    x, y = torch.rand(3, 6), torch.tensor([2, 0, 1])
    kw = dict(sigma_u=0.5, n_unlabeled=1, sigma_n=0.1, n_neighbors=3, lam=50.0)
    torch.manual_seed(5)
    got = float(SparsityTraining(model, OPT, units="normalized", penalty_weighting="per_anchor", **kw).training_step((x, y), 0).detach())
    ref = _per_anchor_reference(model, x, y, 50.0, 0.5, 1, 0.1, 3, seed=5, mean=0.1307, std=std)
    assert got == pytest.approx(ref, rel=1e-4)
    for bad, key in (({"units": "norm"}, "^units"), ({"penalty_weighting": "mean"}, "^penalty_weighting"),
                     ({"norm_std": 0.0}, "^norm_std")):
        with pytest.raises(ConfigError, match=key):
            SparsityTraining(_Linear(6, 3), OPT, **bad)
