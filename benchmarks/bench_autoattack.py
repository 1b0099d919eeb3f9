"""Benchmark: advlab's AutoAttack against the authors' own code (pyautoattack 0.2.0) — and torchattacks'
re-implementation — on the same model and points, in one run: robust accuracy of each, wall time, and
the ratio reference / advlab (> 1: advlab faster).

    python benchmarks/bench_autoattack.py [--model resnet18|digits] [--n 200] [--eps 1/255] [--attacks standard apgd-ce]

Models:
  resnet18  the real CIFAR-10 ResNet-18 that pyautoattack ships (examples/model_test.pt, its
            examples/resnet.py; standard training, clean ≈ 0.86) on the first ``--n`` shared CIFAR-10
            test images (../shared/data/cifar10-jpeg, decoded once by advlab's CIFAR10JPEGDataModule);
  digits    an MLP trained for a moment on scikit-learn's 8×8 digits (test points).
Runs: ``standard`` (the full standard AutoAttack, both implementations, default 100 iterations, 5,000
Square queries, 9 targets) and ``apgd-ce`` (APGD-CE alone, 100 steps, 1 restart). Both run the whole
point set as one batch, seed 0. pyautoattack and torchattacks reseed the global RNG, so they run inside
``torch.random.fork_rng``. Results: benchmarks/results/autoattack_<model>_<device>.json.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from advlab.attacks import APGD, AutoAttack  # noqa: E402
from advlab.attacks.base import parse_number  # noqa: E402
from advlab.utils.io import write_json  # noqa: E402

SHARED = ROOT.parent / "shared"


def cpu_description() -> dict:
    """The CPU's model name and the flags that decide its speed here (bf16 units, AVX-512)."""
    flags, name = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}}


def resnet18_points(n: int, data_dir: Path = ROOT / "data", shared: Path = SHARED):
    """(pyautoattack's trained CIFAR-10 ResNet-18 in eval mode, the first ``n`` shared CIFAR-10 test
    images in [0, 1], their labels)."""
    import pyautoattack
    from pyautoattack.examples.resnet import ResNet18

    from advlab.data.cifar_jpeg import CIFAR10JPEGDataModule

    model = ResNet18()
    weights = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    dm = CIFAR10JPEGDataModule(data_dir=str(data_dir), zip_dir=str(shared / "data" / "cifar10-jpeg"))
    *_, x_test, y_test, _ = dm._load()
    return model.eval(), x_test[:n].float() / 255, y_test[:n].long()


def digits_points(n: int):
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
    return model.eval(), x[1400:1400 + n], y[1400:1400 + n]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


class _MemberLog(logging.Handler):
    """The reference's per-member lines ("robust accuracy after APGD-CE: 12.50% ..."), as fractions."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.after: dict[str, float] = {}

    def emit(self, record):
        m = re.match(r"robust accuracy after ([A-Z0-9-]+): ([0-9.]+)%", record.getMessage())
        if m:
            self.after[m.group(1).lower()] = float(m.group(2)) / 100


def _reference(model, attack: str, eps: float, norm: str, n: int, members: _MemberLog):
    from pyautoattack import AutoAttack as Reference

    if attack == "standard":
        ref = Reference(model, eps=eps, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], version="standard", seed=0)
    else:
        ref = Reference(model, eps=eps, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], version="custom", attacks=[attack], seed=0)
        ref.apgd.n_restarts = 1
    ref.logger.setLevel(logging.DEBUG)
    ref.logger.propagate = False
    ref.logger.handlers = [members]
    return lambda x, y: ref.run_standard_evaluation(x, y, batch_size=n)[0]


def _torchattacks(model, attack: str, eps: float, norm: str):
    import torchattacks

    tnorm = {"linf": "Linf", "l2": "L2"}.get(norm)
    if tnorm is None:
        return None
    if attack == "standard":
        ta = torchattacks.AutoAttack(model, norm=tnorm, eps=eps, version="standard", n_classes=10, seed=0)
    else:
        ta = torchattacks.APGD(model, norm=tnorm, eps=eps, steps=100, loss="ce", seed=0)
    return ta


def compare(model, x, y, attack: str, eps: float, norm: str = "linf", with_torchattacks: bool = True) -> dict:
    """One comparison: advlab vs pyautoattack (and torchattacks) on (x, y), each timed once."""
    ours = AutoAttack(eps, norm=norm, seed=0) if attack == "standard" else APGD(eps, norm=norm, steps=100, seed=0)
    members = _MemberLog()
    runs = {"advlab": lambda: ours(model, x, y), "pyautoattack": lambda: _reference(model, attack, eps, norm, len(y), members)(x, y)}
    ta = _torchattacks(model, attack, eps, norm) if with_torchattacks else None
    if ta is not None:
        runs["torchattacks"] = lambda: ta(x, y)
    rows = {}
    for name, fn in runs.items():
        with torch.random.fork_rng(devices=[]):
            t0 = time.perf_counter()
            adv = fn().detach()
            seconds = time.perf_counter() - t0
        rows[name] = {"robust_acc": accuracy(model, adv, y), "seconds": round(seconds, 2)}
    if attack == "standard":  # robust accuracy after each member (after APGD-CE: APGD-CE alone, same seed and points)
        rows["advlab"]["members"] = ours.last_run
        rows["advlab"]["robust_after"] = {m["attack"]: m["robust_after"] / len(y) for m in ours.last_run}
        rows["pyautoattack"]["robust_after"] = members.after
    ratio = rows["pyautoattack"]["seconds"] / rows["advlab"]["seconds"]
    return {"attack": attack, "eps": eps, "norm": norm, "n": len(y), "clean_acc": accuracy(model, x, y), "results": rows,
            "time_ratio_reference_over_advlab": round(ratio, 3),
            "robust_acc_diff_pp": round(100 * (rows["advlab"]["robust_acc"] - rows["pyautoattack"]["robust_acc"]), 2)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "digits"])
    ap.add_argument("--n", type=int, default=200, help="points")
    ap.add_argument("--eps", nargs="+", default=None, help="ε values, e.g. 1/255 2/255 (default: 1/255 2/255 resnet18, 0.1 digits)")
    ap.add_argument("--norm", default="linf", choices=["linf", "l2", "l1"])
    ap.add_argument("--attacks", nargs="+", default=["standard"], choices=["apgd-ce", "standard"],
                    help="standard reports the robust accuracy after each member too (after APGD-CE = APGD-CE alone)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-torchattacks", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x, y = resnet18_points(args.n) if args.model == "resnet18" else digits_points(args.n)
    grid = [float(parse_number(e)) for e in (args.eps or (["1/255", "2/255"] if args.model == "resnet18" else ["0.1"]))]
    rows = []
    for eps in grid:
        for attack in args.attacks:
            row = compare(model, x, y, attack, eps, args.norm, with_torchattacks=not args.no_torchattacks)
            rows.append(row)
            r = row["results"]
            print(f"[{args.model}] {attack:8s} eps={eps:.5g} n={row['n']} clean={row['clean_acc']:.3f}  "
                  + "  ".join(f"{k} {v['robust_acc']:.3f} in {v['seconds']:.1f} s" for k, v in r.items())
                  + f"  ratio ref/advlab {row['time_ratio_reference_over_advlab']:.2f}", flush=True)
    result = {"benchmark": "autoattack_vs_pyautoattack", "model": args.model, **cpu_description(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "pyautoattack": importlib.metadata.version("pyautoattack"),
              "load_average_after": list(os.getloadavg()), "rows": rows}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"autoattack_{args.model}_cpu.json"
    write_json(out, result)  # atomic: a reader never sees half a result
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
