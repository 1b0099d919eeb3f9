"""Hardware fit (issue 22): `trainer.precision=auto` resolves to bf16-mixed only where bf16 is native
(stubbed both ways, CUDA too, and the real detection on this CPU), the resolved value is what a real
run's config_resolved.yaml and cache keys see, an explicit bf16 on a CPU without bf16 units warns once
with the measured slowdown, and torch's threads never exceed this process's share of its usable cores
(affinity, cgroup quota, joblib workers, CPU DDP ranks)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from advlab.utils import hardware
from advlab.runtime import lifecycle as run_utils
from conftest import run_advlab, torch_threads

XEON = ("Intel(R) Xeon(R) Platinum 8481C", {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
EPYC_AVX2 = ("AMD EPYC 7B12", {"avx2", "fma", "f16c"})


@pytest.fixture
def cpu(monkeypatch):
    """Stub the CPU probe: `cpu(XEON)`; CUDA is absent unless a test says otherwise."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return lambda info: monkeypatch.setattr(hardware, "cpu_info", lambda path="/proc/cpuinfo": info)


# -- precision ------------------------------------------------------------------------------------

@pytest.mark.parametrize("info,expected,found", [
    (XEON, "bf16-mixed", "AMX-BF16/AVX512-BF16"),
    (("Intel Xeon 8375C", {"avx512f", "avx512_bf16"}), "bf16-mixed", "AVX512-BF16"),
    (EPYC_AVX2, "32-true", "no AVX512-BF16/AMX-BF16"),
    (("Intel Xeon Gold 6148", {"avx2", "avx512f", "avx512bw"}), "32-true", "no AVX512-BF16/AMX-BF16"),  # AVX512 is not bf16
])
def test_auto_is_bf16_only_on_a_cpu_with_bf16_units(cpu, info, expected, found):
    cpu(info)
    for accelerator in ("cpu", "auto", None):
        resolved = hardware.resolve_precision("auto", accelerator)
        assert resolved.value == expected and not resolved.warning
        assert resolved.line.startswith(f"trainer.precision=auto -> {expected} (CPU {info[0]}: {found}")
    assert ("emulated, ~33x slower" in resolved.line) == (expected == "32-true")


def test_auto_on_cuda_follows_the_devices_bf16_support(monkeypatch, cpu):
    cpu(EPYC_AVX2)  # the host CPU has no bf16: the GPU decides
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(hardware, "cuda_bf16", lambda: (True, "CUDA NVIDIA H100: bf16 supported"))
    for accelerator in ("gpu", "cuda", "auto"):
        assert hardware.resolve_precision("auto", accelerator).value == "bf16-mixed"
    assert hardware.resolve_precision("auto", "cpu").value == "32-true"  # trainer.accelerator=cpu on a GPU machine
    monkeypatch.setattr(hardware, "cuda_bf16", lambda: (False, "CUDA Tesla V100: no native bf16"))
    resolved = hardware.resolve_precision("auto", "gpu")
    assert resolved.value == "32-true" and "Tesla V100: no native bf16" in resolved.line
    assert hardware.resolve_precision("bf16-mixed", "gpu") == ("bf16-mixed", None, False)  # the CPU warning is for CPUs


def test_without_proc_cpuinfo_torchs_cpu_capability_decides_conservatively(monkeypatch, cpu):
    cpu(None)  # not Linux
    for capability, words in (("AVX2", "no AVX512-BF16/AMX-BF16"), ("AVX512", "bf16 units unknown"), ("DEFAULT", "no AVX512")):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        resolved = hardware.resolve_precision("auto", "cpu")
        assert resolved.value == "32-true" and f"torch CPU capability {capability}, {words}" in resolved.line


def test_other_precisions_pass_through_untouched(cpu):
    cpu(EPYC_AVX2)
    for value in ("32-true", "16-mixed", 32, "64-true"):
        assert hardware.resolve_precision(value, "cpu") == (value, None, False)


def _proc_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    return set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo (not Linux)")
def test_the_real_detection_agrees_with_proc_cpuinfo(monkeypatch):
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    native = bool({"avx512_bf16", "amx_bf16"} & _proc_flags())
    assert hardware.cpu_bf16()[0] is native
    assert hardware.resolve_precision("auto", "cpu").value == ("bf16-mixed" if native else "32-true")


