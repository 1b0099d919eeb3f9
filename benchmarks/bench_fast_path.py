"""Benchmark: the fast-training path on this machine (RECIPES.md §8) — fp32 vs channels_last vs bf16
vs channels_last + bf16 (and `method.compile=true` on the training step) for (a) one training step through Lightning (`precision="bf16-mixed"`, the
same switch as `trainer.precision=bf16-mixed`) and (b) one PGD input-gradient step (advlab's PGD,
1 step, under `torch.autocast`, as it runs inside a bf16-mixed Lightning loop).

    python benchmarks/bench_fast_path.py [--width 32] [--batch 128] [--steps 6] [--warmup 2] [--threads 2]

Model: advlab's ResNet-9 (random weights) on 3×32×32 inputs, SGD-momentum. Median seconds per step
after `warmup` steps; ratios are fp32 time / variant time (> 1: faster). Writes
benchmarks/results/fast_path_<device>.json (temp file, then rename).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from advlab.attacks import PGD  # noqa: E402
from advlab.utils.io import write_json  # noqa: E402
from advlab.methods import StandardTraining  # noqa: E402
from advlab.models import ResNet9  # noqa: E402

# name: (Lightning precision, channels_last, method.compile); compile is timed on training steps only
# (attacks run eager: see ClassifierModule.training_forward), after its warm-up steps have compiled
VARIANTS = {"fp32": ("32-true", False, False), "channels_last": ("32-true", True, False), "bf16": ("bf16-mixed", False, False),
            "channels_last+bf16": ("bf16-mixed", True, False), "compile": ("32-true", False, True),
            "channels_last+bf16+compile": ("bf16-mixed", True, True)}


def _model(width: int) -> ResNet9:
    torch.manual_seed(0)
    return ResNet9((3, 32, 32), 10, width=width)


def clock(times: list, unit: str):
    """A Lightning callback appending the seconds of each training `unit` ("batch" or "epoch") to `times`."""
    import pytorch_lightning as pl

    start = [0.0]
    hooks = {f"on_train_{unit}_start": lambda self, *a: start.__setitem__(0, time.perf_counter()),
             f"on_train_{unit}_end": lambda self, *a: times.append(time.perf_counter() - start[0])}
    return type("Clock", (pl.Callback,), hooks)()


def train_step_times(width: int, batch: int, steps: int, warmup: int, precision: str, channels_last: bool,
                     compile_on: bool = False) -> list[float]:
    """Seconds per Lightning training step (forward, backward, optimiser step, logging)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    n = batch * (steps + warmup)
    data = TensorDataset(torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    module = StandardTraining(_model(width), {"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9}, channels_last=channels_last,
                              compile=compile_on)
    times: list[float] = []
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, callbacks=[clock(times, "batch")])
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=batch))
    return times[warmup:]


def pgd_step_times(width: int, batch: int, steps: int, warmup: int, bf16: bool, channels_last: bool) -> list[float]:
    """Seconds per call of a 1-step PGD (one forward + input gradient, plus the scoring forward)."""
    model = _model(width).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    attack = PGD(eps=0.5, norm="l2", steps=1, random_start=False, keep_best=False)
    times = []
    for _ in range(steps + warmup):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            attack(model, x, y)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/fast_path_cpu.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"what": "ResNet-9 fast path: Lightning training step and 1-step PGD, fp32 vs channels_last / bf16 / torch.compile",
              "width": args.width, "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
              "cpu": _cpu_name(), "torch": torch.__version__,
              "cpu_flags": {f: _has_flag(f) for f in ("avx512f", "avx512_bf16", "amx_bf16")},
              "load_average": list(os.getloadavg()), "train_step_s": {}, "pgd_step_s": {}}
    for name, (precision, cl, compile_on) in VARIANTS.items():
        result["train_step_s"][name] = statistics.median(train_step_times(args.width, args.batch, args.steps, args.warmup, precision, cl, compile_on))
        if not compile_on:
            result["pgd_step_s"][name] = statistics.median(pgd_step_times(args.width, args.batch, args.steps, args.warmup, precision != "32-true", cl))
        pgd = f", PGD step {result['pgd_step_s'][name]:.3f} s" if name in result["pgd_step_s"] else ""
        print(f"{name:>26}: train step {result['train_step_s'][name]:.3f} s{pgd}", flush=True)
    for kind in ("train_step", "pgd_step"):
        base = result[f"{kind}_s"]["fp32"]
        result[f"{kind}_speedup"] = {k: round(base / v, 3) for k, v in result[f"{kind}_s"].items()}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "fast_path_cpu.json"
    write_json(out, result)  # atomic: a reader never sees half a result
    print(json.dumps({k: result[k] for k in ("train_step_speedup", "pgd_step_speedup")}), f"-> {out}")
    return result


def _cpu_name() -> str:
    try:
        return next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _has_flag(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


if __name__ == "__main__":
    main()
