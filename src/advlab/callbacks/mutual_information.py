"""Mutual information of layer representations during training (Zhang et al. 2022; RECIPES.md §6).

At the configured epochs (by default after their training; `timing: start` before it, the untrained
network included), on an evaluation subset of N points (by default one fixed subset; `sampling:
fresh` draws new ones at every measurement, as Zhang et al. do) and its adversarial copy (crafted
against the current model), the chosen layers' outputs (by default after the activations;
`hook_point: pre_activation` the Conv2d / Linear outputs, Zhang et al.'s) are captured with forward
hooks and I(X;T), I(T;Y) are estimated per layer (KDE bounds, binning, matrix-based Rényi: see
`advlab.analysis.information`). The defaults are advlab's earlier behaviour; the Zhang et al.
choices are options (conf/experiment/zhang_mnist.yaml uses them). The values are logged (CSV / W&B, keys `mi/<input>/<estimator>/
<layer>/I_XT|I_TY`), kept as a history in `<run dir>/mi_history.json` and `.csv`, and drawn as the
information plane in `plots/information_plane.png` when training ends. The callback touches neither
the weights nor the training RNG stream: runs with and without it train identically.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from advlab.analysis.activations import check_hook_point, layer_outputs, resolve_layers
from advlab.analysis.information import ESTIMATORS, InformationEstimator
from advlab.errors import ConfigError, check_number
from advlab.utils.io import write_json, write_text

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
SAMPLINGS = ("fixed", "fresh")
TIMINGS = ("end", "start")
HISTORY_FIELDS = ("epoch", "input", "estimator", "layer", "I_XT", "I_TY", "n_points", "n_distinct")


def history_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def fresh_generator(seed: int, epoch: int, kind: int) -> torch.Generator:
    """The generator of one measurement's draws: a function of (seed, epoch, input kind) only, so the
    draws are reproducible (also after a resume) and differ between epochs and kinds."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 8 + kind) % (2**63))


