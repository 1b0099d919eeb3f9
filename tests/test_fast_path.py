"""The fast-training path (issue 12): per-step lr schedules, label smoothing, channels_last."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from advlab.errors import ConfigError
from advlab.methods import StandardTraining
from advlab.methods.schedules import linear_cosine, one_cycle, warmup_linear
from advlab.models import MLP, ResNet9

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lrs(scheduler, n):
    out = []
    for _ in range(n):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_warmup_linear_rises_to_the_configured_lr_then_decays_to_final():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    lrs = _lrs(warmup_linear(opt, total_steps=10, warmup=0.2, final=0.1), 10)
    assert lrs[:2] == pytest.approx([0.2, 0.4])  # warm-up: 2 of 10 steps
    assert max(lrs) == pytest.approx(0.4) and lrs[-1] == pytest.approx(0.04)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))  # then strictly down
    with pytest.raises(ConfigError, match="method.scheduler.warmup"):
        warmup_linear(opt, 10, warmup=1.5)


def test_linear_cosine_is_paknezhads_schedule():
    """Their LinearCosineLR restated: batch i (from 0) at lr(i) = base for i ≤ ⌈T/2⌉, else
    base/2·(cos(π(i − ⌈T/2⌉)/(T − ⌈T/2⌉)) + 1)."""
    import math

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    lrs = _lrs(linear_cosine(opt, total_steps=11, constant=0.5), 11)
    theirs = [1e-3 if i <= 6 else 1e-3 / 2 * (math.cos(math.pi * (i - 6) / 5) + 1) for i in range(11)]
    assert lrs == pytest.approx(theirs) and lrs[6] == 1e-3 and lrs[7] < 1e-3 and lrs[-1] < 0.1 * 1e-3
    with pytest.raises(ConfigError, match="method.scheduler.constant"):
        linear_cosine(opt, 10, constant=2.0)


def test_one_cycle_peaks_at_the_optimisers_lr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2, momentum=0.9)
    lrs = _lrs(one_cycle(opt, total_steps=20, pct_start=0.25), 20)
    assert lrs[0] == pytest.approx(0.2 / 25) and max(lrs) == pytest.approx(0.2, rel=1e-3)
    assert lrs.index(max(lrs)) in (4, 5) and lrs[-1] < 0.01 * 0.2
    with pytest.raises(ConfigError, match="total_steps"):
        one_cycle(opt, total_steps=0)


@pytest.mark.parametrize("steps", [2, 3, 4, 5])
def test_one_cycle_of_a_few_steps_runs_up_then_down(steps):
    """torch's OneCycleLR divides by pct_start·T − 1: at T = 4 and pct_start 0.25 it raised ZeroDivisionError
    (a quick run on 512 images, batch 128, one epoch)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2, momentum=0.9)
    lrs = _lrs(one_cycle(opt, total_steps=steps, pct_start=0.25), steps)
    assert lrs[0] == pytest.approx(0.2 / 25) and max(lrs) <= 0.2 + 1e-9 and lrs[-1] < lrs[0]


def test_step_schedule_fills_total_steps_from_the_trainer_and_steps_every_batch(tmp_path):
    import pytorch_lightning as pl

    from advlab.data import DigitsDataModule

    dm = DigitsDataModule(seed=0, max_train=64, batch_size=16)
    dm.setup()
    sched = {"_target_": "advlab.methods.schedules.warmup_linear", "interval": "step", "total_steps": None, "warmup": 0.25}
    module = StandardTraining(MLP(dm.input_shape, 10, width=16), {"_target_": "torch.optim.SGD", "lr": 0.1}, sched)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Record()], default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    steps = len(seen)
    assert steps == int(trainer.estimated_stepping_batches) >= 6
    assert max(seen) == pytest.approx(0.1) and seen[0] < 0.1 and seen[-1] < seen[len(seen) // 2]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)  # decayed to final=0 at the last step


def test_label_smoothing_is_the_methods_loss_and_is_checked():
    model = MLP((4,), 3, width=8)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    smooth = StandardTraining(model, {"_target_": "torch.optim.SGD", "lr": 0.1}, label_smoothing=0.1)
    plain = StandardTraining(model, {"_target_": "torch.optim.SGD", "lr": 0.1})
    assert smooth.loss(logits, y) == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item())
    assert plain.loss(logits, y) == pytest.approx(F.cross_entropy(logits, y).item())
    assert smooth.loss(logits, y).item() != pytest.approx(plain.loss(logits, y).item())
    for bad in (-0.1, 1.0, "a"):
        with pytest.raises(ConfigError, match="^label_smoothing: "):
            StandardTraining(model, {}, label_smoothing=bad)


