"""Benchmark: evaluation that stops once a point is broken. advlab's PGD-10 as its evaluations run it
(best iterate kept, ``stop_on_success``: a point leaves the batch at its first misclassifying iterate)
against torchattacks' PGD-10 (the reference, last iterate, every point every step) on the same points
of a real CIFAR-10 ResNet-18, in fp32; and the FLOP/s that one training step and one PGD step of the
CPU preset's network reach, against this machine's fp32 GEMM peak measured in the same run.

    python benchmarks/bench_early_stop.py [--n 200] [--batch 50] [--eps 2/255 8/255] [--threads 1] [--verify-off]
    python benchmarks/bench_early_stop.py --eps 1/255 --skip-flops --append   # points that survive: a non-trivial flag check

Attacks: no random start on both (the two libraries cannot share one), step 2.5ε/10, 10 steps, cross-
entropy. Each timing is the whole evaluation of the points: clean prediction, attack, prediction of the
attacked points; the two run on the same batches, interleaved. Robust = correct clean and attacked; the
per-sample flags of both are compared. advlab keeps the best iterate, torchattacks returns the last: a
point broken at step 4 and repaired by step 10 is broken for advlab only, so advlab's robust accuracy can
only be lower or equal (counted as ``advlab_only_broken``). ``--verify-off`` also runs advlab without stopping (same flags by construction).
Model evaluations are counted in rows forwarded (a wrapper module).

Model: pyautoattack's CIFAR-10 ResNet-18 (examples/model_test.pt, standard training) on the first ``--n``
shared CIFAR-10 test images (benchmarks/bench_autoattack.py ``resnet18_points``). FLOP/s: the network of
conf/experiment/ilyas_cifar10_cpu.yaml (composed with Hydra, so a retuned preset is what is measured) at
its training batch size and crafting batch size, fp32, its memory format; FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, forward and backward); timed in
``--reps`` rounds of (peak: the best of 3 2048×2048 fp32 ``torch.matmul``; a training step; a PGD step),
each step's fraction of its round's peak (median over rounds; and best step / best peak). The machine
may be shared: the load average is recorded before and after, and one torch thread is the default (on
a shared machine a multi-threaded pool waits for its descheduled threads: a ResNet-18 step measured 2-4×
slower with 2 threads than with 1 on 2 cores at load 5; the peak is measured with the same threads). Results: benchmarks/results/early_stop_cpu.json.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from advlab.attacks import PGD  # noqa: E402
from advlab.attacks.base import parse_number  # noqa: E402
from advlab.attacks.pgd import early_stopping  # noqa: E402
from advlab.utils.io import write_json  # noqa: E402
from bench_autoattack import cpu_description, resnet18_points  # noqa: E402

STEPS = 10


class Counting(nn.Module):
    """Forwards to ``model``, counting the rows (samples) it evaluates."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def _correct(model, x, y) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


def _evaluate_batch(model: Counting, attack, xb, yb, record: dict) -> None:
    """Robust flags of ``attack`` (a callable (x, y) -> x_adv) on one batch, timed and counted into ``record``."""
    rows = model.rows
    t0 = time.perf_counter()
    ok = _correct(model, xb, yb)
    ok &= _correct(model, attack(xb, yb), yb)
    record["s"] += time.perf_counter() - t0
    record["model_rows"] += model.rows - rows
    record["robust"].append(ok)


