"""Benchmark: advlab PGD (L∞) against torchattacks' PGD on the same model, batch, ε, α and steps.

    python benchmarks/bench_attacks.py [--device cpu|cuda] [--steps 10] [--batch 256] [--reps 5]

Models (random weights; speed does not depend on training), inputs 3×32×32:
  resnet  a small ResNet-style CNN: the model's forward/backward dominates, as in real use;
  linear  one linear layer: shows the attack's own per-step overhead.
No random start, so our keep_best=False output must equal torchattacks' (checked and
reported). Repetitions are interleaved across the compared attacks after a warm-up; the median
time is reported. Results go to benchmarks/results/attacks_<device>.json (temp file, then rename).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from advlab.utils.io import write_json  # noqa: E402
from advlab.attacks import PGD  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class SmallResNet(nn.Module):
    """Normalisation layer + stem + 3 residual stages (16/32/64 channels) + linear head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(self.stem((x - self.mean) / self.std))
        return self.head(x.mean(dim=(2, 3)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(runs: dict, reps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each of `runs` (name -> callable), `reps` times each, synchronised on CUDA. Interleaved,
    so drifts in machine load hit every run alike, and in a rotating order: on a busy 2-core CPU the
    first run of a round is measurably slower than the others."""
    times = {name: [] for name in runs}
    names = list(runs)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            runs[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


MODELS = {
    "resnet": ("SmallResNet 3x32x32 (16/32/64 channels, random weights, eval mode): model-bound", SmallResNet),
    "linear": ("Linear 3072->10 (random weights): the attack's own per-step overhead dominates",
               lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))),
}
REPS_FACTOR = {"resnet": 1, "linear": 6}  # the linear runs are ~100x cheaper: more reps, steadier medians
THEIRS = "torchattacks PGD"


def bench_model(key: str, args, device: torch.device, torchattacks) -> dict:
    description, make = MODELS[key]
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the model's random init only; the attacks do not touch the global RNG
        model = make().to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)

    common = dict(eps=args.eps, norm="linf", steps=args.steps, step_size=args.alpha, random_start=False)
    ours_plain = PGD(keep_best=False, **common)
    ours_best = PGD(keep_best=True, **common)
    theirs = torchattacks.PGD(model, eps=args.eps, alpha=args.alpha, steps=args.steps, random_start=False)
    runs = {
        "advlab PGD keep_best=False": lambda: ours_plain(model, x, y),
        "advlab PGD keep_best=True": lambda: ours_best(model, x, y),
        THEIRS: lambda: theirs(x, y),
    }

    outputs = {}
    for name, fn in runs.items():  # warm-up (allocator, cudnn autotune, first-call overheads)
        outputs[name] = fn()
        fn()
    _sync(device)
    ref = outputs[THEIRS]
    max_diff = {name: float((out - ref).abs().max()) for name, out in outputs.items() if name != THEIRS}

    reps = args.reps * REPS_FACTOR[key]
    times = interleaved_times(runs, reps, device)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    rows = []
    print(f"\n[{key}] {description}  (reps={reps})")
    print(f"{'attack':32s} {'median s':>10s} {'min s':>9s} {'img/s':>10s} {'ours/theirs':>12s} {'(by min)':>9s} "
          f"{'max|Δ| vs TA':>13s}")
    for name in runs:
        thr = args.batch / med[name]
        ratio = med[THEIRS] / med[name]
        ratio_min = min(times[THEIRS]) / min(times[name])
        diff = max_diff.get(name)
        rows.append({"attack": name, "median_s": med[name], "min_s": min(times[name]), "times_s": times[name],
                     "images_per_s": thr, "throughput_ratio_vs_torchattacks": ratio,
                     "throughput_ratio_vs_torchattacks_by_min": ratio_min, "max_abs_diff_vs_torchattacks": diff})
        print(f"{name:32s} {med[name]:10.4f} {min(times[name]):9.4f} {thr:10.1f} {ratio:12.3f} {ratio_min:9.3f} "
              f"{'' if diff is None else f'{diff:.2e}':>13s}")
    return {"model": key, "description": description, "reps": reps, "results": rows}


def reference_and_device(device_name: str, threads: int | None):
    """(the torchattacks module, the torch device) for a benchmark against torchattacks, or exit with
    one line when either is missing."""
    try:
        import torchattacks
    except ImportError:
        sys.exit("torchattacks is not installed: pip install --no-deps torchattacks")
    if device_name == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but CUDA is not available")
    if threads:
        torch.set_num_threads(threads)
    return torchattacks, torch.device(device_name)


def environment(device: torch.device, torchattacks) -> dict:
    """What a benchmark result records of where it ran."""
    return {"device": device.type,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__, "torchattacks": getattr(torchattacks, "__version__", "?"),
            "threads": torch.get_num_threads(), "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--alpha", type=float, default=2 / 255)
    ap.add_argument("--model", default="both", choices=["resnet", "linear", "both"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/attacks_<device>.json)")
    args = ap.parse_args(argv)

    torchattacks, device = reference_and_device(args.device, args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"PGD L∞  device={device.type}  batch={args.batch}  steps={args.steps}  eps={args.eps:.4g}  "
          f"alpha={args.alpha:.4g}  reps={args.reps} (median; ratio = their time / our time)  "
          f"threads={torch.get_num_threads()}")
    keys = list(MODELS) if args.model == "both" else [args.model]
    models = [bench_model(key, args, device, torchattacks) for key in keys]

    result = {
        "benchmark": "pgd_linf_vs_torchattacks",
        **environment(device, torchattacks),
        "batch": args.batch, "steps": args.steps, "eps": args.eps, "alpha": args.alpha, "reps": args.reps,
        "random_start": False, "models": models,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"attacks_{device.type}.json"
    write_json(out, result)  # atomic: a reader never sees half a result
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
