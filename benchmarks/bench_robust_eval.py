"""Benchmark: robust-only evaluation and AutoAttack on trained models (issue 11's acceptance 1 and the
robustness-curve saving).

    python benchmarks/bench_robust_eval.py [--curve] [--acceptance] [--n 300] [--threads 2]

--curve       advlab-eval's robustness curves (its default attacks FGSM / PGD-20 L∞ and L2, losses CE
              and margin, cumulative, its default ε grids) on a trained digits CNN (or wide MLP), three ways:
              every point at every ε with every loss (robust_only=False), robust-only over ε only with
              exact per-loss / per-attack curves (diagnostics=True: advlab-eval before this change), and
              robust-only across ε, losses and attacks (the default). Attack calls (points attacked)
              and wall time of each, and that the three give the same per-sample robust masks.
--acceptance  on three trained models (a standard digits MLP, a PGD-AT digits CNN, a standard MNIST CNN
              on the shared t10k files), on the same n test points: clean accuracy, our AutoAttack
              (standard) against torchattacks' AutoAttack(version="standard") (both with 10-step APGD /
              APGD-T / FAB-T, 9 targets, Square 5,000 queries, as torchattacks configures it), and our
              PGD-CE+margin (PGD-20 with both losses, the worst case per point); wall times and the
              time ratio ours / torchattacks.
Results go to benchmarks/results/robust_eval_cpu.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from advlab.analysis.robustness import accuracy, robustness_curves  # noqa: E402
from advlab.attacks import FGSM, PGD, AutoAttack  # noqa: E402
from advlab.utils.io import write_json  # noqa: E402
from bench_attacks import environment, reference_and_device  # noqa: E402

SHARED_MNIST = Path("/work/shared/data/mnist-t10k")
EVAL_GRIDS = {"linf": [0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3], "l2": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]}


def eval_attacks(random_start: bool = True) -> dict:
    """advlab-eval's default robustness attacks (conf/eval.yaml: PGD with 20 steps of 0.1 ε)."""
    pgd = dict(steps=20, rel_step_size=0.1, random_start=random_start)
    return {"fgsm_linf": FGSM(0.1), "pgd_linf": PGD(0.1, **pgd), "fgsm_l2": FGSM(1.0, norm="l2"), "pgd_l2": PGD(1.0, norm="l2", **pgd)}


def _fit(module, dm, epochs: int):
    import pytorch_lightning as pl

    pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0).fit(module, dm)
    return module.model.eval()


def trained_models(which) -> dict:
    """name -> (model, x_test, y_test, ε): advlab's own training (Lightning modules) at CPU scale."""
    from omegaconf import OmegaConf

    from advlab.data import DigitsDataModule, MNISTDataModule
    from advlab.methods import AdversarialTraining, StandardTraining
    from advlab.models import CNN, MLP, WideMLP

    opt = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4})
    out = {}
    digits = DigitsDataModule(seed=0)
    digits.setup()
    norm = dict(mean=digits.mean, std=digits.std)
    torch.manual_seed(0)
    if "digits_wide_mlp" in which:
        model = _fit(StandardTraining(WideMLP(digits.input_shape, 10, width=2048, **norm), opt), digits, 30)
        out["digits_wide_mlp"] = (model, digits.x_test, digits.y_test, 0.1)
    if "digits_cnn" in which:
        model = _fit(StandardTraining(CNN(digits.input_shape, 10, **norm), opt), digits, 30)
        out["digits_cnn"] = (model, digits.x_test, digits.y_test, 0.1)
    if "digits_mlp" in which:
        model = _fit(StandardTraining(MLP(digits.input_shape, 10, **norm), opt), digits, 30)
        out["digits_mlp"] = (model, digits.x_test, digits.y_test, 0.1)
    if "digits_cnn_pgd_at" in which:
        attack = PGD(0.1, steps=7, rel_step_size=0.25)
        module = AdversarialTraining(CNN(digits.input_shape, 10, channels=(16, 32), hidden=128, **norm), opt, attack=attack)
        out["digits_cnn_pgd_at"] = (_fit(module, digits, 30), digits.x_test, digits.y_test, 0.1)
    if "mnist_cnn" in which:
        data_dir = Path(tempfile.mkdtemp(prefix="bench_mnist_"))
        (data_dir / "MNIST" / "raw").mkdir(parents=True)
        for f in SHARED_MNIST.iterdir():  # the `make data` layout: <data_dir>/MNIST/raw/<file>
            (data_dir / "MNIST" / "raw" / f.name).symlink_to(f)
        mnist = MNISTDataModule(data_dir=str(data_dir), official_split=False, test_fraction=0.2, val_fraction=0.05, seed=0)
        mnist.setup()
        model = CNN(mnist.input_shape, 10, channels=(16, 32), hidden=128, mean=mnist.mean, std=mnist.std)
        out["mnist_cnn"] = (_fit(StandardTraining(model, opt), mnist, 3), mnist.x_test, mnist.y_test, 0.1)
    return out