@pytest.mark.parametrize("env,cap,expected", [
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, "ONEDNN_MAX_CPU_ISA=AVX2", "32-true"),
    ({"DNNL_MAX_CPU_ISA": "avx512_core"}, "DNNL_MAX_CPU_ISA=AVX512_CORE", "32-true"),  # AVX512 without its bf16 kernels
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, None, "bf16-mixed"),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, None, "bf16-mixed"),
    ({"ONEDNN_MAX_CPU_ISA": "ALL"}, None, "bf16-mixed"),
    ({}, None, "bf16-mixed"),
])
def test_a_onednn_isa_cap_below_bf16_makes_auto_fp32_on_a_cpu_with_bf16_units(cpu, monkeypatch, env, cap, expected):
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AMX Xeon (how one emulates an AVX2-only CPU): oneDNN's bf16 kernels
    are off, so bf16 autocast would be emulated, and auto must pick fp32 and say why."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cpu(XEON)
    resolved = hardware.resolve_precision("auto", "cpu")
    assert resolved.value == expected and not resolved.warning
    assert hardware.onednn_isa_cap() == cap
    assert (f"unused, oneDNN capped by {cap}" in resolved.line) == (cap is not None)
    cpu(EPYC_AVX2)  # no bf16 units: fp32 whatever the cap
    assert hardware.resolve_precision("auto", "cpu").value == "32-true"


def _cfg(**nodes):
    return OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "32-true"}, **nodes})


