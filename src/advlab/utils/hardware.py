"""What this machine offers a run: whether bf16 is native where it computes (so that
`trainer.precision=auto` takes the bf16 fast path only where it is fast) and how many cores this
process may use (torch's threads). The one place of `trainer.precision`'s rules: the values allowed
(`check_precision`, the pre-flight's), `auto` resolved in every trainer node of a run
(`resolve_precisions`), and whether a run trains, and so crafts, in bf16 (`trains_in_bf16`).

A leaf module: nothing from the rest of advlab but its error type. Each probe (`cpu_info`, `cuda_bf16`, `affinity_cores`,
`cgroup_quota`) is a module-level function, so tests can stub one and see the decisions follow.
"""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any, NamedTuple

# /proc/cpuinfo flags of the CPUs whose bf16 arithmetic is native (oneDNN's bf16 kernels use them)
BF16_CPU_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
# Measured where bf16 is emulated (RECIPES.md §8, benchmarks/bench_fast_path.py: ResNet-9 width 32,
# batch 128, 2 threads, an AVX2-only AMD EPYC)
EMULATED_BF16 = "a training step took 29.8 s in bf16 vs 0.91 s in fp32 (33x slower) on an AVX2-only AMD EPYC (RECIPES.md §8)"


class Precision(NamedTuple):
    value: Any            # what the run trains with: `auto` resolved, anything else as given
    line: str | None      # what to log about it, if anything
    warning: bool         # the line is a warning (explicit bf16 where it is emulated)


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]] | None:
    """(model name, flags) of the first CPU listed in /proc/cpuinfo; None where there is no such file."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if name and flags:
            break
    return name or platform.machine(), flags


def onednn_isa_cap() -> str | None:
    """The ISA oneDNN is capped at by ONEDNN_MAX_CPU_ISA (or its old name DNNL_MAX_CPU_ISA), if that
    cap rules out its bf16 kernels (e.g. AVX2, AVX512_CORE); None where it does not."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(name, "").strip().upper()
        if cap:  # ISAs from AVX512_CORE_BF16 up carry bf16 dot products (the AMX, FP16 and AVX10 ones too)
            native = cap in ("ALL", "DEFAULT") or any(word in cap for word in ("BF16", "AMX", "FP16", "AVX10"))
            return None if native else f"{name}={cap}"
    return None


def cpu_bf16() -> tuple[bool, str]:
    """(bf16 is native on this CPU, what was found), e.g. (False, "CPU AMD EPYC: no AVX512-BF16/AMX-BF16")."""
    info = cpu_info()
    if info is not None:
        name, flags = info
        found = [label for flag, label in BF16_CPU_FLAGS.items() if flag in flags]
        cap = onednn_isa_cap()
        if found and cap:  # the units are there but oneDNN was told not to use them: bf16 would be emulated
            return False, f"CPU {name}: {'/'.join(found)} unused, oneDNN capped by {cap}"
        return bool(found), f"CPU {name}: " + ("/".join(found) if found else "no AVX512-BF16/AMX-BF16")
    import torch

    # no /proc/cpuinfo (not Linux): torch's kernel level rules bf16 units out below AVX512 but cannot
    # confirm them above it (AVX512 CPUs without BF16 exist), so bf16 is never assumed native here
    capability = torch.backends.cpu.get_cpu_capability()
    unknown = capability.startswith("AVX512")
    return False, (f"CPU {platform.processor() or platform.machine()}: torch CPU capability {capability}, "
                   + ("bf16 units unknown" if unknown else "no AVX512-BF16/AMX-BF16"))


def cuda_bf16() -> tuple[bool, str]:
    """(the current CUDA device computes bf16 natively, its name)."""
    import torch

    try:  # newer torch also answers True where bf16 is only emulated, unless told not to
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        native = torch.cuda.is_bf16_supported()
    return bool(native), f"CUDA {torch.cuda.get_device_name()}: " + ("bf16 supported" if native else "no native bf16")