def _timed(fn, cpu: dict | None = None):
    """(fn(), wall seconds); ``cpu["s"]`` receives this process's CPU seconds (steadier than wall
    time on a machine shared with other jobs)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if cpu is not None:
        cpu["s"] = time.process_time() - c0
    return out, time.perf_counter() - t0


def curve_section(arch: str, n: int | None, random_start: bool) -> dict:
    name = f"digits_{arch}"
    model, x, y, _ = trained_models([name])[name]
    x, y = (x, y) if n is None else (x[:n], y[:n])
    modes = {"all_points": dict(robust_only=False), "eps_only_diagnostics": dict(diagnostics=True), "robust_only": {}}
    runs = {}
    for mode, kwargs in modes.items():
        torch.manual_seed(0)
        cpu = {}
        curves, seconds = _timed(lambda: robustness_curves(model, eval_attacks(random_start), EVAL_GRIDS, x, y, progress=False, **kwargs), cpu)
        runs[mode] = {"curves": curves, "seconds": seconds, "cpu_s": cpu["s"], "attacked": sum(c["attacked"] for c in curves.values())}
    ref = runs["all_points"]["curves"]
    res = {"model": name, "n": len(x), "grids": EVAL_GRIDS, "random_start": random_start, "modes": {}}
    print(f"\n[curve] {name} (standard), n={len(x)}, advlab-eval's default attacks and ε grids, random start {random_start}")
    for mode, r in runs.items():
        # with random starts the draws differ between modes (not their distribution): a few borderline points
        diff = sum(int((r["curves"][a]["robust"] != ref[a]["robust"]).sum()) for a in ref)
        res["modes"][mode] = {"attacked": r["attacked"], "attacked_per_attack": {a: c["attacked"] for a, c in r["curves"].items()},
                              "seconds": r["seconds"], "cpu_s": r["cpu_s"], "mask_differences": diff,
                              "acc": {a: accuracy(c["robust"]) for a, c in r["curves"].items()},
                              "attack_ratio_vs_all": r["attacked"] / runs["all_points"]["attacked"],
                              "time_ratio_vs_all": r["seconds"] / runs["all_points"]["seconds"],
                              "time_ratio_vs_eps_only": r["seconds"] / runs["eps_only_diagnostics"]["seconds"],
                              "cpu_ratio_vs_all": r["cpu_s"] / runs["all_points"]["cpu_s"],
                              "cpu_ratio_vs_eps_only": r["cpu_s"] / runs["eps_only_diagnostics"]["cpu_s"]}
        m = res["modes"][mode]
        print(f"  {mode:22s} attacked {r['attacked']:7d} ({m['attack_ratio_vs_all']:.3f}× all)  {r['seconds']:7.2f} s "
              f"({m['time_ratio_vs_all']:.3f}× all, {m['time_ratio_vs_eps_only']:.3f}× ε-only)  CPU {r['cpu_s']:7.2f} s "
              f"({m['cpu_ratio_vs_all']:.3f}× all, {m['cpu_ratio_vs_eps_only']:.3f}× ε-only)  mask diffs {diff}")
        print(f"  {'':22s} attacked per attack: {m['attacked_per_attack']}")
    return res


def _aa_robust(model, attack, x, y) -> float:
    with torch.random.fork_rng():  # torchattacks reseeds the global RNG
        x_adv = attack(model, x, y) if isinstance(attack, AutoAttack) else attack(x, y)
    with torch.no_grad():
        return float(((model(x_adv).argmax(1) == y) & (model(x).argmax(1) == y)).float().mean())


ACCEPTANCE_MODELS = ("digits_mlp", "digits_cnn_pgd_at", "mnist_cnn")


def acceptance_section(n: int, ta, queries: int, names=ACCEPTANCE_MODELS) -> list[dict]:
    rows = []
    header = (f"  {'model':18s} {'n':>4s} {'clean':>6s} {'ours AA':>8s} {'ta AA':>6s} {'Δ pp':>6s} {'PGD-CE+m':>8s}"
              f" {'ours s':>7s} {'ta s':>7s} {'ours/ta':>7s} {'CPU o/t':>7s}")
    print("\n[acceptance 1] AutoAttack (standard): advlab vs torchattacks, same points\n" + header)
    for name, (model, x, y, eps) in trained_models(names).items():
        x, y = x[:n], y[:n]
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        ours = AutoAttack(eps, apgd_steps=10, fab_steps=10, square_queries=queries, n_target_classes=9, seed=0)
        theirs = ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
        ours_cpu, theirs_cpu = {}, {}
        ours_acc, ours_s = _timed(lambda: _aa_robust(model, ours, x, y), ours_cpu)
        theirs_acc, theirs_s = _timed(lambda: _aa_robust(model, theirs, x, y), theirs_cpu)
        pgd = robustness_curves(model, {"pgd": PGD(eps, steps=20, rel_step_size=0.1, seed=0)}, {"linf": [0.0, eps]}, x, y,
                                progress=False)["pgd"]
        row = {"model": name, "n": len(x), "eps": eps, "clean_acc": clean, "ours_aa": ours_acc, "torchattacks_aa": theirs_acc,
               "diff_pp": 100 * (ours_acc - theirs_acc), "pgd_ce_margin": accuracy(pgd["robust"])[-1],
               "ours_s": ours_s, "torchattacks_s": theirs_s, "time_ratio_ours_over_theirs": ours_s / theirs_s,
               "ours_cpu_s": ours_cpu["s"], "torchattacks_cpu_s": theirs_cpu["s"], "cpu_ratio_ours_over_theirs": ours_cpu["s"] / theirs_cpu["s"],
               "members": ours.last_run}
        rows.append(row)
        print(f"  {name:18s} {len(x):4d} {clean:6.3f} {ours_acc:8.3f} {theirs_acc:6.3f} {row['diff_pp']:+6.2f} "
              f"{row['pgd_ce_margin']:8.3f} {ours_s:7.1f} {theirs_s:7.1f} {row['time_ratio_ours_over_theirs']:7.2f} "
              f"{row['cpu_ratio_ours_over_theirs']:7.2f}")
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curve", action="store_true", help="robustness-curve cost, robust-only vs not")
    ap.add_argument("--acceptance", action="store_true", help="AutoAttack vs torchattacks on three trained models")
    ap.add_argument("--n", type=int, default=300, help="test points (acceptance; the curve uses all digits test points)")
    ap.add_argument("--curve-n", type=int, default=None, help="test points of the curve section (default: all)")
    ap.add_argument("--curve-arch", default="cnn", choices=["cnn", "wide_mlp"], help="the curve section's digits model")
    ap.add_argument("--deterministic", action="store_true", help="curve: PGD without random start (masks then equal)")
    ap.add_argument("--models", nargs="+", default=list(ACCEPTANCE_MODELS), choices=ACCEPTANCE_MODELS, help="acceptance models")
    ap.add_argument("--queries", type=int, default=5000, help="Square queries (torchattacks' AutoAttack: 5000)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not (args.curve or args.acceptance):
        args.curve = args.acceptance = True
    ta, device = reference_and_device("cpu", args.threads)
    result = {"benchmark": "robust_eval", **environment(device, ta)}
    if args.curve:
        result["curve"] = curve_section(args.curve_arch, args.curve_n, not args.deterministic)
    if args.acceptance:
        result["acceptance"] = acceptance_section(args.n, ta, args.queries, args.models)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "robust_eval_cpu.json"
    write_json(out, result)  # atomic: a reader never sees half a result
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