def compare_at(model: Counting, x, y, eps: float, batch: int, verify_off: bool) -> dict:
    """Both attacks on the same batches, interleaved batch by batch (in alternating order) so that a
    load that changes over time on a shared machine weighs on both alike."""
    import torchattacks

    alpha = 2.5 * eps / STEPS
    ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=STEPS, random_start=False)
    ours = PGD(eps, norm="linf", steps=STEPS, step_size=alpha, random_start=False, keep_best=True)

    def advlab(xb, yb):
        with early_stopping(ours):  # as evaluate_attack / test_step / robustness curves run it
            return ours(model, xb, yb)

    attacks = {"torchattacks": ta, "advlab": advlab}
    if verify_off:
        attacks["advlab_no_stop"] = lambda xb, yb: ours(model, xb, yb)
    runs = {name: {"s": 0.0, "model_rows": 0, "robust": []} for name in attacks}
    with torch.enable_grad():  # warm-up (one-off kernel set-up), untimed
        xw = x[:batch].clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(model(xw), y[:batch]), xw)
    for k, i in enumerate(range(0, len(x), batch)):
        order = list(attacks) if k % 2 == 0 else list(attacks)[::-1]
        for name in order:
            _evaluate_batch(model, attacks[name], x[i:i + batch], y[i:i + batch], runs[name])
    flags = {}
    for name, r in runs.items():
        flags[name] = torch.cat(r.pop("robust"))
        r.update(s=round(r["s"], 3), points_per_s=round(len(x) / r["s"], 3), robust_acc=float(flags[name].float().mean()))
    ref, got = flags["torchattacks"], flags["advlab"]
    out = {**runs, "throughput_ratio": round(runs["torchattacks"]["s"] / runs["advlab"]["s"], 3),
           "rows_ratio": round(runs["torchattacks"]["model_rows"] / runs["advlab"]["model_rows"], 3),
           "same_flags": bool(torch.equal(ref, got)), "advlab_only_broken": int((ref & ~got).sum()),
           "torchattacks_only_broken": int((got & ~ref).sum())}
    if verify_off:
        out["advlab_stop_vs_no_stop_same_flags"] = bool(torch.equal(got, flags["advlab_no_stop"]))
    return out