def device_type(accelerator) -> str:
    """Where a run with this accelerator computes, as advlab.artifacts.models.pick_device places it:
    cuda (auto / gpu / cuda with a GPU present), mps, else cpu."""
    name = str(accelerator or "auto").lower()
    if name in ("auto", "gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "mps" if name == "mps" else "cpu"


def native_bf16(device: str) -> tuple[bool, str]:
    if device == "cuda":
        return cuda_bf16()
    if device == "cpu":
        return cpu_bf16()
    return False, f"{device}: bf16 not known to be native"


def resolve_precision(value, accelerator=None, key: str = "trainer.precision") -> Precision:
    """`auto` → bf16-mixed where bf16 is native on the device the accelerator picks, else 32-true,
    with a line saying which and why. An explicit bf16 precision on a CPU without bf16 units is kept,
    with a warning line giving the measured slowdown. Any other value: kept, nothing to say."""
    text = str(value)
    if text != "auto" and not text.startswith("bf16"):
        return Precision(value, None, False)
    device = device_type(accelerator)
    native, found = native_bf16(device)
    if text == "auto":
        chosen = "bf16-mixed" if native else "32-true"
        why = "bf16 is native" if native else ("bf16 would be emulated, ~33x slower" if device == "cpu" else "no bf16 fast path")
        return Precision(chosen, f"{key}=auto -> {chosen} ({found}; {why})", False)
    if device == "cpu" and not native:
        return Precision(value, f"{key}={text} on {found}: bf16 is emulated here and slow: {EMULATED_BF16}; "
                                f"{key}=auto picks 32-true on such CPUs", True)
    return Precision(value, None, False)


# trainer nodes whose `precision` a run trains with: the run's and its model specs' own
PRECISION_NODES = ("trainer", "source.trainer", "target.trainer")


def check_precision(value, key: str = "trainer.precision") -> None:
    """A precision Lightning takes (its own list: 32-true, bf16-mixed, 16, ...) or advlab's `auto`; else
    a ConfigError naming `key` and the allowed values."""
    from typing import get_args

    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT

    from advlab.errors import ConfigError

    allowed = list(dict.fromkeys(["auto"] + [str(v) for part in get_args(_PRECISION_INPUT) for v in get_args(part)]))
    if value is not None and str(value) not in allowed:
        raise ConfigError(key, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


def resolve_precisions(cfg) -> None:
    """Each `precision: auto` of a run's config (its trainer, a model spec's own trainer node) replaced
    by what it resolves to here, with a line saying which and why; an explicit bf16 where it is
    emulated: one warning line. The config then holds only values Lightning knows."""
    import logging

    from omegaconf import OmegaConf, open_dict

    log = logging.getLogger(__name__)
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None) or cfg.get("accelerator")
    models = cfg.get("models")
    nodes = [*PRECISION_NODES, *(f"models.{name}.trainer" for name in (models if OmegaConf.is_dict(models) else {}))]
    warned = False
    for node in nodes:
        value = OmegaConf.select(cfg, f"{node}.precision", default=None, throw_on_missing=False)
        if value is None:
            continue
        resolved = resolve_precision(value, accelerator, f"{node}.precision")
        if resolved.value != value:
            with open_dict(cfg):
                OmegaConf.update(cfg, f"{node}.precision", resolved.value, merge=False)
        if resolved.line and not (resolved.warning and warned):
            log.log(logging.WARNING if resolved.warning else logging.INFO, resolved.line)
            warned = warned or resolved.warning


def trains_in_bf16(trainer, device_type: str) -> bool:
    """trainer.precision=bf16-mixed (or bf16-true, or `auto` resolved to bf16-mixed on this device): the
    run trains in bf16, and its attacks and constructions run under bf16 autocast too."""
    return str(resolve_precision((trainer or {}).get("precision", "32-true"), device_type).value).startswith("bf16")


def at_precision(node, accelerator):
    """A trainer node (a dict or a config node) with `precision: auto` resolved for `accelerator`; any other
    node as it is. A run resolves its nodes up front (`resolve_precisions`); models built from Python here."""
    if node is None or str(node.get("precision")) != "auto":
        return node
    value = resolve_precision("auto", accelerator).value
    if isinstance(node, dict):
        return {**node, "precision": value}
    from omegaconf import OmegaConf

    return OmegaConf.merge(node, {"precision": value})


# -- cores ------------------------------------------------------------------------------------------

def affinity_cores() -> int:
    """The CPUs this process may run on (its affinity mask; all CPUs where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cgroup_dirs(root: Path, own: Path) -> list[Path]:
    """The folders of this process's CPU cgroup and of its ancestors (a quota at any level applies),
    for cgroup v2 (`0::/path`) and v1 (`N:cpu,cpuacct:/path`), then the mount points themselves."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        lines = []
    dirs = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], Path(parts[2].lstrip("/"))
        if controllers and "cpu" not in controllers.split(","):
            continue
        base = root / controllers if controllers else root
        dirs += [base / rel for rel in (path, *path.parents)]
    return list(dict.fromkeys([*dirs, root, root / "cpu", root / "cpu,cpuacct"]))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: str = "/sys/fs/cgroup", own: str = "/proc/self/cgroup") -> float | None:
    """The CPUs per period this process's cgroup may use (quota / period), None where unlimited or
    unknown: cgroup v2's `cpu.max` ("max 100000" or "150000 100000"), v1's cpu.cfs_quota_us (-1:
    none) / cpu.cfs_period_us. The smallest over the cgroup and its ancestors."""
    quotas = []
    for folder in _cgroup_dirs(Path(root), Path(own)):
        v2 = _read(folder / "cpu.max")
        if v2:
            quota, _, period = v2.partition(" ")
            if quota != "max" and quota.isdigit() and period.strip().isdigit():
                quotas.append(int(quota) / int(period))
            continue
        quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
        if quota and period and quota.lstrip("-").isdigit() and period.isdigit() and int(quota) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def usable_cores() -> tuple[int, str]:
    """(cores this process may keep busy, how that was found): its affinity, capped by its cgroup's
    CPU quota rounded down (a 1.5-CPU quota throttles a second busy thread half of the time)."""
    affinity, quota = affinity_cores(), cgroup_quota()
    usable = affinity if quota is None else max(1, min(affinity, math.floor(quota)))
    return usable, f"affinity {affinity}, cgroup quota {'none' if quota is None else f'{quota:g}'}"


