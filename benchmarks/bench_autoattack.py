"""Benchmark: advlab AutoAttack (standard) against torchattacks' AutoAttack(version="standard") on the
same model and points, and advlab APGD-CE against torchattacks' APGD.

    python benchmarks/bench_autoattack.py [--device cpu|cuda] [--model digits|resnet|both] [--n 128]

Models:
  digits  an MLP trained for a moment on scikit-learn's 8×8 digits (1×8×8 inputs, test points):
          a real mix of robust and non-robust points, so every member of the ensemble runs;
  resnet  the SmallResNet of bench_attacks.py (random weights, 3×32×32 uniform inputs, labels = its
          own clean predictions so every point starts robust): model-bound timing.
torchattacks' AutoAttack runs its APGD, APGD-T and FAB-T with 10 steps (and n_classes − 1 = 9
targets, Square with 5,000 queries); ours is configured the same for the comparison. Reported: robust
accuracy of each (and the difference in percentage points), wall time, time ratio theirs / ours
(> 1: ours faster), ours' per-member report. torchattacks reseeds the global RNG, so it runs inside
``torch.random.fork_rng``. Results go to benchmarks/results/autoattack_<device>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from advlab.utils.io import write_json  # noqa: E402
from advlab.attacks import APGD, AutoAttack  # noqa: E402
from bench_attacks import SmallResNet, environment, reference_and_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def digits_problem(n: int, device):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(150):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:1400]), y[:1400]).backward()
            opt.step()
    return model.to(device).eval(), x[1400:1400 + n].to(device), y[1400:1400 + n].to(device)


def resnet_problem(n: int, device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SmallResNet().to(device).eval()
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


PROBLEMS = {"digits": (digits_problem, 0.1), "resnet": (resnet_problem, 8 / 255)}


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _timed(fn, device, reps: int):
    times, out = [], None
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return out, times


def bench(key: str, args, device, ta) -> dict:
    make, default_eps = PROBLEMS[key]
    eps = args.eps if args.eps is not None else default_eps
    model, x, y = make(args.n, device)
    clean = _acc(model, x, y)
    rows = {}
    ours = AutoAttack(eps, apgd_steps=10, fab_steps=10, square_queries=args.queries, n_target_classes=9)
    theirs = ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    apgd_ours = APGD(eps, steps=args.apgd_steps)
    apgd_theirs = ta.APGD(model, norm="Linf", eps=eps, steps=args.apgd_steps, loss="ce")
    runs = {"advlab AutoAttack": lambda: ours(model, x, y), "torchattacks AutoAttack": lambda: theirs(x, y),
            "advlab APGD-CE": lambda: apgd_ours(model, x, y), "torchattacks APGD-CE": lambda: apgd_theirs(x, y)}
    for name, fn in runs.items():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            adv, times = _timed(fn, device, args.reps)
        adv = adv.detach()
        linf = float((adv - x).abs().max())
        rows[name] = {"robust_acc": _acc(model, adv, y), "median_s": statistics.median(times), "times_s": times,
                      "max_linf": linf}
        if name == "advlab AutoAttack":
            rows[name]["members"] = ours.last_run
    res = {"model": key, "n": args.n, "eps": eps, "clean_acc": clean, "results": rows}
    for what in ("AutoAttack", "APGD-CE"):
        a, b = rows[f"advlab {what}"], rows[f"torchattacks {what}"]
        res[f"{what}_time_ratio_theirs_over_ours"] = b["median_s"] / a["median_s"]
        res[f"{what}_robust_acc_diff_pp"] = 100 * (a["robust_acc"] - b["robust_acc"])
    print(f"\n[{key}] n={args.n} eps={eps:.4g} clean={clean:.3f}")
    for name, r in rows.items():
        print(f"  {name:26s} robust {r['robust_acc']:.4f}  {r['median_s']:8.2f} s")
    for what in ("AutoAttack", "APGD-CE"):
        print(f"  {what}: time ratio theirs/ours {res[f'{what}_time_ratio_theirs_over_ours']:.2f}, "
              f"robust acc ours − theirs {res[f'{what}_robust_acc_diff_pp']:+.2f} pp")
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="both", choices=["digits", "resnet", "both"])
    ap.add_argument("--n", type=int, default=128, help="points")
    ap.add_argument("--eps", type=float, default=None, help="L∞ ε (default: 0.1 digits, 8/255 resnet)")
    ap.add_argument("--queries", type=int, default=5000, help="Square queries (torchattacks' AutoAttack: 5000)")
    ap.add_argument("--apgd-steps", type=int, default=100, help="steps of the APGD-CE comparison")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torchattacks, device = reference_and_device(args.device, args.threads)
    keys = list(PROBLEMS) if args.model == "both" else [args.model]
    models = [bench(k, args, device, torchattacks) for k in keys]
    result = {
        "benchmark": "autoattack_vs_torchattacks", **environment(device, torchattacks),
        "reps": args.reps, "square_queries": args.queries, "apgd_steps": args.apgd_steps, "models": models,
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"autoattack_{device.type}.json"
    write_json(out, result)  # atomic: a reader never sees half a result
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
