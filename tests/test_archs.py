"""Fast CIFAR architectures (issue 12): ResNet-9, VGG-16-BN, DenseNet-121, GoogLeNet, MobileNetV2, WideResNet.
Small-image stems (1×8×8, 1×28×28, 3×32×32), training steps, size knobs, use as attack targets."""
from __future__ import annotations

import re

import pytest
import torch
from torch.nn import functional as F

from advlab.attacks import PGD
from advlab.errors import ConfigError
from advlab.models import VGG, DenseNet, GoogLeNet, MobileNetV2, ResNet9
from advlab.models.wide_resnet import WideResNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# name -> (class, size knobs of a given scale, the CPU-test scale, increasing scales); dropout off so
# that a few steps on one batch surely lower the loss
ARCHS = {
    "resnet9": (ResNet9, lambda w: {"width": w}, 8, (4, 8, 16)),
    "vgg16_bn": (VGG, lambda w: {"width": w}, 8, (4, 8, 16)),
    "densenet121": (DenseNet, lambda g: {"growth_rate": g, "num_init_features": 2 * g}, 4, (2, 4, 8)),
    "googlenet": (GoogLeNet, lambda m: {"width_mult": m, "dropout": 0.0}, 0.0625, (0.0625, 0.125, 0.25)),
    "mobilenet_v2": (MobileNetV2, lambda m: {"width_mult": m, "dropout": 0.0}, 0.125, (0.125, 0.25, 0.5)),
    "wide_resnet": (WideResNet, lambda w: {"width": w}, 1, (1, 2, 4)),
}
# dataset shapes and class counts: digits, MNIST / FMNIST, CIFAR-10 (and a 3-class subset)
SHAPES = [((1, 8, 8), 10), ((1, 28, 28), 10), ((3, 32, 32), 3)]


def _build(name, shape, classes, scale=None, **kw):
    cls, knobs, default, _ = ARCHS[name]
    torch.manual_seed(0)
    return cls(shape, classes, **knobs(default if scale is None else scale), **kw)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("shape,classes", SHAPES, ids=["8x8", "28x28", "32x32"])
def test_arch_builds_for_the_input_shape_and_takes_an_optimiser_step(name, shape, classes):
    model = _build(name, shape, classes)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, *shape, generator=g), torch.randint(0, classes, (4,), generator=g)
    # CIFAR stem: the first conv is 3×3 at stride 1, so it keeps the input's resolution
    stem = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    handle = stem.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape[-2:])))
    assert model(x).shape == (4, classes) and model.representation(x).shape[0] == 4
    handle.remove()
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and seen[0] == shape[1:]
    opt = torch.optim.SGD(model.parameters(), 0.01)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.norm()) for gr in grads) > 0
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    # normalisation is the first layer: the model is its body on standardised inputs
    normed = _build(name, shape, classes, mean=torch.full((shape[0],), 0.4), std=torch.full((shape[0],), 0.2)).eval()
    assert torch.allclose(normed(x), normed.features((x - 0.4) / 0.2), atol=1e-5)