def thread_budget(usable: int, processes: int = 1, current: int | None = None, cap: int | None = None) -> int:
    """Torch threads for one of `processes` processes sharing `usable` cores: max(1, usable // processes),
    and no more than `current` (torch's own or OMP_NUM_THREADS's choice) nor `cap` (a launcher's
    cpus_per_task)."""
    threads = max(1, usable // max(1, processes))
    for limit in (current, cap):
        if limit:
            threads = min(threads, int(limit))
    return threads


# the CPU flags that decide a run's speed (oneDNN's kernels), as people name them
SPEED_FLAGS = {"avx2": "AVX2", "avx512f": "AVX512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX"}


def machine() -> dict:
    """What a run ran on, as its run directory records it (`machine.json`): the CPU's name, the
    cores this process may use, its speed-deciding units, the GPU if there is one, torch's version."""
    import torch

    info = cpu_info()
    name, flags = info if info is not None else (platform.processor() or platform.machine(), set())
    return {"cpu": name, "cores": usable_cores()[0], "units": [label for flag, label in SPEED_FLAGS.items() if flag in flags],
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__}


def machine_label(record: dict) -> str:
    """One line for a table, e.g. "Intel Xeon, 2 cores, AVX2, AVX512, AVX512-BF16, AMX" or "…, AVX2 only"."""
    cpu = " ".join(str(record.get("cpu", "unknown CPU")).replace("(R)", "").replace("(TM)", "").replace(" Processor", "").split())
    units = list(record.get("units") or [])
    line = f"{cpu}, {record.get('cores', '?')} cores, " + (", ".join(units) + (" only" if units == ["AVX2"] else "") if units else "no AVX2")
    return line + (f", {record['gpu']}" if record.get("gpu") else "")
