"""GPU check: what a GPU machine gives advlab, in one command (about 5 minutes on one GPU).

    python benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--out FILE]     # or: make gpu-check ARGS=...

Sections (each timed, each in the JSON even when skipped, with the reason):
  pgd        PGD-10 L∞ throughput (images/s), advlab against torchattacks, fp32 and bf16 autocast,
             on ResNet-18 (`advlab.models.ResNet`) and ResNet-9 (`advlab.models.ResNet9`), random weights;
  lightning  one training epoch through advlab's LightningModule + Trainer against a plain PyTorch loop
             (benchmarks/bench_lightning.py's loops), ResNet-9 on random 3×32×32 data;
  drand      a short D_rand run end to end (`advlab-train experiment=ilyas_cifar10_cpu
             derived.target_rule=rand`, fresh cache: source trained, set crafted, model trained and
             tested); CIFAR-10 when its files are there, else digits;
  ddp        DDP on every visible GPU: an advlab-train perturbation run (`trainer.strategy=ddp`) and a
             raw DistributedDataParallel smoke (the ranks' weights must stay identical). Under 2 GPUs
             the GPU part is skipped with a note and the raw smoke runs on 2 CPU processes (gloo).
`--quick`: tiny sizes (a few seconds a section; the test suite runs it on CPU). Writes
benchmarks/results/gpu_check_<device>[_quick].json (temp file, then rename).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from bench_attacks import interleaved_times  # noqa: E402
from bench_lightning import lightning_loop, plain_loop  # noqa: E402

from advlab.attacks import PGD  # noqa: E402
from advlab.data.base import make_loader  # noqa: E402
from advlab.models import ResNet, ResNet9  # noqa: E402
from advlab.utils.io import write_json  # noqa: E402

# full: sized for ≤ 8 minutes on one GPU; quick: seconds per section on a CPU
SIZES = {
    "full": {"pgd_batch": 512, "pgd_reps": 5, "width": 64, "lightning_n": 16384, "lightning_batch": 256,
             "lightning_epochs": 3, "max_train": 10000, "epochs": 4, "craft_steps": 20, "ddp_steps": 30},
    "quick": {"pgd_batch": 8, "pgd_reps": 1, "width": 8, "lightning_n": 256, "lightning_batch": 64,
              "lightning_epochs": 2, "max_train": 256, "epochs": 1, "craft_steps": 2, "ddp_steps": 3},
}
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def pgd_section(device: torch.device, size: dict, quick: bool = False) -> dict:
    """PGD-10 images/s, advlab vs torchattacks (no random start: the same iterates), fp32 and bf16."""
    import torchattacks

    gen = torch.Generator().manual_seed(0)
    batch = size["pgd_batch"]
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    rows = []
    for arch, make in (("resnet18", lambda: ResNet((3, 32, 32), 10, depth=18, width=size["width"])),
                       ("resnet9", lambda: ResNet9((3, 32, 32), 10, width=size["width"]))):
        torch.manual_seed(0)
        model = make().to(device).eval()
        ours = PGD(eps=EPS, norm="linf", steps=STEPS, step_size=ALPHA, random_start=False, keep_best=False)
        theirs = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=False)
        for precision in ("fp32", "bf16"):
            bf16 = precision == "bf16"

            def run_ours():
                with _autocast(device, bf16):
                    return ours(model, x, y)  # noqa: F821 (the loop's model: `del` comes after the last call)

            def run_theirs():
                with _autocast(device, bf16):
                    return theirs(x, y)  # noqa: F821 (as above)

            runs = {"advlab": run_ours, "torchattacks": run_theirs}
            # warm-up (allocator, cudnn autotuning, first-call overheads), and the two results compared
            warm = {name: fn() for name, fn in runs.items()}
            max_diff = float((warm["advlab"].float() - warm["torchattacks"].float()).abs().max())
            times = interleaved_times(runs, size["pgd_reps"], device)
            med = {name: statistics.median(t) for name, t in times.items()}
            rows.append({"arch": arch, "precision": precision, "batch": batch, "steps": STEPS,
                         "advlab_images_per_s": batch / med["advlab"], "torchattacks_images_per_s": batch / med["torchattacks"],
                         "advlab_over_torchattacks": med["torchattacks"] / med["advlab"], "median_s": med,
                         "max_abs_diff_vs_torchattacks": max_diff})
            print(f"  PGD-{STEPS} {arch:9s} {precision}: advlab {rows[-1]['advlab_images_per_s']:9.1f} img/s, "
                  f"torchattacks {rows[-1]['torchattacks_images_per_s']:9.1f} img/s")
        del model, theirs
    return {"rows": rows}


def lightning_section(device: torch.device, size: dict, quick: bool = False) -> dict:
    """Seconds per epoch (median after a warm-up epoch): Lightning vs the plain loop, ResNet-9."""
    torch.manual_seed(0)
    n = size["lightning_n"]
    x, y = torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,))
    loader = make_loader(torch.utils.data.TensorDataset(x, y), size["lightning_batch"], shuffle=True, seed=0)
    epochs = size["lightning_epochs"]
    result = {}
    for name, loop in (("plain", lambda m: plain_loop(m, loader, device, epochs)),
                       ("lightning", lambda m: lightning_loop(m, loader, device, epochs, False))):
        torch.manual_seed(0)
        model = ResNet9((3, 32, 32), 10, width=size["width"]).to(device)
        result[f"{name}_s_per_epoch"] = statistics.median(loop(model)[1:])
    result["lightning_over_plain"] = result["lightning_s_per_epoch"] / result["plain_s_per_epoch"]
    result.update(n=n, batch=size["lightning_batch"], images_per_s_lightning=n / result["lightning_s_per_epoch"])
    print(f"  epoch: plain {result['plain_s_per_epoch']:.3f} s, lightning {result['lightning_s_per_epoch']:.3f} s "
          f"(ratio {result['lightning_over_plain']:.3f})")
    return result


def cifar_available() -> bool:
    """Whether advlab-train would find CIFAR-10 (the experiment's cifar10_jpeg) under this repository."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from advlab.runtime.resolvers import CONF_DIR
    from advlab.errors import ConfigError

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=ilyas_cifar10_cpu"])
    try:
        instantiate(cfg.dataset).check()
    except ConfigError:
        return False
    return True


def _advlab_train(overrides: list[str], work: Path, timeout: int) -> dict:
    """advlab-train in a subprocess (this checkout's code, a fresh cache in `work`): wall time, metrics, log."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run_dir = work / "run"
    cmd = [sys.executable, "-m", "advlab.apps.train", *overrides, "logger=csv", "callbacks=none",
           f"paths.cache_dir={work / 'cache'}", f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"advlab-train failed ({proc.returncode}): {' '.join(overrides)}\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {"wall_s": wall, "metrics": json.loads((run_dir / "metrics.json").read_text()), "log": proc.stdout + proc.stderr,
            "overrides": overrides}


def _drand_overrides(device: torch.device, size: dict, quick: bool) -> tuple[list[str], str]:
    dataset = "cifar10_jpeg" if not quick and cifar_available() else "digits"
    overrides = ["experiment=ilyas_cifar10_cpu", "derived.target_rule=rand", f"dataset.max_train={size['max_train']}",
                 f"source.max_epochs={size['epochs']}", f"trainer.max_epochs={size['epochs']}",
                 f"attack.steps={size['craft_steps']}"]
    if dataset == "digits":  # 8×8 images: a narrower ResNet-9 is plenty
        overrides += ["dataset=digits", f"arch.width={size['width']}"]
    if device.type == "cuda":  # `auto` must pick bf16-mixed on a GPU with native bf16 (the run's log says so)
        overrides += ["trainer.accelerator=gpu", "trainer.precision=auto"]
    return overrides, dataset


def drand_section(device: torch.device, size: dict, quick: bool) -> dict:
    overrides, dataset = _drand_overrides(device, size, quick)
    with tempfile.TemporaryDirectory(prefix="gpu_check_drand_") as tmp:
        run = _advlab_train(overrides, Path(tmp), timeout=600)
    m = run["metrics"]
    keep = ("test/acc", "source/test/acc", "perturb/success_rate", "perturb/delta_l2_mean", "time/total_s")
    precision = [line[line.index("precision=auto"):] for line in run["log"].splitlines() if "precision=auto ->" in line]
    print(f"  D_rand on {dataset}: {run['wall_s']:.1f} s, test/acc {m['test/acc']:.3f}, success {m['perturb/success_rate']:.3f}")
    print("  " + ("\n  ".join(precision) or "precision: as configured"))
    return {"dataset": dataset, "overrides": overrides, "wall_s": run["wall_s"], "metrics": {k: m[k] for k in keep},
            "precision_auto": precision}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, steps: int, device_type: str, width: int) -> None:
    """One rank of the raw smoke: DDP training steps on its own random batches; then its time and weights' sum."""
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device_type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = DistributedDataParallel(ResNet9((3, 32, 32), 10, width=width).to(device), device_ids=[rank] if cuda else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(rank)  # each rank its own data: only the gradient all-reduce keeps them equal
    for step in range(steps + 1):
        if step == 1:  # step 0 is the warm-up
            if cuda:
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        x, y = torch.rand(64, 3, 32, 32, generator=gen).to(device), torch.randint(0, 10, (64,), generator=gen).to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    total = float(sum(p.detach().double().sum() for p in model.parameters()))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"seconds": seconds, "weights_sum": total}))
    dist.destroy_process_group()


