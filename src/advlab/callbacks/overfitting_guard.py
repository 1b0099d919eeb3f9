"""A guard against catastrophic overfitting of single-step adversarial training (Wong et al. 2020).

After each training epoch it measures clean, FGSM and PGD accuracy on a fixed batch of held-out points
(drawn once with its own generator: the training stream is untouched), at the training attack's current
ε (it follows the ε warm-up) unless `eps` fixes one. A collapse is the signature Wong et al. and
Andriushchenko & Flammarion describe: PGD accuracy falls to near zero while FGSM accuracy stays well
above it (the model has learnt to defeat its one-step attack, not to be robust). An epoch has collapsed
when all three hold:

    pgd_acc <= pgd_acc_max                  (near zero)
    best_pgd_acc - pgd_acc >= pgd_drop      (a fall from the best earlier epoch; locuslab/fast_adversarial's
                                             early stop uses a fall of 0.2)
    fgsm_acc - pgd_acc >= fgsm_gap          (FGSM accuracy rises above, or stays above, PGD's)

Then one log line and `guard/collapsed` = 1 in the epoch's metrics, and by `action`:
record (training goes on), stop (training ends; the collapsed weights stay), rollback (the last good
epoch's weights and optimizer state are put back, then training ends: checkpoints written after it
hold them). The measurement runs at the end of the epoch's validation when there is one, before the
checkpoint callbacks (Lightning runs them last), so last.ckpt of a rolled-back epoch is the good model.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from advlab.attacks.base import eval_mode
from advlab.errors import ConfigError, check_number

log = logging.getLogger(__name__)

ACTIONS = ("stop", "rollback", "record")
SPLITS = ("val", "test", "train")


def _fraction(name: str, value) -> float:
    value = check_number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(name, f"must be in [0, 1], got {value!r}")
    return value


def collapsed(m: dict, best_pgd_acc: float | None, pgd_acc_max: float, pgd_drop: float, fgsm_gap: float) -> bool:
    """The collapse rule of the module docstring for a measurement `m` (pgd_acc, fgsm_acc); `best_pgd_acc`:
    the best PGD accuracy of the earlier epochs (None: the first measurement)."""
    if best_pgd_acc is None:
        return False
    return m["pgd_acc"] <= pgd_acc_max and best_pgd_acc - m["pgd_acc"] >= pgd_drop and m["fgsm_acc"] - m["pgd_acc"] >= fgsm_gap


class OverfittingGuard(pl.Callback):
    """Detect catastrophic overfitting each epoch and record it, stop, or roll back (see the module docstring).

    Args:
        pgd, fgsm: attack config nodes (or Attacks) of the two measurements; built with the data's bounds
            when training starts.
        eps: null: the training attack's current ε at each measurement (the module's `attack`); a number: that ε.
        n_points: size of the fixed batch, drawn from `split` (all of it if smaller) with `seed`.
        pgd_acc_max, pgd_drop, fgsm_gap: the thresholds, each in [0, 1].
        action: stop | rollback | record.
    """

    def __init__(self, pgd: Any = None, fgsm: Any = None, eps: float | None = None, n_points: int = 256, split: str = "val",
                 pgd_acc_max: float = 0.1, pgd_drop: float = 0.2, fgsm_gap: float = 0.2, action: str = "rollback", seed: int = 0):
        super().__init__()
        if action not in ACTIONS:
            raise ConfigError("action", f"unknown action {action!r}; allowed: {', '.join(ACTIONS)}")
        if split not in SPLITS:
            raise ConfigError("split", f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        for name, node in (("pgd", pgd), ("fgsm", fgsm)):
            if node is None:
                raise ConfigError(name, "needs an attack node (conf/attack/), e.g. /attack@callbacks.overfitting_guard.pgd: pgd_linf")
        self.n_points = check_number("n_points", n_points, 1, integer=True)
        self.eps = check_number("eps", eps, 0, allow_none=True)
        self.pgd_acc_max, self.pgd_drop, self.fgsm_gap = (_fraction(k, v) for k, v in
                                                          (("pgd_acc_max", pgd_acc_max), ("pgd_drop", pgd_drop), ("fgsm_gap", fgsm_gap)))
        self.action, self.split, self.seed = action, split, int(seed)
        self.attack_cfgs = {"pgd": pgd, "fgsm": fgsm}
        self.attacks: dict = {}
        self.history: list[dict] = []  # one measurement per epoch
        self.good: dict | None = None  # the last good epoch's measurement
        self.best_pgd_acc: float | None = None  # the best PGD accuracy so far
        self.collapsed_epoch: int | None = None
        self.final_metrics: dict[str, float] = {}
        self._snapshot = None  # (module state, optimizer states) of the last good epoch: what rollback restores
        self._measured_epoch = -1
        self._x = self._y = None

    # -- set-up ------------------------------------------------------------------------------------------
    def _build(self, node, bounds):
        if isinstance(node, (DictConfig, dict)):
            from hydra.utils import instantiate

            return instantiate(OmegaConf.create(node) if isinstance(node, dict) else node, bounds=bounds)
        return node

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._x is not None:
            return
        dm = trainer.datamodule
        bounds = list(dm.bounds) if getattr(dm, "bounds", None) is not None else None
        self.attacks = {name: self._build(node, bounds) for name, node in self.attack_cfgs.items()}
        x, y = getattr(dm, f"x_{self.split}"), getattr(dm, f"y_{self.split}")
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))[: self.n_points].sort().values
        self._x, self._y = x[idx].clone(), y[idx].clone()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.action == "rollback":  # the weights training starts from (a resumed run: its last good epoch's)
            self._snapshot = self._state(trainer, pl_module)

    @staticmethod
    def _state(trainer: pl.Trainer, pl_module: pl.LightningModule):
        return ({k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                [copy.deepcopy(opt.state_dict()) for opt in trainer.optimizers])

    # -- measurement and action ----------------------------------------------------------------------------
    def measure(self, model: torch.nn.Module, eps: float) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy of `model` at `eps` on the fixed batch."""
        device = next(model.parameters()).device
        x, y = self._x.to(device), self._y.to(device)
        for attack in self.attacks.values():
            attack.eps = eps
        inputs = {"clean": x, "fgsm": self.attacks["fgsm"](model, x, y), "pgd": self.attacks["pgd"](model, x, y)}
        with eval_mode(model), torch.no_grad():
            return {f"{name}_acc": float((model(xi).argmax(1) == y).float().mean()) for name, xi in inputs.items()}

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._measured_epoch == epoch or trainer.sanity_checking or self._x is None:
            return
        self._measured_epoch = epoch
        eps = self.eps
        if eps is None:  # the training attack's ε now (a method without one: the PGD node's)
            eps = getattr(pl_module, "attack", None).eps if hasattr(pl_module, "attack") else self.attacks["pgd"].eps
        m = {"epoch": epoch, "eps": eps, **self.measure(getattr(pl_module, "model", pl_module), eps)}
        m["collapsed"] = collapsed(m, self.best_pgd_acc, self.pgd_acc_max, self.pgd_drop, self.fgsm_gap)
        self.history.append(m)
        pl_module.log_dict({f"guard/{k}": float(m[k]) for k in ("clean_acc", "fgsm_acc", "pgd_acc", "collapsed")},
                           on_step=False, on_epoch=True)
        if not m["collapsed"]:
            self.good, self.best_pgd_acc = m, max(m["pgd_acc"], self.best_pgd_acc or 0.0)
            if self.action == "rollback":
                self._snapshot = self._state(trainer, pl_module)
            return
        self.collapsed_epoch = epoch if self.collapsed_epoch is None else self.collapsed_epoch
        log.warning("Catastrophic overfitting at epoch %d (ε %.4g): PGD accuracy %.3f (best %.3f), FGSM accuracy %.3f; "
                    "action: %s", epoch, m["eps"], m["pgd_acc"], self.best_pgd_acc, m["fgsm_acc"],
                    f"rollback to epoch {self.good['epoch']}, stop" if self.action == "rollback" else self.action)
        if self.action == "rollback":
            module_state, optimizer_states = self._snapshot
            pl_module.load_state_dict(module_state)
            for opt, state in zip(trainer.optimizers, optimizer_states):
                opt.load_state_dict(state)
        if self.action != "record":
            trainer.should_stop = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)  # epochs without validation

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final_metrics = {"guard/collapsed": float(self.collapsed_epoch is not None),
                              "guard/collapsed_epoch": float(-1 if self.collapsed_epoch is None else self.collapsed_epoch)}

    # -- resumed runs keep the history and the reference measurement --------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "good": self.good, "best_pgd_acc": self.best_pgd_acc, "collapsed_epoch": self.collapsed_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.good = state_dict.get("good")
        self.best_pgd_acc = state_dict.get("best_pgd_acc")
        self.collapsed_epoch = state_dict.get("collapsed_epoch")
