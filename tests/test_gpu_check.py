"""benchmarks/gpu_check.py --quick on CPU, in a subprocess as `make gpu-check ARGS=--quick` runs it:
every section runs (the D_rand job end to end, the DDP smoke on 2 CPU processes) and reports numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import REPO

SECTIONS = {"pgd", "lightning", "drand", "ddp"}


def test_gpu_check_quick_on_cpu_reports_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    started = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    print(f"gpu_check --quick: {time.time() - started:.1f} s wall")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["device"] == "cpu" and set(result["sections"]) == SECTIONS
    assert all(s["section_s"] > 0 for s in result["sections"].values())
    pgd = result["sections"]["pgd"]["rows"]
    assert {(r["arch"], r["precision"]) for r in pgd} == {(a, p) for a in ("resnet18", "resnet9") for p in ("fp32", "bf16")}
    assert all(r["advlab_images_per_s"] > 0 and r["torchattacks_images_per_s"] > 0 for r in pgd)
    # fp32, no random start: the same iterates as torchattacks (a sign flip would be ≥ α = 2/255)
    assert all(r["max_abs_diff_vs_torchattacks"] < 1e-4 for r in pgd if r["precision"] == "fp32"), pgd
    lightning = result["sections"]["lightning"]
    assert lightning["plain_s_per_epoch"] > 0 and lightning["lightning_s_per_epoch"] > 0 and lightning["lightning_over_plain"] > 0
    drand = result["sections"]["drand"]
    assert drand["dataset"] == "digits" and drand["wall_s"] > 0 and drand["metrics"]["time/total_s"] > 0
    assert "derived.target_rule=rand" in drand["overrides"]
    assert all(0 < drand["metrics"][k] <= 1 for k in ("test/acc", "source/test/acc"))
    ddp = result["sections"]["ddp"]
    assert "skipped" in ddp["gpu"]  # no GPUs here: the advlab-train DDP job on GPUs is skipped, with the reason
    gloo = ddp["cpu_gloo"]
    assert gloo["world_size"] == 2 and gloo["steps_per_s"] > 0 and gloo["weights_in_sync"] is True