def raw_ddp_smoke(world: int, steps: int, device_type: str, width: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        # fork where it is safe (no re-import, a second); not once this process has used CUDA, whose
        # autograd threads a forked child cannot take over (the CPU smoke after the GPU sections): spawn
        spawn = device_type == "cuda" or torch.cuda.is_initialized()
        mp.start_processes(_ddp_worker, args=(world, _free_port(), tmp, steps, device_type, width), nprocs=world,
                           start_method="spawn" if spawn else "fork")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]
    slowest = max(r["seconds"] for r in ranks)
    spread = max(abs(r["weights_sum"] - ranks[0]["weights_sum"]) for r in ranks)
    return {"backend": "nccl" if device_type == "cuda" else "gloo", "world_size": world, "steps": steps,
            "steps_per_s": steps / slowest, "weights_in_sync": spread <= 1e-9 * max(1.0, abs(ranks[0]["weights_sum"])),
            "weights_sum_spread": spread}


def ddp_run(device: torch.device, size: dict, quick: bool, devices: int) -> dict:
    """The D_rand run as one DDP job on `devices` GPUs (or CPU processes): rank 0 builds the artifacts."""
    overrides, dataset = _drand_overrides(device, size, quick)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    # the experiment's trainer (cpu) has no strategy key: `++` adds it
    overrides = [o for o in overrides if not o.startswith("trainer.accelerator")]
    overrides += [f"trainer.accelerator={accelerator}", "++trainer.strategy=ddp", f"trainer.devices={devices}",
                  f"++trainer.sync_batchnorm={str(device.type == 'cuda').lower()}"]  # SyncBatchNorm needs GPUs
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_run_") as tmp:
        run = _advlab_train(overrides, Path(tmp), timeout=600)
    log = run["log"]
    return {"devices": devices, "dataset": dataset, "overrides": overrides, "wall_s": run["wall_s"],
            "test/acc": run["metrics"]["test/acc"],
            "source_models_trained": log.count("Training source model"),  # 1: rank 0; the others load it
            "datasets_crafted": log.count("Cache miss: building perturbation dataset"),
            "ranks_seen": sum(f"GLOBAL_RANK: {r}," in log for r in range(devices))}