def draw_indices(n_total: int, n_points: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """`draws` independent subsets of min(n_points, n_total) indices of range(n_total), each without
    replacement (one shuffled batch), concatenated: different draws may share indices."""
    return torch.cat([torch.randperm(n_total, generator=generator)[:n_points] for _ in range(draws)])


class MutualInformation(pl.Callback):
    """Estimate per-layer I(X;T) and I(T;Y) at chosen epochs.

    Args:
        epochs: the epochs measured: `all`, or a list of indices (negative ones count from the end).
            With timing `end` index e is 0-based, measured after that epoch's training (-1 = the last
            epoch); with timing `start` e is the number of epochs trained so far, measured before epoch
            e's training: 0 = the untrained network, -1 = max_epochs, the trained network (measured
            when the last epoch ends).
        n_points: points per draw (all of `split` if it is smaller). The estimates saturate at
            log₂ of the number of distinct points: compare runs only at the same N.
        split: the datamodule split it is drawn from: test, val or train.
        layers: module names inside the classifier (e.g. `body.4`); null = the layers of `hook_point`.
        hook_point: with `layers` null, `post_activation` (default: pooling / residual blocks, hidden
            ReLUs, logits) or `pre_activation` (every Conv2d and Linear output: Zhang et al.'s).
        sampling: `fixed` (default): one subset of n_points drawn once with `seed`, measured at every
            epoch; `fresh` (Zhang et al.): at every measurement and for each input kind (clean,
            adversarial) `draws` independent subsets of n_points each, from a generator seeded with
            (seed, epoch, kind): reproducible, different at every measurement; the draws may share
            points, as the authors' repeated `next(iter(shuffled DataLoader))` do.
        draws: subsets per measurement (fresh sampling; the authors: 2 × 2,500).
        timing: `end` (default): after the scheduled epochs' training; `start` (Zhang et al.):
            before it, so the untrained network is measured too (see `epochs`).
        estimators, noise_var, bin_size, renyi_alpha, renyi_sigma: see `InformationEstimator`.
        attack: an attack config node (or Attack) for the adversarial copy, crafted against the
            current model at each measurement; null = clean inputs only.
        seed: draws the evaluation subsets.
        batch_size: batch size of the forward passes and the attack.
    """

    def __init__(self, epochs: Sequence[int] | str = (0, 5, -1), n_points: int = 1000, split: str = "test",
                 layers: Sequence[str] | None = None, estimators: Sequence[str] = ESTIMATORS, noise_var: float = 0.1,
                 bin_size: float = 0.5, renyi_alpha: float = 1.01, renyi_sigma: float | None = None, attack: Any = None,
                 seed: int = 0, batch_size: int = 1000, plot: bool = True, hook_point: str = "post_activation",
                 sampling: str = "fixed", draws: int = 1, timing: str = "end"):
        super().__init__()
        self.every = epochs == "all"
        epochs = [] if self.every or epochs is None else list(epochs)
        if not self.every and (not epochs or any(isinstance(e, bool) or not isinstance(e, int) for e in epochs)):
            raise ConfigError("epochs", f"must be `all` or a non-empty list of epoch indices, got {epochs!r}")
        self.n_points = check_number("n_points", n_points, 2, integer=True)
        if split not in SPLITS:
            raise ConfigError("split", f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        for key, value, allowed in (("sampling", sampling, SAMPLINGS), ("timing", timing, TIMINGS)):
            if value not in allowed:
                raise ConfigError(key, f"unknown value {value!r}; allowed: {', '.join(allowed)}")
        self.draws = check_number("draws", draws, 1, integer=True)
        if sampling == "fixed" and self.draws != 1:
            raise ConfigError("draws", f"{self.draws} draws need sampling: fresh (a fixed subset is one draw)")
        self.hook_point = check_hook_point("hook_point", hook_point, layers)
        self.estimator = InformationEstimator(list(estimators), noise_var, bin_size, renyi_alpha, renyi_sigma)
        self.epochs, self.sampling, self.timing = epochs, sampling, timing
        self.split, self.seed = split, int(seed)
        self.layer_names = list(layers) if layers else None
        self.attack_cfg = attack
        self.batch_size = int(batch_size)
        self.plot = bool(plot)
        self.schedule: set[int] = set()
        self.layers: list[str] = []
        self.rows: list[dict] = []
        self.call_seconds: list[float] = []
        self.final_metrics: dict[str, float] = {}  # the last measurement's estimates, for metrics.json
        self.attack = None
        self.out_dir: Path | None = None
        self._x = self._y = None  # the fixed subset, or (fresh sampling) the whole split

    # -- set-up --------------------------------------------------------------------------------------
    @staticmethod
    def classifier(pl_module: pl.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, "model", pl_module)

    def resolve_schedule(self, max_epochs: int | None) -> set[int]:
        """The measured epochs' labels; with `epochs: all` and unbounded training, `self.every` decides."""
        if max_epochs is None or max_epochs < 0:  # unbounded training: only the non-negative entries
            return {e for e in self.epochs if e >= 0}
        horizon = max_epochs + (1 if self.timing == "start" else 0)  # start: label max_epochs = the trained network
        if self.every:
            return set(range(horizon))
        return {e if e >= 0 else horizon + e for e in self.epochs} & set(range(horizon))

    def attach(self, datamodule, model: torch.nn.Module) -> None:
        """Draw the fixed evaluation subset from `datamodule` (or keep its split, for fresh draws),
        resolve the layers of `model` and build the attack."""
        x, y = getattr(datamodule, f"x_{self.split}"), getattr(datamodule, f"y_{self.split}")
        if len(y) < self.n_points:
            log.warning("Mutual information: the %s split has only %d points (n_points=%d); the estimates saturate at log2(%d) = %.2f bits",
                        self.split, len(y), self.n_points, len(y), math.log2(len(y)))
        if self.sampling == "fixed":
            generator = torch.Generator().manual_seed(self.seed)  # own stream: the training RNG is untouched
            idx = torch.randperm(len(y), generator=generator)[: self.n_points].sort().values
            self._x, self._y = x[idx].clone(), y[idx].clone()
        else:
            self._x, self._y = x, y
        self.layers = resolve_layers(model, self.layer_names, self.hook_point)
        if isinstance(self.attack_cfg, (DictConfig, dict)):
            from hydra.utils import instantiate

            cfg = OmegaConf.create(self.attack_cfg) if isinstance(self.attack_cfg, dict) else self.attack_cfg
            self.attack = instantiate(cfg, bounds=list(datamodule.bounds) if datamodule.bounds is not None else None)
        else:
            self.attack = self.attack_cfg
        if self.attack is not None and self.attack.targeted:
            raise ConfigError("callbacks.mutual_information.attack.targeted", "the adversarial copy needs an untargeted attack; allowed: false")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._x is not None:
            return
        self.attach(trainer.datamodule, self.classifier(pl_module))
        self.schedule = self.resolve_schedule(trainer.max_epochs)
        self.out_dir = Path(trainer.default_root_dir)
        previous = self.out_dir / "mi_history.json"
        if previous.exists():  # a resumed run keeps the measurements of the epochs it already did
            self.rows = json.loads(previous.read_text()).get("rows", [])
        log.info("Mutual information on %s %s points (%s sampling), %s, layers %s, %s epochs %s", self.points_per_measurement(),
                 self.split, self.sampling, "clean + adversarial" if self.attack is not None else "clean", self.layers,
                 "before" if self.timing == "start" else "after", "all" if self.every else sorted(self.schedule))

    def due(self, epoch: int) -> bool:
        return epoch in self.schedule or (self.every and not self.schedule)

    # -- measurement -----------------------------------------------------------------------------------
    def points_per_measurement(self) -> int:
        return 0 if self._y is None else min(self.n_points, len(self._y)) * (self.draws if self.sampling == "fresh" else 1)

    def draw(self, epoch: int, kind: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(x, y, distinct points) of one input kind at one measurement: the fixed subset, or fresh draws."""
        if self.sampling == "fixed":
            return self._x, self._y, len(self._y)
        idx = draw_indices(len(self._y), self.n_points, self.draws, fresh_generator(self.seed, epoch, kind))
        return self._x[idx], self._y[idx], int(torch.unique(idx).numel())

    def measure(self, model: torch.nn.Module, epoch: int) -> list[dict]:
        """Rows {epoch, input, estimator, layer, I_XT, I_TY, n_points, n_distinct} for the clean and
        adversarial copies (the adversarial one crafted from the same draw as the clean one with fixed
        sampling, from its own draw with fresh sampling)."""
        device = next(model.parameters()).device
        rows = []
        for k, kind in enumerate(["clean"] + (["adversarial"] if self.attack is not None else [])):
            x, y, distinct = self.draw(epoch, k)
            x, y = x.to(device), y.to(device)
            if kind == "adversarial":
                x = torch.cat([self.attack(model, x[i : i + self.batch_size], y[i : i + self.batch_size])
                               for i in range(0, len(x), self.batch_size)])
            acts = layer_outputs(model, x, self.layers, self.batch_size)
            for estimator, per_layer in self.estimator.measure(x, y, acts).items():
                for layer, (i_xt, i_ty) in per_layer.items():
                    rows.append({"epoch": epoch, "input": kind, "estimator": estimator, "layer": layer, "I_XT": i_xt, "I_TY": i_ty,
                                 "n_points": len(y), "n_distinct": distinct})
        return rows

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Measure at `epoch` (its label) if it is scheduled; log, keep and write the rows."""
        if not self.due(epoch) or not trainer.is_global_zero:
            return
        started = time.perf_counter()
        rows = self.measure(self.classifier(pl_module), epoch)
        self.call_seconds.append(time.perf_counter() - started)
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + rows
        values = {f"mi/{r['input']}/{r['estimator']}/{r['layer']}/{q}": float(r[q]) for r in rows for q in ("I_XT", "I_TY")}
        if self.timing == "end":
            pl_module.log_dict(values, on_step=False, on_epoch=True, rank_zero_only=True)
        else:  # labels are epochs trained so far: two in the last epoch, which Lightning's epoch logging would merge
            for lg in trainer.loggers:
                lg.log_metrics({**values, "epoch": float(epoch)}, step=trainer.global_step)
        self.write_history()
        log.info("Mutual information %s epoch %d: %d values in %.2f s", "at" if self.timing == "end" else "before",
                 epoch, len(values), self.call_seconds[-1])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.timing == "start":
            self.record(trainer, pl_module, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.timing == "end":
            self.record(trainer, pl_module, epoch)
        elif trainer.max_epochs is not None and epoch + 1 == trainer.max_epochs:
            self.record(trainer, pl_module, epoch + 1)  # the trained network: what epoch max_epochs would start from

    # -- outputs ----------------------------------------------------------------------------------------
    def meta(self) -> dict:
        return {
            "n_points": self.points_per_measurement(), "sampling": self.sampling, "draws": self.draws,
            "points_per_draw": 0 if self._y is None else min(self.n_points, len(self._y)),
            "hook_point": self.hook_point if not self.layer_names else None, "timing": self.timing,
            "num_classes": 0 if self._y is None else int(torch.unique(self._y).numel()),
            "split": self.split, "layers": self.layers, "estimators": list(self.estimator.estimators),
            "noise_var": self.estimator.noise_var, "bin_size": self.estimator.bin_size,
            "renyi_alpha": self.estimator.renyi_alpha, "renyi_sigma": self.estimator.renyi_sigma,
            "attack": repr(self.attack) if self.attack is not None else None,
            "epochs": "all" if self.every and not self.schedule else sorted(self.schedule), "seconds_per_call": self.call_seconds,
        }

    def write_history(self) -> None:
        if self.out_dir is None:
            return
        write_json(self.out_dir / "mi_history.json", {"meta": self.meta(), "rows": self.rows})
        write_text(self.out_dir / "mi_history.csv", history_csv(self.rows))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.rows:
            return
        last = max(r["epoch"] for r in self.rows)
        summary = {f"mi/{r['input']}/{r['estimator']}/{r['layer']}/{q}": float(r[q]) for r in self.rows if r["epoch"] == last for q in ("I_XT", "I_TY")}
        if self.call_seconds:
            summary["mi/seconds_per_call"] = sum(self.call_seconds) / len(self.call_seconds)
        self.final_metrics = summary  # advlab-train merges every callback's `final_metrics` into metrics.json
        if self.plot and self.out_dir is not None:
            from advlab.report.information import information_plane

            path = information_plane({"": {"meta": self.meta(), "rows": self.rows}}, self.out_dir / "plots" / "information_plane.png",
                                     title=f"Information plane, N = {self.meta()['n_points']}")
            for lg in trainer.loggers:
                if type(lg).__name__ == "WandbLogger":
                    lg.log_image(key="plots/information_plane", images=[str(path)])
