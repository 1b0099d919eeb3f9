"""Load an advlab-train run from Python, attack its model with advlab's PGD and with torchattacks'
PGD on the same points, and plot robust accuracy against ε for both.

    python examples/attack_a_run.py                 # trains a small digits CNN first (~30 s on a CPU)
    python examples/attack_a_run.py <run dir>       # any finished advlab-train run
    python examples/attack_a_run.py <run dir> 100   # only the first 100 test points

Writes <run dir>/plots/example_pgd_vs_torchattacks.png and prints one line per ε.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import advlab
from advlab.attacks import PGD

EPS_GRID = (0.0, 0.05, 0.1, 0.15, 0.2)
DEFAULT_RUN = Path("outputs/examples/digits_cnn")


def train_small_run(run_dir: Path) -> None:
    """A run to attack, sized for the example: a standard CNN on scikit-learn's digits."""
    subprocess.run([sys.executable, "-m", "advlab.apps.train", "method=standard", "arch=cnn", "trainer.max_epochs=8",
                    "logger=csv", f"hydra.run.dir={run_dir}"], check=True)


def robust_accuracy(model, x, y, attack_fn) -> float:
    x_adv = attack_fn(x, y)
    with torch.no_grad():
        return float(((model(x_adv).argmax(1) == y) & (model(x).argmax(1) == y)).float().mean())


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0]) if argv else DEFAULT_RUN
    points = int(argv[1]) if len(argv) > 1 else None
    if not (run_dir / "metrics.json").is_file():
        train_small_run(run_dir)
    run = advlab.load_run(run_dir)
    print(f"loaded {run.run_dir.name}: test/acc {run.test_accuracy():.4f} (metrics.json: {run.metrics['test/acc']:.4f})")
    x, y = run.datamodule.x_test[:points], run.datamodule.y_test[:points]
    import torchattacks  # test-only reference implementation (installed by `make install`)

    ours, theirs = [], []
    for eps in EPS_GRID:
        # the same algorithm on both sides: 20 steps of ε/4 from x, the last iterate (advlab's default
        # keep_best=True keeps the best iterate instead, which can only lower robust accuracy)
        pgd = PGD(eps=eps, norm="linf", steps=20, rel_step_size=0.25, random_start=False, keep_best=False, bounds=(0.0, 1.0))
        reference = torchattacks.PGD(run.model, eps=eps, alpha=eps / 4, steps=20, random_start=False)
        ours.append(robust_accuracy(run.model, x, y, lambda a, b: pgd(run.model, a, b)))
        theirs.append(robust_accuracy(run.model, x, y, lambda a, b: reference(a, b) if eps > 0 else a))
        print(f"eps={eps:.2f} ({len(y)} points)  advlab PGD {ours[-1]:.4f}  torchattacks PGD {theirs[-1]:.4f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(EPS_GRID, ours, marker="o", label="advlab PGD")
    ax.plot(EPS_GRID, theirs, marker="x", linestyle="--", label="torchattacks PGD")
    ax.set_xlabel("ε (L∞)"), ax.set_ylabel("robust accuracy"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title(f"{run.config.run_name}: PGD-20, no random start", fontsize=9)
    out = run.run_dir / "plots" / "example_pgd_vs_torchattacks.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
