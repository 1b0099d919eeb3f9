"""Texture / shape probe transforms and the advlab-probe app."""
from __future__ import annotations

import json
import math

import pytest
import torch

from advlab.analysis.texture_shape import patch_shuffle, saturate
from advlab.errors import ConfigError
from advlab.runtime.resolvers import group_options
from conftest import run_advlab


def test_saturation_is_the_identity_at_p2_and_binarises_at_large_p():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(saturate(x, 2), x, atol=1e-6)
    hard = saturate(x, 1e6)
    assert torch.allclose(hard, (x > 0.5).float(), atol=1e-4)  # only the sign of 2x − 1 is left: the silhouette
    mid = saturate(x, 8)
    assert bool(((mid - 0.5).abs() >= (x - 0.5).abs() - 1e-6).all())  # pixels move away from grey, never towards it
    assert torch.equal(saturate(torch.tensor([0.0, 0.5, 1.0]), 16), torch.tensor([0.0, 0.5, 1.0]))  # fixed points
    with pytest.raises(ConfigError, match="^probe.saturation"):
        saturate(x, 0)


def test_patch_shuffle_is_the_identity_at_k1_and_permutes_whole_tiles():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(5, 3, 8, 8, generator=gen)
    assert torch.equal(patch_shuffle(x, 1, torch.Generator().manual_seed(0)), x)
    for k in (2, 4, 8):
        y = patch_shuffle(x, k, torch.Generator().manual_seed(k))
        assert y.shape == x.shape
        for i in range(len(x)):  # every image keeps its multiset of pixel values (per channel)
            for c in range(3):
                assert torch.equal(torch.sort(y[i, c].flatten()).values, torch.sort(x[i, c].flatten()).values)
        t = 8 // k  # and its multiset of tiles: each output tile is one input tile, channels together
        tiles = lambda z: {tuple(z[:, r * t:(r + 1) * t, s * t:(s + 1) * t].flatten().tolist()) for r in range(k) for s in range(k)}
        assert all(tiles(y[i]) == tiles(x[i]) for i in range(len(x)))
        assert not torch.equal(y, x)
    same = patch_shuffle(x, 4, torch.Generator().manual_seed(7)), patch_shuffle(x, 4, torch.Generator().manual_seed(7))
    assert torch.equal(*same)  # seeded: clean and adversarial images get the same permutation
    with pytest.raises(ConfigError, match=r"^probe.patch_shuffle: k=3 must divide"):
        patch_shuffle(x, 3)


def test_probe_app_reports_every_level_for_every_model(advlab_root):
    # a fast-learning MLP on 8×8 digits (the probe transforms the input images, whatever the architecture)
    fast = ["arch=wide_mlp", "arch.width=256", "models.NT.max_epochs=5", "models.AT.max_epochs=2", "attack.steps=2", "probe.n_points=120"]
    run = run_advlab(advlab_root, *fast, "probe.saturation=[2,1024]", "probe.patch_shuffle=[1,4]", "probe.mi.enabled=true", "logger=wandb",
                     module="advlab.apps.probe")
    assert run.returncode == 0, run.stderr[-3000:]
    m = run.metrics
    for model in ("NT", "AT"):
        for key in ("saturation/2", "saturation/1024", "patch_shuffle/1", "patch_shuffle/4"):
            assert 0.0 <= m[f"{model}/{key}/clean_acc"] <= 1.0 and 0.0 <= m[f"{model}/{key}/adversarial_acc"] <= 1.0
        # the identity levels reproduce the accuracy on the untransformed probed points
        for kind in ("clean", "adversarial"):
            assert m[f"{model}/saturation/2/{kind}_acc"] == pytest.approx(m[f"{model}/{kind}_acc"], abs=1e-6)
            assert m[f"{model}/patch_shuffle/1/{kind}_acc"] == pytest.approx(m[f"{model}/{kind}_acc"], abs=1e-6)
        assert m[f"{model}/adversarial_acc"] <= m[f"{model}/clean_acc"]
    assert m["NT/test/acc"] > 0.8
    probe = json.loads((run.run_dir / "probe.json").read_text())
    assert probe["n_points"] == 120
    assert {r["layer"] for r in probe["information"]["NT"]} == {"hidden", "readout"}
    assert {r["estimator"] for r in probe["information"]["AT"]} == {"renyi", "kde_upper", "binning"}
    for model in ("NT", "AT"):  # the untransformed images' information is in metrics.json, equal to probe.json's identity level
        row = next(r for r in probe["information"][model] if (r["probe"], r["level"], r["input"], r["estimator"], r["layer"])
                   == ("saturation", 2.0, "adversarial", "kde_upper", "readout"))
        assert m[f"{model}/mi/adversarial/kde_upper/readout/I_XT"] == row["I_XT"] and m[f"{model}/mi/adversarial/kde_upper/readout/I_TY"] == row["I_TY"]
        assert 0 < m[f"{model}/mi/clean/binning/hidden/I_XT"] <= math.log2(120) + 1e-9
    for name in ("texture_shape.png", "texture_shape_samples.png", "texture_shape_information.png"):
        assert (run.run_dir / "plots" / name).is_file(), name
    assert list((run.run_dir / "wandb").glob("offline-run-*/files/media/images/plots/texture_shape*.png"))
    # a second probe reuses both cached models
    again = run_advlab(advlab_root, *fast, "probe.saturation=[16]", "probe.patch_shuffle=[2]", "logger=csv", module="advlab.apps.probe",
                       run_dir=advlab_root / "again")
    assert again.returncode == 0 and again.log.count("Cache hit") == 2 and "Training model" not in again.log


