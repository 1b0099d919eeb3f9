"""Benchmark: issue 12's two fast-path targets on the real CIFAR-10 (the shared JPEG copy).

    python benchmarks/bench_fast_path_cifar.py [--width 16] [--train 10000] [--epochs 10] [--seeds 0 1]
                                               [--attack-images 2000] [--attack-batch 128] [--eps 1/255]

(a) Training: advlab's ResNet-9 trained with the CPU presets' recipe, composed from conf/ (one-cycle
    SGD-Nesterov lr 0.2, label smoothing 0.1, batch 256, flip + crop augmentation) in fp32 (`32-true`, NCHW) and on the
    fast path (`bf16-mixed` + channels_last), same seeds: median seconds per epoch (Lightning's loop)
    and final test accuracy on all 10,000 test images. Target: ≥ 2× at the same accuracy within 1 pp.
(b) PGD-10 (L∞, α = ε/4, no random start) on the first fp32 model and a seeded random test subset: torchattacks' PGD in fp32 against
    advlab's PGD on the fast path (bf16 autocast + channels_last; examples judged by the fp32 model),
    same model and batch: images per second and robust accuracy. Target: ≥ 2× at robust accuracy
    within 0.5 pp. ε defaults to 1/255 so that robust accuracy is mid-range (at 8/255 a standard model
    is at 0 % and any attack "agrees").
Writes benchmarks/results/fast_path_cifar_cpu.json (temp file, then rename). Needs ../shared/data.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fast_path import _cpu_name, _has_flag, clock  # noqa: E402

from advlab.attacks import PGD  # noqa: E402
from advlab.data import CIFAR10JPEGDataModule  # noqa: E402
from advlab.methods import StandardTraining  # noqa: E402
from advlab.models import ResNet9  # noqa: E402
from advlab.models.base import predict  # noqa: E402
from advlab.utils.io import write_json  # noqa: E402

VARIANTS = {"fp32": ("32-true", False), "fast": ("bf16-mixed", True)}  # (precision, channels_last)


@functools.cache
def preset_recipe() -> dict:
    """The model recipe of the CPU presets, composed from conf/ (sweep=transfer_cifar10_cpu's models:
    optimiser, schedule, label smoothing, batch size), so the benchmark cannot drift from them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from advlab.runtime.resolvers import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("transfer", overrides=["sweep=transfer_cifar10_cpu"])
    spec = cfg.source
    return {"optimizer": OmegaConf.to_container(spec.optimizer), "scheduler": OmegaConf.to_container(spec.scheduler),
            "label_smoothing": float(spec.method.label_smoothing), "batch_size": int(cfg.dataset.batch_size)}



def datamodule(train: int, seed: int) -> CIFAR10JPEGDataModule:
    dm = CIFAR10JPEGDataModule(data_dir=str(ROOT / "data"), zip_dir=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"),
                               batch_size=preset_recipe()["batch_size"], eval_batch_size=1000, max_train=train, seed=seed, augment=True,
                               val_fraction=0.02)
    dm.prepare_data()
    dm.setup()
    return dm


def train(variant: str, width: int, epochs: int, dm, seed: int) -> dict:
    """Fit one ResNet-9; returns its epoch times, test accuracy and fp32 model."""
    import pytorch_lightning as pl

    precision, channels_last = VARIANTS[variant]
    pl.seed_everything(seed, verbose=False)
    recipe = preset_recipe()
    module = StandardTraining(ResNet9((3, 32, 32), 10, width=width), recipe["optimizer"], scheduler=recipe["scheduler"],
                              label_smoothing=recipe["label_smoothing"], channels_last=channels_last)
    epoch_s: list[float] = []
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[clock(epoch_s, "epoch")])
    trainer.fit(module, datamodule=dm.fresh())
    model = module.model.to(memory_format=torch.contiguous_format).float().eval()
    return {"epoch_s": epoch_s, "test_acc": accuracy(model, dm.x_test, dm.y_test), "model": model}


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((predict(model, x, 1000) == y).float().mean())


