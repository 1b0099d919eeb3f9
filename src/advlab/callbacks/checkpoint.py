"""What makes a run resumable: atomic checkpoint writes, the random streams in every checkpoint,
the choice of the checkpoint to resume from (a corrupt one is set aside, never crashes a run), and a
stop at the end of a batch on SIGTERM / SIGINT.

`checkpoints/last.ckpt` is the last completed epoch (every epoch); `checkpoints/best.ckpt` the best
by `val/acc`. `test/acc` is computed with the last epoch's weights: the ones in `last.ckpt`. A model
the artifact cache trains keeps its own `last.ckpt` (and its per-epoch history) in the cache's
partial directory (`epoch_checkpoints`).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from advlab.callbacks.history import EpochHistory
from advlab.utils import signals
from advlab.utils.io import atomic_path
from advlab.utils.safe_io import UnsafeFileError, load_torch

log = logging.getLogger(__name__)

LAST, BEST = "last.ckpt", "best.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint is written to a temp file and renamed: a kill (or a full disk) during the
    write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class RandomState(Callback):
    """The global random streams (torch, numpy, python) in every checkpoint, as tensors and plain
    values (so `weights_only=True` loading reads them): a resumed run draws what the uninterrupted
    one would have drawn."""

    def state_dict(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return {"torch": torch.get_rng_state(),
                "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)},
                "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


class StopOnSignal(Callback):
    """SIGTERM or SIGINT received (`utils.signals`): the fit / test stops at the end of the current
    batch through Lightning's own SIGTERM path (its loops raise there, without running the epoch's end:
    no checkpoint of a partial epoch). Lightning sets that flag itself for SIGTERM, not for SIGINT,
    and resets it when a fit starts: a signal that came just before is acted on here."""

    @staticmethod
    def _check(trainer) -> None:
        if signals.received() is not None:
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        self._check(trainer)

    def on_validation_batch_end(self, trainer, *args, **kwargs) -> None:
        self._check(trainer)

    def on_test_batch_end(self, trainer, *args, **kwargs) -> None:
        self._check(trainer)

    def on_train_epoch_start(self, trainer, *args, **kwargs) -> None:
        self._check(trainer)


class ResumableHistory(EpochHistory):
    """`EpochHistory` whose rows travel in the checkpoints: a resumed training's history has every epoch."""

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state.get("rows", [])]


def epoch_checkpoints(dirpath: Path) -> list[Callback]:
    """`<dirpath>/last.ckpt` at every epoch's end (after the epoch's history row and validation) with
    the random streams in it: what a killed training resumes from (pass `AtomicCheckpointIO()` too)."""
    return [RandomState(), ModelCheckpoint(dirpath=str(dirpath), filename=LAST.removesuffix(".ckpt"), monitor=None, save_top_k=1,
                                           every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)]


def torch_load_plain(path: Path) -> dict:
    """A checkpoint's contents, tensors and plain values only (never code: `weights_only=True`)."""
    return load_torch(path)


def readable_checkpoint(path: Path) -> str | None:
    """None when `path` loads as a checkpoint (tensors and plain values only), else why not."""
    try:
        ckpt = torch_load_plain(path)
    except UnsafeFileError as err:  # truncated, garbage or unsafe: all mean "do not resume from it"
        return err.reason
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "epoch" not in ckpt:
        return "not a Lightning checkpoint"
    return None


def set_aside(path: Path, why: str) -> Path:
    from advlab.artifacts.cache import move_aside

    aside = move_aside(path)
    log.warning("%s is unreadable (%s): set aside as %s", path, why, aside.name)
    return aside


def resume_checkpoint(checkpoint_dir: Path, set_aside_bad: bool = True) -> Path | None:
    """The checkpoint to resume from: `last.ckpt`, else (when it is corrupt, set aside) `best.ckpt`,
    else None (start fresh). DDP ranks > 0 pass `set_aside_bad=False`: rank 0 moves the files, they
    skip the same bad ones, so every rank resumes from the same checkpoint."""
    for name in (LAST, BEST):
        path = Path(checkpoint_dir) / name
        if not path.is_file():
            continue
        why = readable_checkpoint(path)
        if why is None:
            return path
        if set_aside_bad:
            set_aside(path, why)
    return None


def completed_epochs(path: Path) -> int:
    """How many epochs the checkpoint at `path` has completed (advlab's are written at epoch ends)."""
    return int(torch_load_plain(path)["epoch"]) + 1


class BestWeights(Callback):
    """Keeps a copy of the weights at the epoch with the best `monitor` (max) and puts them back in the
    model when the fit ends, so the test and what is saved after it use them: a cache-trained model
    "as of its best validation epoch" (Kumano et al. craft from their best-validation source
    checkpoint). The copy travels in the checkpoints, so a resumed training keeps it."""

    def __init__(self, monitor: str = "val/acc"):
        self.monitor, self.score, self.epoch, self.weights = monitor, None, None, None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return
        if self.score is None or float(value) > self.score:  # the first of equal scores: the earliest epoch
            self.score, self.epoch = float(value), int(trainer.current_epoch)
            self.weights = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.weights is None:
            raise RuntimeError(f"keep the best weights: no {self.monitor!r} was logged (is there a validation split?)")
        pl_module.load_state_dict(self.weights)
        log.info("Best %s %.4f at epoch %d: its weights are kept", self.monitor, self.score, self.epoch + 1)

    def state_dict(self) -> dict[str, Any]:
        return {"score": self.score, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.epoch, self.weights = state.get("score"), state.get("epoch"), state.get("weights")