@pytest.mark.parametrize("name", ["densenet121", "googlenet", "mobilenet_v2"])
@pytest.mark.parametrize("shape,classes", SHAPES, ids=["8x8", "28x28", "32x32"])
def test_stride_2_stem_halves_every_later_resolution(name, shape, classes):
    """The CPU variants' stem (arch.stem_stride: 2): the same layers and weights, every map after the
    stem at half the stride-1 model's size (rounded up), still trainable on 8×8 digits."""
    maps = {}
    for stride in (1, 2):
        model = _build(name, shape, classes, stem_stride=stride)
        sizes = maps[stride] = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(out.shape[-1]))
                 for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        x, y = torch.rand(4, *shape), torch.randint(0, classes, (4,))
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())
        [h.remove() for h in hooks]
    assert len(maps[1]) == len(maps[2]) and maps[1][0] == shape[-1] and maps[2][0] == -(-shape[-1] // 2)
    # a stride-1 map of size s is at most ceil(s / 2) (pooling floors: 7 -> 3 where 14 -> 7)
    assert all(1 <= b <= -(-a // 2) for a, b in zip(maps[1], maps[2])), (maps[1], maps[2])
    assert sum(maps[2]) < 0.75 * sum(maps[1])


@pytest.mark.parametrize("name", ARCHS)
def test_width_knob_grows_the_parameter_count(name):
    counts = [sum(p.numel() for p in _build(name, (3, 32, 32), 10, scale).parameters()) for scale in ARCHS[name][3]]
    assert counts[0] < counts[1] < counts[2], counts


def test_vector_inputs_and_bad_sizes_are_config_errors():
    with pytest.raises(ConfigError, match="^arch:"):
        ResNet9((64,), 10)
    with pytest.raises(ConfigError, match=r"^width:"):  # the constructor names its parameter; the pre-flight, the node (arch.width)
        VGG((1, 8, 8), 10, width=0)
    with pytest.raises(ConfigError, match=r"^width_mult:"):
        MobileNetV2((1, 8, 8), 10, width_mult=-1.0)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x[:1200], torch.tensor(d.target[:1200]), x[1500:1700], torch.tensor(d.target[1500:1700])


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _recalibrate_bn(model, x):
    """Exact BatchNorm statistics of the training set: after a few fast steps the running means lag."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for xb in x.split(200):
            model(xb)
    return model.eval()


@pytest.mark.parametrize("name", ARCHS)
def test_arch_is_an_attack_and_transfer_target(name, digits, digits_mlp):
    """Every arch (untrained, CPU width): the source MLP's adversarial examples feed it, and a
    white-box PGD on it stays in the ε-ball and raises its loss."""
    x_tr, _, x_te, y_te = digits
    x, y = x_te[:64], y_te[:64]
    model = _recalibrate_bn(_build(name, (1, 8, 8), 10), x_tr[:400])  # BatchNorm statistics of real data
    source, _, _ = digits_mlp
    eps = 0.2
    x_src = PGD(eps=eps, norm="linf", steps=5)(source, x, y)
    with torch.no_grad():
        assert model(x_src).shape == (64, 10)
    x_adv = PGD(eps=eps, norm="linf", steps=3)(model, x, y)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 1e-3


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in ("resnet9", "vgg16_bn") else pytest.mark.slow) for n in ARCHS])
def test_briefly_trained_arch_learns_and_attacks_lower_its_accuracy(name, digits, digits_mlp):
    x_tr, y_tr, x_te, y_te = digits
    model = _build(name, (1, 8, 8), 10)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        for idx in torch.randperm(len(x_tr), generator=g).split(100):
            opt.zero_grad()
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses
    _recalibrate_bn(model, x_tr)
    clean = _accuracy(model, x_te, y_te)
    assert clean > 0.6, clean
    eps = 0.2
    x_adv = PGD(eps=eps, norm="linf", steps=10)(model, x_te, y_te)
    assert float((x_adv - x_te).abs().max()) <= eps + 1e-6
    assert _accuracy(model, x_adv, y_te) < clean - 0.3
    # transfer: the source MLP's adversarial examples also lower this architecture's accuracy
    source, _, _ = digits_mlp
    x_src = PGD(eps=eps, norm="linf", steps=10)(source, x_te, y_te)
    assert _accuracy(model, x_src, y_te) < clean


def test_size_knobs_are_validated_before_any_work():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.preflight.app_keys import validate

    from advlab.runtime.resolvers import CONF_DIR
    from advlab.preflight.objects import check_objects

    # each knob's rule is its constructor's: the pre-flight builds the architectures for the data's shape
    cases = ((["arch=mobilenet_v2", "arch.width_mult=0"], "arch.width_mult"),
             (["arch=densenet121", "arch.growth_rate=1.5"], "arch.growth_rate"),
             (["arch=googlenet", "arch.dropout=1.0"], "arch.dropout"),
             (["arch=densenet121_cpu", "arch.stem_stride=0"], "arch.stem_stride"),
             (["arch=mlp", "arch.depth=0"], "arch.depth"),
             (["arch=cnn", "arch.channels=[8,0]"], "arch.channels[1]"),
             (["arch=cnn", "dataset=synthetic"], "arch"),
             (["arch@source.arch=resnet9", "source.arch.width=0"], "source.arch.width"),
             (["arch@source.arch=vgg16_bn", "source.arch.width=-2", "dataset=cifar10"], "source.arch.width"))
    for overrides, key in cases:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}:"):
            validate(cfg)
            check_objects(cfg)
    GlobalHydra.instance().clear()


def test_stem_stride_1_leaves_a_models_cache_key_as_it_was(tmp_path):
    """`stem_stride` came after models had been cached: at 1 (what ran before it existed) it stays out
    of the cache key, so the full-size models keep their cache entries and seeds; at 2 it is in it."""
    from omegaconf import OmegaConf

    from advlab.artifacts.models import Artifacts
    from advlab.artifacts.cache import ArtifactCache, spec_key
    from advlab.data import DigitsDataModule

    dm = DigitsDataModule(seed=0, max_train=64, batch_size=32)
    dm.setup()
    artifacts = Artifacts(ArtifactCache(tmp_path / "cache"))
    base = {"_target_": "advlab.models.DenseNet", "_partial_": True, "growth_rate": 4, "num_init_features": 8}
    keys = [artifacts.model_spec(OmegaConf.create({
        "arch": {**base, **extra}, "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}, "max_epochs": 1, "seed": 0,
        "method": {"_target_": "advlab.methods.StandardTraining", "label_smoothing": 0.0}}), dm) for extra in ({}, {"stem_stride": 1}, {"stem_stride": 2})]
    assert spec_key(keys[0]) == spec_key(keys[1]) != spec_key(keys[2])
    assert "stem_stride" not in keys[1]["arch"] and keys[2]["arch"]["stem_stride"] == 2