@pytest.mark.parametrize("overrides,line", [
    (["probe.patch_shuffle=[3]"], "advlab-probe: error: probe.patch_shuffle: k=3 must divide the image height and width (8, 8)"),
    (["probe.saturation=[0]"], "advlab-probe: error: probe.saturation: levels must be numbers > 0, got 0"),
    (["models.AT.method=robust"], "advlab-probe: error: models.AT.method: is a config node: choose its method option with Hydra's package "
                                  f"syntax, method@models.AT.method=<option>; unknown option 'robust', allowed: {', '.join(group_options('method'))}"),
])
def test_probe_bad_input_is_one_line(advlab_root, overrides, line):
    run = run_advlab(advlab_root, *overrides, "logger=csv", module="advlab.apps.probe")
    assert run.returncode == 2 and "Traceback" not in run.log
    assert [ln for ln in run.stderr.splitlines() if ln.strip()] == [line]
    assert not (advlab_root / "cache" / "models").exists()


def test_zhang_probe_preset_runs_the_authors_procedure_and_names_its_app():
    """experiment=zhang_mnist_probe composes in advlab-probe with Zhang et al.'s settings
    (MI_flow_in_forward.py: Saturation_L, test_attack without random start, Conv2d / Linear hooks; their
    training attack from a random start) and passes the pre-flight; in another app it is refused with
    the app it is for, as an advlab-eval preset is in advlab-probe."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.preflight.jobs import precheck
    from advlab.runtime.resolvers import CONF_DIR

    precheck(["experiment=zhang_mnist_probe"], "probe")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="probe", overrides=["experiment=zhang_mnist_probe"])
    assert list(cfg.probe.saturation) == [2, 8, 16, 64, 1024] and list(cfg.probe.patch_shuffle) == [1, 2, 4, 7]
    assert cfg.probe.mi.enabled and cfg.probe.mi.hook_point == "pre_activation"
    assert cfg.attack.random_start is False and cfg.models.AT.attack.random_start is True
    assert cfg.attack.eps == cfg.models.AT.attack.eps == pytest.approx(45 / 255)
    assert cfg.attack.steps == cfg.models.AT.attack.steps == 7
    assert cfg.attack.eps * cfg.attack.rel_step_size == pytest.approx(8 / 255)
    for spec in cfg.models.values():
        assert spec.optimizer.lr == 0.1 and spec.scheduler.interval == "step" and list(spec.scheduler.milestones) == [20, 60]
    for app in ("train", "eval"):
        with pytest.raises(ConfigError, match=r"^experiment: this preset probes texture and shape: it is an advlab-probe preset"):
            precheck(["experiment=zhang_mnist_probe"], app)
    with pytest.raises(ConfigError, match=r"^experiment: this preset compares several models: it is an advlab-eval preset"):
        precheck(["experiment=paknezhad_digits"], "probe")


def test_zhang_cifar10_probe_preset_runs_their_cifar10_procedure():
    """experiment=zhang_cifar10_probe: their WideResNet-10-1 on raw pixels, grids {1, 2, 4, 8} (theirs {0, 2,
    4, 8}: 8 divides 32 px), their hooked modules, PGD L∞ 8/255 with steps of 2/255 for training (random
    start) and probing (none); the pre-flight passes, and the named hooks exist in the built model."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from advlab.analysis.activations import resolve_layers
    from advlab.preflight.jobs import precheck
    from advlab.runtime.resolvers import CONF_DIR

    precheck(["experiment=zhang_cifar10_probe"], "probe")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="probe", overrides=["experiment=zhang_cifar10_probe"])
    assert list(cfg.probe.patch_shuffle) == [1, 2, 4, 8] and list(cfg.probe.saturation) == [2, 8, 16, 64, 1024]
    assert cfg.arch.depth == 10 and cfg.arch.width == 1 and cfg.arch.normalize == "none"
    assert cfg.attack.eps == cfg.models.AT.attack.eps == pytest.approx(8 / 255)
    assert cfg.attack.eps * cfg.attack.rel_step_size == pytest.approx(2 / 255) == cfg.models.AT.attack.eps * cfg.models.AT.attack.rel_step_size
    assert cfg.attack.random_start is False and cfg.models.AT.attack.random_start is True
    assert cfg.dataset.augment is True
    model = instantiate(cfg.arch)(input_shape=(3, 32, 32), num_classes=10)
    assert resolve_layers(model, list(cfg.probe.mi.layers)) == ["conv1", "block1.layer.0.relu1", "block2.layer.0.relu1",
                                                                "block3.layer.0.relu1", "fc"]
