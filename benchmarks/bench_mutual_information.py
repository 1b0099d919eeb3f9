"""Cost of the mutual-information callback (RECIPES.md §6), in one run.

    python benchmarks/bench_mutual_information.py [--device cpu|cuda] [--rounds 2] [--threads 1]

1. Cost per call: `MutualInformation.measure` on N = 1000 digits training images and their PGD
   copy (L∞ ε = 45/255, 7 steps of 8/255, against the model), 4 layers of the cnn (two pools, the
   hidden ReLU, the logits), all four estimators (KDE upper / lower, binning, Rényi); median of 3.
2. Overhead: a `standard` cnn run on digits through advlab-train (30 epochs, W&B off) with
   `callbacks=default` and with `callbacks=mi` (its default schedule and N), alternating
   (A B B A ...); ratio of the median wall times (target <= 1.20). The two runs must train the same
   weights (the callback uses its own generators): their test accuracies are compared too.

`--threads N` sets torch's threads here and OMP_NUM_THREADS in the runs (on a small CPU shared with
other jobs, 1 thread avoids the busy-waiting of oversubscribed OpenMP threads).
Writes benchmarks/results/mutual_information_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from advlab.attacks import PGD
from advlab.callbacks import MutualInformation
from advlab.data import DigitsDataModule
from advlab.models import CNN
from advlab.utils.io import write_json

REPO = Path(__file__).resolve().parents[1]


def cost_per_call(device: torch.device, repeats: int = 3) -> dict:
    dm = DigitsDataModule(seed=0)
    dm.setup()
    torch.manual_seed(0)
    model = CNN(dm.input_shape, dm.num_classes, mean=dm.mean, std=dm.std).to(device)
    # a few SGD epochs, so that the representations are those of a model that has learnt something
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        for i in range(0, len(dm.x_train), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(dm.x_train[i:i + 128].to(device)), dm.y_train[i:i + 128].to(device)).backward()
            opt.step()
    attack = PGD(eps=45 / 255, norm="linf", steps=7, rel_step_size=8 / 45, random_start=True)
    cb = MutualInformation(n_points=1000, split="train", attack=attack)
    cb.attach(dm, model)
    times = []
    for r in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        rows = cb.measure(model, epoch=r)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"n_points": len(cb._y), "layers": cb.layers, "estimators": list(cb.estimator.estimators), "values_per_call": 2 * len(rows),
            "seconds_per_call": times, "median_seconds_per_call": statistics.median(times)}


def train_run(callbacks: str, root: Path, name: str, accelerator: str, threads: int | None) -> dict:
    run_dir = root / name
    env = {**os.environ, "ADVLAB_ROOT": str(root), "WANDB_MODE": "offline"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    args = [sys.executable, "-m", "advlab.apps.train", "method=standard", "arch=cnn", "logger=csv", f"callbacks={callbacks}",
            f"trainer.accelerator={accelerator}", f"hydra.run.dir={run_dir}"]
    t = time.perf_counter()
    proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"wall_s": wall, "total_s": metrics["time/total_s"], "test_acc": metrics["test/acc"],
            "mi_seconds_per_call": metrics.get("mi/seconds_per_call"),
            "mi_calls": len(json.loads((run_dir / "mi_history.json").read_text())["meta"]["seconds_per_call"]) if callbacks == "mi" else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each kind, alternating")
    ap.add_argument("--threads", type=int, default=None, help="torch / OpenMP threads (default: torch's choice)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cost = cost_per_call(device)
    print(f"cost per call (N={cost['n_points']}, {len(cost['layers'])} layers, clean + PGD copy, {len(cost['estimators'])} estimators): "
          f"median {cost['median_seconds_per_call']:.3f} s  {['%.3f' % t for t in cost['seconds_per_call']]}")
    runs = {"default": [], "mi": []}
    with tempfile.TemporaryDirectory() as tmp:
        order = []
        for r in range(args.rounds):
            order += ["default", "mi"] if r % 2 == 0 else ["mi", "default"]
        for i, kind in enumerate(order):
            res = train_run(kind, Path(tmp), f"{kind}{i}", "gpu" if device.type == "cuda" else "cpu", args.threads)
            runs[kind].append(res)
            print(f"{kind:<8} wall {res['wall_s']:.2f} s  (run's own time {res['total_s']:.2f} s, test/acc {res['test_acc']:.4f}"
                  + (f", {res['mi_calls']} MI calls of {res['mi_seconds_per_call']:.3f} s" if kind == "mi" else "") + ")")
    base = statistics.median(r["wall_s"] for r in runs["default"])
    with_mi = statistics.median(r["wall_s"] for r in runs["mi"])
    report = {
        "device": str(device), "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "cost_per_call": cost, "runs": runs,
        "median_wall_s": {"default": base, "mi": with_mi},
        "overhead_ratio": with_mi / base, "target_ratio_max": 1.20,
        "same_test_acc": len({r["test_acc"] for r in runs["default"] + runs["mi"]}) == 1,
    }
    print(f"standard cnn on digits, 30 epochs: {base:.2f} s without, {with_mi:.2f} s with the MI callback: ratio {report['overhead_ratio']:.3f} "
          f"(target <= 1.20); same test accuracy: {report['same_test_acc']}; load average {load_before[0]:.1f} -> {report['load_average_after'][0]:.1f}")
    write_json(Path(args.out) / f"mutual_information_{device.type}.json", report)


if __name__ == "__main__":
    main()