def test_explicit_bf16_on_a_cpu_without_bf16_units_runs_with_one_warning_naming_the_slowdown(cpu, caplog):
    cpu(EPYC_AVX2)
    cfg = _cfg(trainer={"accelerator": "cpu", "precision": "bf16-mixed"}, source={"trainer": {"precision": "bf16-mixed"}})
    with caplog.at_level(logging.INFO, logger="advlab"):
        run_utils.resolve_precisions(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and not [r for r in caplog.records if r.levelno == logging.INFO], caplog.text
    assert "trainer.precision=bf16-mixed on CPU AMD EPYC 7B12: no AVX512-BF16/AMX-BF16" in warnings[0]
    assert "29.8 s in bf16 vs 0.91 s in fp32 (33x slower)" in warnings[0] and "auto picks 32-true" in warnings[0]
    assert cfg.trainer.precision == "bf16-mixed" and cfg.source.trainer.precision == "bf16-mixed"  # it still runs as asked
    caplog.clear()
    cpu(XEON)
    with caplog.at_level(logging.INFO, logger="advlab"):
        run_utils.resolve_precisions(_cfg(trainer={"accelerator": "cpu", "precision": "bf16-mixed"}))
    assert not caplog.records  # native: nothing to say


def test_auto_is_replaced_in_the_run_config_and_every_spec_trainer_node(cpu, caplog):
    cpu(EPYC_AVX2)
    cfg = _cfg(trainer={"accelerator": "cpu", "precision": "auto"}, source={"trainer": {"precision": "auto"}},
               target={"max_epochs": 1}, models={"a": {"trainer": {"precision": "auto"}}, "b": {"checkpoint": "x"}})
    OmegaConf.set_struct(cfg, True)
    with caplog.at_level(logging.INFO, logger="advlab"):
        run_utils.resolve_precisions(cfg)
    assert cfg.trainer.precision == cfg.source.trainer.precision == cfg.models.a.trainer.precision == "32-true"
    assert "trainer" not in cfg.target and "trainer" not in cfg.models.b
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == ("trainer.precision=auto -> 32-true (CPU AMD EPYC 7B12: no AVX512-BF16/AMX-BF16; bf16 would be emulated, "
                        "~33x slower)") and len(lines) == 3
    cpu(XEON)  # advlab-eval / -probe: no run trainer, the `accelerator` key
    evaluation = OmegaConf.create({"accelerator": "cpu", "models": {"a": {"trainer": {"precision": "auto"}}}})
    run_utils.resolve_precisions(evaluation)
    assert evaluation.models.a.trainer.precision == "bf16-mixed"


def test_a_spec_at_auto_has_the_cache_key_of_the_value_it_resolves_to(cpu):
    from advlab.artifacts.models import Artifacts

    class Data:
        batch_size = 64

        def describe(self):
            return {"name": "digits"}

    spec = OmegaConf.create({"method": {"_target_": "advlab.methods.StandardTraining"}, "arch": {"_target_": "advlab.models.MLP"},
                             "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}, "max_epochs": 1, "seed": 0})
    for info, resolved in ((XEON, "bf16-mixed"), (EPYC_AVX2, "32-true")):
        cpu(info)
        auto, explicit = (Artifacts(None, trainer={"accelerator": "cpu", "precision": p}, progress=False) for p in ("auto", resolved))
        assert auto.model_spec(spec, Data()) == explicit.model_spec(spec, Data())
        assert auto.bf16 is explicit.bf16 is (resolved == "bf16-mixed")
    assert "trainer" not in auto.model_spec(spec, Data())  # fp32: the key it had before `auto` existed


# -- cores and threads ----------------------------------------------------------------------------

def _cgroup(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[str, str]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "self_cgroup").write_text(own)
    return str(tmp_path), str(tmp_path / "self_cgroup")


def test_cgroup_quota_v2_v1_unlimited_and_a_parents_limit(tmp_path):
    assert hardware.cgroup_quota(*_cgroup(tmp_path / "a", "0::/job\n", {"job/cpu.max": "150000 100000\n"})) == 1.5
    assert hardware.cgroup_quota(*_cgroup(tmp_path / "b", "0::/job\n", {"job/cpu.max": "max 100000\n"})) is None
    v1 = {"cpu,cpuacct/slurm/job/cpu.cfs_quota_us": "200000", "cpu,cpuacct/slurm/job/cpu.cfs_period_us": "100000"}
    assert hardware.cgroup_quota(*_cgroup(tmp_path / "c", "4:memory:/x\n3:cpu,cpuacct:/slurm/job\n", v1)) == 2.0
    unlimited = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    assert hardware.cgroup_quota(*_cgroup(tmp_path / "d", "1:cpu:/\n", unlimited)) is None
    nested = {"a/b/cpu.max": "max 100000", "a/cpu.max": "300000 100000"}  # the parent's quota binds
    assert hardware.cgroup_quota(*_cgroup(tmp_path / "e", "0::/a/b\n", nested)) == 3.0
    assert hardware.cgroup_quota(str(tmp_path / "none"), str(tmp_path / "missing")) is None


def test_usable_cores_is_the_affinity_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(hardware, "affinity_cores", lambda: 8)
    for quota, usable in ((None, 8), (2.0, 2), (1.5, 1), (0.5, 1), (16.0, 8)):
        monkeypatch.setattr(hardware, "cgroup_quota", lambda q=quota: q)
        assert hardware.usable_cores() == (usable, f"affinity 8, cgroup quota {'none' if quota is None else f'{quota:g}'}")
    assert hardware.thread_budget(8, 2) == 4 and hardware.thread_budget(8, 3) == 2 and hardware.thread_budget(2, 4) == 1
    assert hardware.thread_budget(8, 1, current=1) == 1 and hardware.thread_budget(8, 1, cap=3) == 3


@pytest.fixture
def cores(monkeypatch):
    """Stub the cores (affinity, quota) and keep torch's threads and OMP_NUM_THREADS as they were."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(run_utils, "_multirun_launcher", lambda: None)

    def stub(affinity: int, quota: float | None = None, launcher=None):
        monkeypatch.setattr(hardware, "affinity_cores", lambda: affinity)
        monkeypatch.setattr(hardware, "cgroup_quota", lambda: quota)
        monkeypatch.setattr(run_utils, "_multirun_launcher", lambda: None if launcher is None else OmegaConf.create(launcher))

    with torch_threads(torch.get_num_threads()):
        yield stub


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@pytest.mark.parametrize("affinity,quota,launcher,trainer,threads,line", [
    (4, 1.5, None, {"accelerator": "cpu"}, 1, "threads: 1 torch thread (1 usable cores: affinity 4, cgroup quota 1.5)"),
    (2, None, None, {"accelerator": "cpu"}, 2, "threads: 2 torch threads (2 usable cores: affinity 2, cgroup quota none)"),
    (8, None, {"_target_": JOBLIB, "n_jobs": 2}, {"accelerator": "cpu"}, 4,
     "threads: 4 torch threads per job (8 usable cores: affinity 8, cgroup quota none; 2 joblib workers)"),
    (8, 6.0, {"_target_": JOBLIB, "n_jobs": -1}, {}, 1, "threads: 1 torch thread per job (6 usable cores: affinity 8, cgroup quota 6; 6 joblib workers)"),
    (2, None, {"_target_": JOBLIB, "n_jobs": 4}, {}, 1, "; 4 joblib workers; more workers than cores: set hydra.launcher.n_jobs<=2)"),
    (8, None, {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": 1}, {}, 1,
     "threads: 1 torch thread (8 usable cores: affinity 8, cgroup quota none; launcher cpus_per_task 1)"),
    (8, None, None, {"accelerator": "cpu", "devices": 2}, 4, "threads: 4 torch threads per job (8 usable cores: affinity 8, cgroup quota none; 2 DDP ranks)"),
])
def test_torch_threads_never_exceed_this_processs_share_of_its_cores(cores, caplog, monkeypatch, affinity, quota, launcher, trainer, threads, line):
    cores(affinity, quota, launcher)
    torch.set_num_threads(8)  # torch's own choice (OMP_NUM_THREADS unset): more than the share
    monkeypatch.delenv("OMP_NUM_THREADS")
    with caplog.at_level(logging.INFO, logger="advlab"):
        assert run_utils.fit_threads(OmegaConf.create({"trainer": trainer})) == threads
    assert torch.get_num_threads() == threads and int(__import__("os").environ["OMP_NUM_THREADS"]) == threads
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("threads:")] == [caplog.records[-1].getMessage()]
    assert line in caplog.records[-1].getMessage()


def test_a_lower_thread_count_the_user_chose_is_kept_and_said(cores, caplog):
    cores(8)
    torch.set_num_threads(1)  # OMP_NUM_THREADS=1 (the fixture's)
    with caplog.at_level(logging.INFO, logger="advlab"):
        assert run_utils.fit_threads(OmegaConf.create({})) == 1
    assert caplog.records[-1].getMessage() == ("threads: 1 torch thread (8 usable cores: affinity 8, cgroup quota none; "
                                               "torch had 1 (OMP_NUM_THREADS=1))")


# -- a real run -----------------------------------------------------------------------------------

TINY = ["dataset=digits", "trainer.max_epochs=1", "source.max_epochs=1", "attack.steps=2", "callbacks=none", "logger=csv", "arch.width=32"]


@pytest.mark.slow  # two real runs (~50 s on 2 cores); the resolution and the key are tested in-process
def test_a_run_at_auto_records_the_resolved_precision_and_shares_the_explicit_runs_cache_entries(tmp_path):
    here = hardware.resolve_precision("auto", "auto").value  # what the subprocess will pick on this machine
    auto = run_advlab(tmp_path, *TINY, "trainer.precision=auto", run_dir=tmp_path / "auto")
    assert auto.returncode == 0, auto.stderr[-3000:]
    assert OmegaConf.load(auto.run_dir / "config_resolved.yaml").trainer.precision == here
    assert f"trainer.precision=auto -> {here} (CPU " in auto.log and "threads: " in auto.log
    explicit = run_advlab(tmp_path, *TINY, f"trainer.precision={here}", run_dir=tmp_path / "explicit")
    assert explicit.returncode == 0, explicit.stderr[-3000:]
    assert "trainer.precision=auto" not in explicit.log and "Training source model" not in explicit.log
    # one source model and one crafted dataset in the cache: the explicit run's keys are the auto run's
    for kind in ("models", "datasets"):
        entries = sorted((tmp_path / "cache" / kind).glob("*.pt"))
        assert len(entries) == 1, (kind, entries)
    key = json.loads(entries[0].with_suffix(".json").read_text())
    assert ("bf16" in json.dumps(key)) == (here == "bf16-mixed")
    assert explicit.log.count("Cache hit: reusing") >= 2


@pytest.mark.slow
def test_jobs_of_a_joblib_sweep_share_the_cores(tmp_path):
    """A real 2-worker joblib multirun: each job takes its share of the usable cores (about 30 s)."""
    usable, found = hardware.usable_cores()
    sweep = tmp_path / "sweep"
    proc = run_advlab(tmp_path, "-m", "hydra/launcher=joblib_local", "method=standard", "dataset=digits", "trainer.max_epochs=1",
                      "callbacks=none", "logger=csv", "arch.width=32", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    share = max(1, usable // 2)
    line = f"threads: {share} torch thread{'s' if share > 1 else ''} per job ({usable} usable cores: {found}; 2 joblib workers"
    logs = [p.read_text() for p in sorted(sweep.glob("*/*.log"))]
    assert len(logs) == 2 and all(line in text for text in logs), logs