def test_channels_last_converts_conv_weights_and_keeps_the_outputs():
    torch.manual_seed(0)
    a = ResNet9((3, 32, 32), 10, width=4).eval()
    b = ResNet9((3, 32, 32), 10, width=4).eval()
    b.load_state_dict(a.state_dict())
    StandardTraining(b, {}, channels_last=True)
    conv = b.body[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    with pytest.raises(ConfigError, match="^channels_last: "):
        StandardTraining(a, {}, channels_last="yes")


def _fit_two_epochs(compile_on: bool, dm, tmp_path):
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)
    module = StandardTraining(MLP(dm.input_shape, 10, width=16), {"_target_": "torch.optim.SGD", "lr": 0.1}, compile=compile_on)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm.fresh())
    return module


def test_compile_trains_the_same_weights_and_keeps_the_state_dict_and_the_cache_key(tmp_path):
    """method.compile=true: the training forward/backward runs through torch.compile (inductor); the
    weights after 2 epochs equal eager training's to float tolerance (a wrong graph, e.g. a frozen
    BatchNorm/dropout or a missed gradient, differs by orders more), the state dict has no
    `_orig_mod.` copies, and `compile: false` leaves a model's cache key as it was."""
    from omegaconf import OmegaConf

    from advlab.artifacts.models import Artifacts
    from advlab.artifacts.cache import ArtifactCache
    from advlab.data import DigitsDataModule

    dm = DigitsDataModule(seed=0, max_train=128, batch_size=32)
    dm.setup()
    eager, compiled = _fit_two_epochs(False, dm, tmp_path), _fit_two_epochs(True, dm, tmp_path)
    assert compiled._compiled and isinstance(compiled._compiled[0], torch._dynamo.eval_frame.OptimizedModule)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    moved = max(float((a - b).abs().max()) for a, b in zip(eager.model.state_dict().values(), MLP(dm.input_shape, 10, width=16).state_dict().values()))
    gap = max(float((a - b).abs().max()) for a, b in zip(eager.model.state_dict().values(), compiled.model.state_dict().values()))
    assert moved > 0.05 and gap < 1e-4
    with pytest.raises(ConfigError, match="^compile: "):
        StandardTraining(MLP((4,), 3, width=8), {}, compile="yes")
    artifacts = Artifacts(ArtifactCache(tmp_path / "cache"))
    spec = {"arch": {"_target_": "advlab.models.MLP", "width": 16}, "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1},
            "max_epochs": 1, "seed": 0, "method": {"_target_": "advlab.methods.StandardTraining", "label_smoothing": 0.0}}
    keys = [artifacts.model_spec(OmegaConf.create({**spec, "method": {**spec["method"], **extra}}), dm)["method"]
            for extra in ({}, {"compile": False}, {"compile": True})]
    assert keys[0] == keys[1] != keys[2] and keys[2]["compile"] is True