def attack_all(run, x, y, batch: int) -> tuple[torch.Tensor, float]:
    """Adversarial examples for (x, y) in batches, and the seconds it took."""
    t0, out = time.perf_counter(), []
    for i in range(0, len(x), batch):
        out.append(run(x[i:i + batch], y[i:i + batch]))
    return torch.cat(out), time.perf_counter() - t0


def bench_pgd(model, x, y, eps: float, batch: int) -> dict:
    import copy

    import torchattacks

    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)  # the fp32 model stays NCHW
    ours = PGD(eps=eps, norm="linf", steps=10, step_size=eps / 4, random_start=False, keep_best=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=10, random_start=False)

    def fast(xb, yb):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(cl_model, xb.contiguous(memory_format=torch.channels_last), yb).float().contiguous()

    runs = {"torchattacks fp32": lambda xb, yb: theirs(xb, yb), "advlab fp32": lambda xb, yb: ours(model, xb, yb), "advlab fast": fast}
    for run in runs.values():  # warm-up: oneDNN picks its kernels on the first calls
        run(x[:batch], y[:batch])
    result = {}
    for name, run in runs.items():
        x_adv, seconds = attack_all(run, x, y, batch)
        assert float((x_adv - x).abs().max()) <= eps + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        result[name] = {"seconds": seconds, "images_per_s": len(x) / seconds, "robust_acc": accuracy(model, x_adv, y)}
        print(f"  PGD-10 {name:>18}: {len(x) / seconds:7.1f} img/s, robust acc {result[name]['robust_acc']:.4f}", flush=True)
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--attack-images", type=int, default=2000)
    ap.add_argument("--attack-batch", type=int, default=128)
    ap.add_argument("--eps", default="1/255")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fast_path_cifar_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    eps = float(Fraction(args.eps))
    result = {"what": __doc__.splitlines()[0], "args": vars(args), "recipe": preset_recipe(), "cpu": _cpu_name(), "torch": torch.__version__,
              "cpu_flags": {f: _has_flag(f) for f in ("avx512f", "avx512_bf16", "amx_bf16")}, "training": {}}
    models, data = {}, {}
    for seed in args.seeds:
        dm = data.setdefault(seed, datamodule(args.train, seed))
        for variant in VARIANTS:
            run = train(variant, args.width, args.epochs, dm, seed)
            models.setdefault(variant, run["model"])
            row = {"median_epoch_s": statistics.median(run["epoch_s"][1:] or run["epoch_s"]), "test_acc": run["test_acc"]}
            result["training"].setdefault(variant, []).append({"seed": seed, **row})
            print(f"seed {seed} {variant:>5}: {row['median_epoch_s']:.2f} s/epoch, test acc {row['test_acc']:.4f}", flush=True)
    fp32, fast = result["training"]["fp32"], result["training"]["fast"]
    result["training_summary"] = {
        "epoch_speedup": statistics.median(a["median_epoch_s"] for a in fp32) / statistics.median(b["median_epoch_s"] for b in fast),
        "test_acc_fp32_mean": statistics.mean(a["test_acc"] for a in fp32), "test_acc_fast_mean": statistics.mean(b["test_acc"] for b in fast)}
    dm = data[args.seeds[0]]  # the data of the model attacked
    # a seeded random subset: the JPEG copy's test split is ordered by class
    pick = torch.randperm(len(dm.x_test), generator=torch.Generator().manual_seed(0))[:args.attack_images]
    x, y = dm.x_test[pick], dm.y_test[pick]
    result["pgd"] = bench_pgd(models["fp32"], x, y, eps, args.attack_batch)
    base = result["pgd"]["torchattacks fp32"]
    result["pgd_summary"] = {"fast_speedup_vs_torchattacks": result["pgd"]["advlab fast"]["images_per_s"] / base["images_per_s"],
                             "robust_acc_diff_pp": 100 * (result["pgd"]["advlab fast"]["robust_acc"] - base["robust_acc"]),
                             "clean_acc": accuracy(models["fp32"], x, y)}
    result["load_average"] = list(os.getloadavg())
    write_json(Path(args.out), result)  # atomic: a reader never sees half a result
    print(json.dumps({k: result[k] for k in ("training_summary", "pgd_summary")}, indent=1), f"-> {args.out}")
    return result


if __name__ == "__main__":
    main()
