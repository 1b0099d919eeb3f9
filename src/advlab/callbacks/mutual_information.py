"""Mutual information of layer representations during training (Zhang et al. 2022; RECIPES.md §6).

At the end of each configured epoch, on a fixed evaluation subset of N points and its adversarial
copy (crafted against the current model), the chosen layers' outputs are captured with forward
hooks and I(X;T), I(T;Y) are estimated per layer (KDE bounds, binning, matrix-based Rényi: see
`advlab.analysis.information`). The values are logged (CSV / W&B, keys `mi/<input>/<estimator>/
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

from advlab.analysis.activations import layer_outputs, resolve_layers
from advlab.analysis.information import ESTIMATORS, InformationEstimator
from advlab.errors import ConfigError
from advlab.utils.io import write_json, write_text

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "train")
HISTORY_FIELDS = ("epoch", "input", "estimator", "layer", "I_XT", "I_TY")


def history_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class MutualInformation(pl.Callback):
    """Estimate per-layer I(X;T) and I(T;Y) at chosen epochs.

    Args:
        epochs: epoch indices (0-based; measured after that epoch's training); negative ones count
            from the end (-1 = the last epoch).
        n_points: size N of the fixed evaluation subset (all of `split` if it is smaller). The
            estimates saturate at log₂ N: keep N fixed across compared runs.
        split: the datamodule split it is drawn from: test, val or train.
        layers: module names inside the classifier (e.g. `body.4`); null = `default_layers`.
        estimators, noise_var, bin_size, renyi_alpha, renyi_sigma: see `InformationEstimator`.
        attack: an attack config node (or Attack) for the adversarial copy, crafted against the
            current model at each measurement; null = clean inputs only.
        seed: draws the evaluation subset.
        batch_size: batch size of the forward passes and the attack.
    """

    def __init__(self, epochs: Sequence[int] = (0, 5, -1), n_points: int = 1000, split: str = "test",
                 layers: Sequence[str] | None = None, estimators: Sequence[str] = ESTIMATORS, noise_var: float = 0.1,
                 bin_size: float = 0.5, renyi_alpha: float = 1.01, renyi_sigma: float | None = None, attack: Any = None,
                 seed: int = 0, batch_size: int = 1000, plot: bool = True):
        super().__init__()
        epochs = list(epochs) if epochs is not None else []
        if not epochs or any(isinstance(e, bool) or not isinstance(e, int) for e in epochs):
            raise ConfigError("epochs", f"must be a non-empty list of epoch indices, got {epochs!r}")
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
            raise ConfigError("n_points", f"must be an integer >= 2, got {n_points!r}")
        if split not in SPLITS:
            raise ConfigError("split", f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        self.estimator = InformationEstimator(list(estimators), noise_var, bin_size, renyi_alpha, renyi_sigma)
        self.epochs = epochs
        self.n_points, self.split, self.seed = int(n_points), split, int(seed)
        self.layer_names = list(layers) if layers else None
        self.attack_cfg = attack
        self.batch_size = int(batch_size)
        self.plot = bool(plot)
        self.schedule: set[int] = set()
        self.layers: list[str] = []
        self.rows: list[dict] = []
        self.call_seconds: list[float] = []
        self.final_metrics: dict[str, float] = {}  # the last epoch's estimates, for metrics.json
        self.attack = None
        self.out_dir: Path | None = None
        self._x = self._y = None

    # -- set-up --------------------------------------------------------------------------------------
    @staticmethod
    def classifier(pl_module: pl.LightningModule) -> torch.nn.Module:
        return getattr(pl_module, "model", pl_module)

    def resolve_schedule(self, max_epochs: int | None) -> set[int]:
        if max_epochs is None or max_epochs < 0:  # unbounded training: only the non-negative entries
            return {e for e in self.epochs if e >= 0}
        return {e if e >= 0 else max_epochs + e for e in self.epochs} & set(range(max_epochs))

    def attach(self, datamodule, model: torch.nn.Module) -> None:
        """Draw the fixed evaluation subset from `datamodule`, resolve the layers of `model` and build the attack."""
        x, y = getattr(datamodule, f"x_{self.split}"), getattr(datamodule, f"y_{self.split}")
        generator = torch.Generator().manual_seed(self.seed)  # own stream: the training RNG is untouched
        idx = torch.randperm(len(y), generator=generator)[: self.n_points].sort().values
        self._x, self._y = x[idx].clone(), y[idx].clone()
        if len(idx) < self.n_points:
            log.warning("Mutual information: the %s split has only %d points (n_points=%d); the estimates saturate at log2(%d) = %.2f bits",
                        self.split, len(idx), self.n_points, len(idx), math.log2(len(idx)))
        self.layers = resolve_layers(model, self.layer_names)
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
        log.info("Mutual information on %d %s points (%s), layers %s, at epochs %s",
                 len(self._y), self.split, "clean + adversarial" if self.attack is not None else "clean", self.layers, sorted(self.schedule))

    # -- measurement -----------------------------------------------------------------------------------
    def measure(self, model: torch.nn.Module, epoch: int) -> list[dict]:
        """Rows {epoch, input, estimator, layer, I_XT, I_TY} for the clean and adversarial copies."""
        device = next(model.parameters()).device
        x, y = self._x.to(device), self._y.to(device)
        inputs = {"clean": x}
        if self.attack is not None:
            inputs["adversarial"] = torch.cat([self.attack(model, x[i : i + self.batch_size], y[i : i + self.batch_size])
                                               for i in range(0, len(x), self.batch_size)])
        rows = []
        for kind, xi in inputs.items():
            acts = layer_outputs(model, xi, self.layers, self.batch_size)
            for estimator, per_layer in self.estimator.measure(xi, y, acts).items():
                for layer, (i_xt, i_ty) in per_layer.items():
                    rows.append({"epoch": epoch, "input": kind, "estimator": estimator, "layer": layer, "I_XT": i_xt, "I_TY": i_ty})
        return rows

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch not in self.schedule or not trainer.is_global_zero:
            return
        started = time.perf_counter()
        rows = self.measure(self.classifier(pl_module), epoch)
        self.call_seconds.append(time.perf_counter() - started)
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + rows
        values = {f"mi/{r['input']}/{r['estimator']}/{r['layer']}/{q}": float(r[q]) for r in rows for q in ("I_XT", "I_TY")}
        pl_module.log_dict(values, on_step=False, on_epoch=True, rank_zero_only=True)
        self.write_history()
        log.info("Mutual information at epoch %d: %d values in %.2f s", epoch, len(values), self.call_seconds[-1])

    # -- outputs ----------------------------------------------------------------------------------------
    def meta(self) -> dict:
        n = 0 if self._y is None else len(self._y)
        return {
            "n_points": n, "num_classes": 0 if self._y is None else int(torch.unique(self._y).numel()),
            "split": self.split, "layers": self.layers, "estimators": list(self.estimator.estimators),
            "noise_var": self.estimator.noise_var, "bin_size": self.estimator.bin_size,
            "renyi_alpha": self.estimator.renyi_alpha, "renyi_sigma": self.estimator.renyi_sigma,
            "attack": repr(self.attack) if self.attack is not None else None,
            "epochs": sorted(self.schedule), "seconds_per_call": self.call_seconds,
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
