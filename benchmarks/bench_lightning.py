"""Lightning overhead: one `standard` training epoch through advlab's LightningModule and Trainer
against a plain PyTorch loop on the same model, data loader, optimiser and device.

    python benchmarks/bench_lightning.py [--device cpu|cuda] [--epochs 3] [--n 8192] [--arch cnn|mlp]

Prints seconds per epoch (median over the timed epochs, after one warm-up epoch) and the ratio
lightning / plain (target <= 1.15). Writes benchmarks/results/lightning_<device>.json.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from advlab.data.base import make_loader
from advlab.methods import StandardTraining
from advlab.models import CNN, MLP
from advlab.utils.io import write_json

OPT = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4})


class EpochTimer(pl.Callback):
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_train_epoch_start(self, trainer, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def plain_loop(model, loader, device, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    times = []
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def lightning_loop(model, loader, device, epochs, progress_bar):
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress_bar,
                         callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(StandardTraining(model, OPT), train_dataloaders=loader)
    return timer.times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per measurement; the first is warm-up")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--arch", default="cnn", choices=("cnn", "mlp"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x, y = torch.rand(args.n, 1, 28, 28), torch.randint(0, 10, (args.n,))
    loader = make_loader(torch.utils.data.TensorDataset(x, y), args.batch, shuffle=True, seed=0)
    make = (lambda: CNN((1, 28, 28), 10)) if args.arch == "cnn" else (lambda: MLP((1, 28, 28), 10, depth=2, width=1024))
    base = make()
    results = {}
    # interleave the two to share machine noise fairly
    for name, fn in (("plain", lambda m: plain_loop(m, loader, device, args.epochs)),
                     ("lightning", lambda m: lightning_loop(m, loader, device, args.epochs, False)),
                     ("lightning_progress_bar", lambda m: lightning_loop(m, loader, device, args.epochs, True)),
                     ("plain_again", lambda m: plain_loop(m, loader, device, args.epochs))):
        times = fn(copy.deepcopy(base).to(device))
        results[name] = statistics.median(times[1:])
    plain = min(results["plain"], results["plain_again"])
    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "arch": args.arch, "n": args.n, "batch": args.batch, "torch": torch.__version__, "lightning": pl.__version__,
        "seconds_per_epoch": results,
        "ratio_lightning_over_plain": results["lightning"] / plain,
        "ratio_with_progress_bar": results["lightning_progress_bar"] / plain,
        "target_ratio_max": 1.15,
    }
    print(f"{'loop':<26}{'s/epoch':>10}")
    for k, v in results.items():
        print(f"{k:<26}{v:>10.4f}")
    print(f"ratio lightning/plain: {report['ratio_lightning_over_plain']:.3f} (with progress bar {report['ratio_with_progress_bar']:.3f}); target <= 1.15")
    write_json(Path(args.out) / f"lightning_{device.type}.json", report)


if __name__ == "__main__":
    main()
