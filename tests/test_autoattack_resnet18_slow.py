"""Slow: advlab's AutoAttack against the authors' code (pyautoattack) on a real trained network — the
CIFAR-10 ResNet-18 that pyautoattack ships — on 200 shared CIFAR-10 test images, L∞ 1/255 and 2/255
(where a standard model's robust accuracy is not yet 0): clean accuracy, APGD-CE (the first member, on
the same points and seed as APGD-CE alone) and the full standard AutoAttack within 1 percentage point
of the reference. The numbers and wall times are written to
benchmarks/results/autoattack_resnet18_cpu.json (docs/results.md#autoattack-vs-the-authors-code cites them)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N = 200

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resnet18(shared_dir):
    pytest.importorskip("pyautoattack", reason="pyautoattack not installed: pip install --no-deps pyautoattack")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_autoattack

    return bench_autoattack, bench_autoattack.resnet18_points(N, shared=shared_dir)


def test_autoattack_on_the_real_resnet18_equals_the_reference(resnet18):
    bench, (model, x, y) = resnet18
    result = bench.main(["--model", "resnet18", "--n", str(N), "--eps", "1/255", "2/255", "--no-torchattacks", "--attacks", "standard"])
    assert len(result["rows"]) == 2
    for row in result["rows"]:
        assert 0.8 <= row["clean_acc"] <= 0.95  # the shipped model: clean ≈ 0.86 (JPEG copy of the test set)
        ours, ref = row["results"]["advlab"], row["results"]["pyautoattack"]
        assert abs(ours["robust_acc"] - ref["robust_acc"]) <= 0.01 + 1e-9, row  # the full standard AutoAttack
        # APGD-CE: the robust accuracy after the first member (APGD-CE alone on the same points, same seed)
        assert abs(ours["robust_after"]["apgd-ce"] - ref["robust_after"]["apgd-ce"]) <= 0.01 + 1e-9, row
        assert ours["robust_acc"] < row["clean_acc"]
    standard = {row["eps"]: row["results"]["advlab"]["robust_acc"] for row in result["rows"]}
    assert standard[1 / 255] > standard[2 / 255]  # falling with ε