def ddp_section(device: torch.device, size: dict, quick: bool) -> dict:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        result = {"gpu": {"skipped": f"{gpus} GPU(s) visible: DDP needs 2 or more"},
                  "cpu_gloo": raw_ddp_smoke(2, size["ddp_steps"], "cpu", size["width"])}
    else:
        result = {"gpu": ddp_run(device, size, quick, gpus), "raw": raw_ddp_smoke(gpus, size["ddp_steps"], "cuda", size["width"])}
    for part, r in result.items():
        print(f"  DDP {part}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                                             if k != "overrides"))
    return result


SECTIONS = {"pgd": pgd_section, "lightning": lightning_section, "drand": drand_section, "ddp": ddp_section}


def _environment(device: torch.device) -> dict:
    env = {"device": device.type, "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        env.update(device_name=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   bf16_supported=torch.cuda.is_bf16_supported())
    return env


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: seconds per section (the test suite, on CPU)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out", default=None, help="output JSON (default benchmarks/results/gpu_check_<device>[_quick].json)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but CUDA is not available")
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        sys.exit(f"unknown section(s) {', '.join(sorted(unknown))}; allowed: {', '.join(SECTIONS)}")
    # data (CIFAR-10 under data/, or ../shared) where the user keeps it, else beside this checkout; the
    # in-process check and the advlab-train subprocesses then look in the same place
    os.environ.setdefault("ADVLAB_ROOT", str(ROOT))
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    size = SIZES["quick" if args.quick else "full"]
    result = {"benchmark": "gpu_check", "quick": args.quick, "sizes": size, **_environment(device), "sections": {}}
    started = time.perf_counter()
    for name in args.sections.split(","):
        print(f"[{name}]")
        t0 = time.perf_counter()
        section = SECTIONS[name](device, size, args.quick)
        if device.type == "cuda":  # the next section may be a subprocess that wants the memory
            torch.cuda.empty_cache()
        result["sections"][name] = {**section, "section_s": time.perf_counter() - t0}
    result["total_s"] = time.perf_counter() - started
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"gpu_check_{device.type}{'_quick' if args.quick else ''}.json"
    write_json(out, result)
    print(f"total {result['total_s']:.1f} s; wrote {out}")
    return result


if __name__ == "__main__":
    main()
