"""The fast-training path (issue 12): per-step lr schedules, label smoothing, channels_last."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from advlab.errors import ConfigError
from advlab.methods import StandardTraining
from advlab.methods.schedules import one_cycle, warmup_linear
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


def test_one_cycle_peaks_at_the_optimisers_lr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2, momentum=0.9)
    lrs = _lrs(one_cycle(opt, total_steps=20, pct_start=0.25), 20)
    assert lrs[0] == pytest.approx(0.2 / 25) and max(lrs) == pytest.approx(0.2, rel=1e-3)
    assert lrs.index(max(lrs)) in (4, 5) and lrs[-1] < 0.01 * 0.2
    with pytest.raises(ConfigError, match="total_steps"):
        one_cycle(opt, total_steps=0)


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
        with pytest.raises(ConfigError, match="method.label_smoothing"):
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
    with pytest.raises(ConfigError, match="method.channels_last"):
        StandardTraining(a, {}, channels_last="yes")
