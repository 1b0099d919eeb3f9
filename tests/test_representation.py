"""Penultimate representations, forward-hook capture and representation inversion."""
from __future__ import annotations

import pytest
import torch

from advlab.analysis.activations import capture, default_layers, layer_outputs, resolve_layers
from advlab.analysis.representation import invert_batch, invert_representations, other_indices, representation_distance
from advlab.errors import ConfigError
from advlab.models import CNN, MLP, ResNet, WideMLP


def _models(shape=(1, 8, 8), classes=10):
    torch.manual_seed(0)
    return {
        "cnn": CNN(shape, classes, channels=(8, 16), hidden=32),
        "mlp": MLP(shape, classes, depth=2, width=32),
        "wide_mlp": WideMLP(shape, classes, width=40),
        "kumano": WideMLP(shape, 2, width=40, kumano=True, init_seed=0),
        "resnet": ResNet(shape, classes, depth=18, width=4),
    }


@pytest.mark.parametrize("name", ["cnn", "mlp", "wide_mlp", "kumano", "resnet"])
def test_representation_is_the_input_of_the_readout(name):
    model = _models()[name].eval()
    x = torch.rand(5, 1, 8, 8)
    rep = model.representation(x)
    assert rep.dim() == 2 and rep.shape[0] == 5
    readout = {"cnn": lambda h: model.head[-1](h), "mlp": lambda h: model.net[-1](h), "wide_mlp": lambda h: model.readout(h),
               "kumano": lambda h: torch.cat([-(h @ model.readout_weight) / 2, (h @ model.readout_weight) / 2], 1),
               "resnet": lambda h: model.fc(h)}[name]
    assert torch.allclose(readout(rep), model(x), atol=1e-5)


def test_default_layers_per_architecture():
    m = _models()
    assert default_layers(m["cnn"]) == ["body.4", "body.9", "head.2", "head.3"]  # two pools, hidden ReLU, logits
    assert default_layers(m["mlp"]) == ["net.2", "net.4", "net.5"]
    assert default_layers(m["wide_mlp"]) == ["hidden", "readout"]
    assert default_layers(m["resnet"])[-1] == "fc" and len(default_layers(m["resnet"])) == 9  # 8 blocks + fc


def test_hooks_capture_the_right_shapes_and_are_removed_afterwards():
    model = _models()["cnn"]
    x = torch.rand(7, 1, 8, 8)
    names = default_layers(model)
    out = layer_outputs(model, x, names, batch_size=3)  # batched: 3 + 3 + 1
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "body.4": (7, 8, 4, 4), "body.9": (7, 16, 2, 2), "head.2": (7, 32), "head.3": (7, 10)}
    assert torch.allclose(out["head.3"], model.eval()(x), atol=1e-6)
    assert torch.allclose(out["head.2"], model.representation(x), atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        with capture(model, ["head.2"]):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())  # removed after an error too
    with pytest.raises(ConfigError, match=r"^layers: unknown layer 'head\.9'; allowed: .*head\.2"):
        resolve_layers(model, ["head.9"])


def test_other_indices_never_start_from_the_image_itself():
    for n in (2, 3, 10, 257):
        idx = other_indices(n, torch.Generator().manual_seed(n))
        assert sorted(idx.tolist()) == list(range(n))
        assert not bool((idx == torch.arange(n)).any())


def test_inversion_lowers_the_representation_loss_and_stays_in_the_box():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, depth=2, width=64).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 8, 8, generator=gen)
    starts = x[other_indices(32, gen)]
    with torch.no_grad():
        before = representation_distance(model, starts, model.representation(x))
    out = invert_representations(model, x, starts, steps=100, step_size=0.05, batch_size=10, progress=False)
    assert torch.allclose(out["distance_initial"], before, atol=1e-5)
    with torch.no_grad():
        after = representation_distance(model, out["x"], model.representation(x))
    assert torch.allclose(out["distance_final"], after, atol=1e-5)  # the reported distance is the returned images'
    assert bool((after <= before).all())  # the best iterate is kept: never worse than the start
    assert float(after.mean()) < 0.3 * float(before.mean())
    assert float(out["x"].min()) >= 0.0 and float(out["x"].max()) <= 1.0
    assert not torch.equal(out["x"], starts)


def test_inversion_from_the_target_itself_stays_put_and_restores_train_mode():
    model = CNN((1, 8, 8), 10, channels=(4, 8), hidden=16)
    model.train()
    x = torch.rand(4, 1, 8, 8)
    xr, d0, d1 = invert_batch(model, x, x, steps=3, step_size=0.1)
    assert float(d0.max()) < 1e-6 and torch.equal(xr, x)
    assert model.training


def test_keep_last_is_the_authors_final_iterate_and_best_is_never_worse():
    """keep="last" returns the robustness library's use_best=False result: the plain loop
    x ← clip(x − α·∇/‖∇‖₂) run `steps` times, restated here; keep="best" never ends above it."""
    torch.manual_seed(1)
    model = MLP((1, 8, 8), 10, depth=2, width=32).eval()
    x, start = torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8)
    target = model.representation(x).detach()
    ref = start.clone()
    for _ in range(7):
        ref.requires_grad_(True)
        (g,) = torch.autograd.grad(representation_distance(model, ref, target).sum(), ref)
        ref = (ref.detach() - 0.8 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    last, d0, d_last = invert_batch(model, x, start, steps=7, step_size=0.8, keep="last")
    best, _, d_best = invert_batch(model, x, start, steps=7, step_size=0.8, keep="best")
    assert torch.allclose(last, ref, atol=1e-6)
    assert torch.allclose(d_last, representation_distance(model, ref, target).detach(), atol=1e-6)
    assert bool((d_best <= d_last + 1e-7).all()) and bool((d_best < d_last - 1e-4).any())  # α 0.8 overshoots: they differ


def test_robust_dataset_starts_from_noise_as_the_authors_and_keeps_old_cache_keys():
    from advlab.derived.robust import RobustDataset

    x = torch.rand(4000, 3, 4, 4)
    noise, index = RobustDataset(start="noise", seed=3).starts(x)
    assert abs(float(noise.mean()) - 0.5) < 1e-3 and abs(float(noise.std()) - 0.05) < 1e-3  # N(0.5, 0.05²)
    assert torch.equal(noise, RobustDataset(start="noise", seed=3).starts(x)[0]) and bool((index == -1).all())
    images, index = RobustDataset(seed=3).starts(x)
    assert torch.equal(images, x[index]) and not bool((index == torch.arange(len(x))).any())
    assert RobustDataset()._options() == {}  # the defaults add nothing to the cache key: datasets cached before stay hits
    assert RobustDataset(start="noise", keep="last")._options() == {"start": "noise", "keep": "last", "noise_std": 0.05}
    for key, value in (("start", "zeros"), ("keep", "first")):
        with pytest.raises(ConfigError, match=f"^{key}: '{value}'; allowed: "):
            RobustDataset(**{key: value})