def test_ilyas_cifar10_cpu_preset_composes_passes_the_preflight_and_shares_its_source():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from advlab.artifacts.models import Artifacts
    from advlab.preflight.jobs import precheck
    from advlab.preflight.app_keys import validate
    from advlab.runtime.resolvers import CONF_DIR
    from advlab.derived import split_method

    precheck(["experiment=ilyas_cifar10_cpu", "-m"], "train")  # composes and validates every job of its sweep (both rules)
    cfgs = {}
    for rule in ("det", "rand"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfgs[rule] = compose("train", overrides=["experiment=ilyas_cifar10_cpu", f"derived.target_rule={rule}"], return_hydra_config=True)
        validate(cfgs[rule])
    GlobalHydra.instance().clear()
    cfg = cfgs["det"]
    assert list(cfg.hydra.sweeper.params.items()) == [("derived.target_rule", "det,rand")]
    assert cfg.dataset._target_ == "advlab.data.CIFAR10JPEGDataModule" and cfg.arch.width == 16
    assert cfg.attack.norm == "l2" and cfg.attack.eps == 1.5 and cfg.attack.steps == 8
    assert cfg.derived.target_rule == "det" and cfgs["rand"].derived.target_rule == "rand"
    assert cfg.scheduler._target_.endswith("one_cycle") and cfg.source.scheduler.interval == "step"

    class Data:  # the two parts of a datamodule a model spec's cache key reads
        batch_size = cfg.dataset.batch_size

        def describe(self):
            return {"name": "cifar10_jpeg"}

    artifacts = Artifacts(None, trainer=cfg.trainer)
    keys = [artifacts.model_spec(OmegaConf.merge(c.source, {"arch": c.arch}), Data()) for c in cfgs.values()]
    assert keys[0] == keys[1] and keys[0]["method"]["label_smoothing"] == 0.1  # one source for both rules
    # the source trains at the run's precision, `auto`: bf16-mixed where bf16 is native (its key then records
    # it: a cached fp32 source is another model), else 32-true (the key of the default training)
    from advlab.utils.hardware import resolve_precision

    fast = resolve_precision("auto", cfg.trainer.accelerator).value == "bf16-mixed"
    assert cfg.trainer.precision == "auto" and keys[0]["optimizer"]["nesterov"] is True
    assert keys[0].get("trainer") == ({"precision": "bf16-mixed"} if fast else None)
    model = ResNet9((3, 32, 32), 10, **{k: v for k, v in cfg.arch.items() if k in ("width", "logit_scale")})

    attack = instantiate(cfg.attack, bounds=[0.0, 1.0])
    training, derived, _ = split_method(cfg.method, cfg.get("derived"))
    method = instantiate(training, model=model, optimizer=instantiate(cfg.optimizer), eval_attack=None, _recursive_=False)
    assert method.label_smoothing == 0.1 and method.channels_last and derived.batch_size == 500
    assert attack.steps == 8 and attack.alpha == pytest.approx(0.375) and attack.keep_best


@pytest.mark.parametrize("app,sweep,n_jobs", [("transfer", "transfer_cifar10_cpu", 36), ("train", "cross_arch_perturbation_cifar10_cpu", 16)])
def test_cifar10_cpu_sweeps_pass_the_preflight_with_every_architecture_family(app, sweep, n_jobs):
    """Every job of the CIFAR-10 CPU sweeps composes and validates; the CPU-width archs are distinct families."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.preflight.jobs import precheck
    from advlab.runtime.resolvers import CONF_DIR

    precheck([f"sweep={sweep}"], app)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(app, overrides=[f"sweep={sweep}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = {k: v.split(",") for k, v in cfg.hydra.sweeper.params.items()}
    archs = params["arch@source.arch"]
    assert len(archs) * len(params.get("arch@target.arch", params.get("arch", []))) == n_jobs
    targets = set()
    for name in archs:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            arch = compose(app, overrides=[f"sweep={sweep}", f"arch@source.arch={name}"]).source.arch
        GlobalHydra.instance().clear()
        targets.add(arch._target_)
        assert arch.normalize == "standardize"
    assert len(targets) == len(archs) >= (5 if app == "transfer" else 4)
    assert cfg.dataset._target_ == "advlab.data.CIFAR10JPEGDataModule" and cfg.dataset.max_train == 10000