def gemm_peak(reps: int, n: int = 2048) -> float:
    """fp32 FLOP/s of the best of ``reps`` n×n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def preset() -> SimpleNamespace:
    """The CPU preset's network (fresh weights), batch sizes, memory format, loss and optimiser settings."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from advlab.runtime.resolvers import CONF_DIR
    from advlab.models import build_model

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=ilyas_cifar10_cpu"])
    GlobalHydra.instance().clear()
    shape = SimpleNamespace(input_shape=(3, 32, 32), num_classes=10, mean=torch.tensor([0.49, 0.48, 0.45]),
                            std=torch.tensor([0.25, 0.24, 0.26]))
    torch.manual_seed(0)
    model = build_model(cfg.arch, shape)
    attack = instantiate(cfg.attack, steps=1, keep_best=False, targeted=True)  # one step of the crafting attack
    return SimpleNamespace(model=model, arch=str(cfg.arch._target_), width=cfg.arch.get("width"),
                           train_batch=int(cfg.dataset.batch_size), pgd_batch=int(cfg.method.craft_batch_size),
                           channels_last=bool(cfg.method.channels_last), label_smoothing=float(cfg.method.label_smoothing),
                           lr=float(cfg.optimizer.lr), attack=attack)


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def flop_rates(reps: int) -> dict:
    p = preset()
    model = p.model.to(memory_format=torch.channels_last) if p.channels_last else p.model
    fmt = torch.channels_last if p.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.rand(max(p.train_batch, p.pgd_batch), 3, 32, 32, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (len(x),), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=0.9, nesterov=True)

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x[:p.train_batch])
        nn.functional.cross_entropy(out, y[:p.train_batch], label_smoothing=p.label_smoothing).backward()
        opt.step()

    def pgd_step():
        p.attack(model, x[:p.pgd_batch], (y[:p.pgd_batch] + 1) % 10)

    def pgd_step_flops():
        # FlopCounterMode's module tracker cannot follow torch.autograd.grad (the attack's call): count
        # the same computation, one forward and the input gradient only, with .backward()
        model.eval()
        frozen = [q for q in model.parameters() if q.requires_grad]
        for q in frozen:
            q.requires_grad_(False)
        xa = x[:p.pgd_batch].clone().requires_grad_(True)
        nn.functional.cross_entropy(model(xa), (y[:p.pgd_batch] + 1) % 10).backward()
        for q in frozen:
            q.requires_grad_(True)

    flops = {"train_step": _flops(train_step), "pgd_step": _flops(pgd_step_flops)}
    steps = {"train_step": train_step, "pgd_step": pgd_step}
    gemm_peak(1)
    pgd_step()  # warm-ups
    # rounds of (GEMM peak, training step, PGD step): the fraction of each round's own peak, so that a
    # load that changes over the run (a shared machine) weighs on step and peak alike
    rounds = []
    for _ in range(reps):
        peak = gemm_peak(3)
        rounds.append((peak, {k: _timed(fn) for k, fn in steps.items()}))
    out = {"network": {"arch": p.arch, "width": p.width, "channels_last": p.channels_last, "precision": "fp32",
                       "train_batch": p.train_batch, "pgd_batch": p.pgd_batch},
           "gemm": "2048x2048 fp32 torch.matmul, best of 3 per round", "rounds": reps,
           "gemm_peak_gflop_per_s": {"median": round(statistics.median(r[0] for r in rounds) / 1e9, 2),
                                     "best": round(max(r[0] for r in rounds) / 1e9, 2)}}
    for name, n_flops in flops.items():
        secs = [r[1][name] for r in rounds]
        out[name] = {"flops": n_flops, "s_median": round(statistics.median(secs), 4), "s_best": round(min(secs), 4),
                     "gflop_per_s_median": round(n_flops / statistics.median(secs) / 1e9, 2),
                     "fraction_of_peak_median": round(statistics.median(n_flops / t / peak for peak, t in
                                                                        ((r[0], r[1][name]) for r in rounds)), 4),
                     "fraction_of_peak_best": round(n_flops / min(secs) / max(r[0] for r in rounds), 4)}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--eps", nargs="+", default=["2/255", "8/255"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice); see the module docstring")
    ap.add_argument("--reps", type=int, default=6, help="rounds of (GEMM peak, train step, PGD step)")
    ap.add_argument("--verify-off", action="store_true", help="also run advlab without early stopping")
    ap.add_argument("--skip-flops", action="store_true")
    ap.add_argument("--append", action="store_true", help="add this run to --out's `extra_runs` (e.g. another eps)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "early_stop_cpu.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = {"what": "advlab PGD-10 (keep_best + stop_on_success) vs torchattacks PGD-10, fp32; FLOP/s vs GEMM peak",
              **cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "torchattacks": importlib.metadata.version("torchattacks"), "load_average_start": list(os.getloadavg()),
              "n": args.n, "batch": args.batch, "steps": STEPS, "step": "2.5 eps / 10", "random_start": False}
    net, x, y = resnet18_points(args.n)
    model = Counting(net).eval()
    result["model"] = "pyautoattack examples ResNet18 (model_test.pt), CIFAR-10 test[:n]"
    result["clean_acc"] = float(_correct(model, x, y).float().mean())
    result["eps"] = {}
    for text in args.eps:
        eps = float(parse_number(text))
        r = compare_at(model, x, y, eps, args.batch, args.verify_off)
        result["eps"][text] = r
        print(f"eps {text}: torchattacks {r['torchattacks']['s']:.1f} s (robust {r['torchattacks']['robust_acc']:.3f}), "
              f"advlab {r['advlab']['s']:.1f} s (robust {r['advlab']['robust_acc']:.3f}): {r['throughput_ratio']:.2f}x, "
              f"model rows {r['rows_ratio']:.2f}x fewer, same flags {r['same_flags']}", flush=True)
    if not args.skip_flops:
        result["flops"] = f = flop_rates(args.reps)
        print(f"GEMM peak {f['gemm_peak_gflop_per_s']['median']:.1f} GFLOP/s (median of rounds); " + "; ".join(
            f"{k} {f[k]['gflop_per_s_median']:.1f} GFLOP/s ({f[k]['fraction_of_peak_median']:.1%} of peak)"
            for k in ("train_step", "pgd_step")), flush=True)
    result["load_average_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    if args.append and Path(args.out).is_file():
        base = json.loads(Path(args.out).read_text())
        base.setdefault("extra_runs", []).append({k: v for k, v in result.items() if k in (
            "eps", "n", "batch", "threads", "load_average_start", "load_average_end", "wall_s", "flops")})
        result = base
    write_json(args.out, result)  # atomic: a reader never sees half a result
    print(f"-> {args.out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
