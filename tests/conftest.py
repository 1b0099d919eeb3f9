"""Shared fixtures: real advlab-train runs in subprocesses, each in its own root directory."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Small but real: digits, a couple of epochs, a short attack.
FAST = ["trainer.max_epochs=2", "source.max_epochs=3", "attack.steps=10", "callbacks=none", "logger=csv", "arch.width=256"]


def pytest_configure(config):
    # Under pytest-xdist (`make test`: a worker per core) each worker, and every app it starts, runs
    # one OpenMP thread: two spinning thread pools per core are many times slower than one.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path

    @property
    def metrics(self) -> dict:
        return json.loads((self.run_dir / "metrics.json").read_text())

    @property
    def log(self) -> str:
        return self.stdout + self.stderr


def run_advlab(root: Path, *overrides: str, run_dir: Path | None = None, module: str = "advlab.apps.train", timeout: int = 300, env=None, wait=True):
    """Run an advlab Hydra app in a subprocess with ADVLAB_ROOT=root (data/, cache/, outputs/ there)."""
    run_dir = run_dir or root / "run"
    args = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    full_env = {**os.environ, "ADVLAB_ROOT": str(root), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)  # Hydra's short error reports, as users see them
    if not wait:
        return subprocess.Popen(args, cwd=root, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), run_dir
    proc = subprocess.run(args, cwd=root, env=full_env, capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr, run_dir)


def attack_from_conf(name: str, eps: float = 0.1, **settings):
    """The attack of conf/attack/<name>.yaml as Hydra's instantiate builds it (the run's ε and seed 0),
    with `settings` over its keys: attacks are found by their YAML, not by a Python-side name list."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    root = OmegaConf.create({"eps": {"value": eps}, "seed": 0, "attack": OmegaConf.load(REPO / "conf" / "attack" / f"{name}.yaml")})
    return instantiate(root.attack, **settings)


# A finished standard run with the default callbacks (last.ckpt, best.ckpt) and W&B offline, shared
# by the resume, checkpoint and Python-API tests (they copy it before changing anything).
STANDARD_CNN = ["method=standard", "arch=cnn", "trainer.max_epochs=6", "logger=wandb"]


@pytest.fixture(scope="session")
def standard_cnn_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("standard_cnn")
    run = run_advlab(root, *STANDARD_CNN, run_dir=root / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture
def advlab_root(tmp_path):
    return tmp_path


@pytest.fixture(scope="session")
def shared_dir():
    if not (SHARED / "data").is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models in-process: one torch thread is as fast, and immune to oversubscription on a
    2-core machine shared with other jobs (where two spinning threads can be 20× slower)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def digits_mlp():
    """A small MLP trained for a moment on scikit-learn's digits: (model in eval mode, x_test (N, 1, 8, 8)
    in [0, 1], y_test); its test accuracy is about 0.95."""
    from torch import nn

    x, y = digits_tensors()
    with torch_threads(1):
        model = trained_on_digits(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), 1400, 80)
    return model, x[1400:1600], y[1400:1600]


def digits_tensors():
    """scikit-learn's digits as (x (N, 1, 8, 8) in [0, 1], y)."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target)


def trained_on_digits(build, n_train: int, steps: int):
    """``build()`` under seed 0 (the global RNG left as it was), Adam 1e-2 for ``steps`` full-batch steps on
    the first ``n_train`` digits; returned in eval mode without parameter gradients."""
    import torch
    from torch import nn

    x, y = digits_tensors()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build()
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:n_train]), y[:n_train]).backward()
            opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()
