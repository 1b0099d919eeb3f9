"""Crafting that survives a signal, a kill -9 or a lost node: the batches crafted so far are saved in
the cache build's partial directory (`advlab.artifacts.cache.partial_dir`, under the artifact's lock) and a
re-run of the same build starts at the first batch not saved, with the state saved with it (running
sums, the attack's random streams), so it ends with exactly what an uninterrupted build makes.

A chunk (``craft-<start>-<end>.pt``, written atomically) holds the rows [start, end) of every output
tensor. One is written every `SAVE_EVERY_S` seconds of crafting and when a signal arrives (the loop
then stops after its current batch: `advlab.utils.signals`), so a kill -9 redoes at most
`SAVE_EVERY_S` seconds and the batch under way. Outside a cache build nothing is saved.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from advlab.artifacts.cache import partial_dir
from advlab.utils import signals
from advlab.utils.io import torch_save
from advlab.utils.safe_io import UnsafeFileError, load_torch

log = logging.getLogger(__name__)

SAVE_EVERY_S = 30.0
PREFIX = "craft-"


class CraftProgress:
    """The saved progress of one crafting loop over `n` inputs in batches of `batch_size`, whose results
    go to the tensors of `into` (rows = inputs)."""

    def __init__(self, into: dict[str, torch.Tensor], n: int, batch_size: int, what: str):
        self.dir: Path | None = partial_dir()
        self.into, self.n, self.batch_size, self.what = into, int(n), int(batch_size), what
        self.saved_until = 0
        self.done_until, self.state = 0, None
        self.last_save = time.monotonic()

    def _chunks(self) -> list[Path]:
        return sorted(self.dir.glob(f"{PREFIX}*.pt")) if self.dir is not None and self.dir.is_dir() else []

    def resume(self) -> tuple[int, dict | None]:
        """Copy the saved rows into `into`; return (the first input not crafted, the state saved with
        the last chunk, or None when starting fresh). A chunk of another crafting (size, batch size)
        or an unreadable one ends the resume there: it and the chunks after it are removed."""
        for path in self._chunks():
            try:
                chunk = load_torch(path)
                fits = (chunk["n"], chunk["batch_size"], chunk["start"]) == (self.n, self.batch_size, self.saved_until)
            except (UnsafeFileError, KeyError, TypeError) as err:
                fits, chunk = False, str(err)
            if not fits:
                log.warning("%s: %s does not continue the saved crafting; crafting again from input %d", self.what, path.name, self.saved_until)
                for stale in self._chunks()[self._chunks().index(path):]:
                    stale.unlink(missing_ok=True)
                break
            for key, rows in chunk["tensors"].items():
                self.into[key][chunk["start"] : chunk["end"]] = rows
            self.saved_until, self.state = chunk["end"], chunk["state"]
        self.done_until = self.saved_until
        if self.saved_until:
            log.info("%s: resuming at input %d of %d (%d batches saved in %s)", self.what, self.saved_until, self.n,
                     -(-self.saved_until // self.batch_size), self.dir)
        return self.saved_until, self.state

    def done(self, end: int, state: dict) -> None:
        """Inputs up to `end` are crafted, `state` is what continues from there; saved every
        `SAVE_EVERY_S` seconds and at once when a signal has arrived."""
        self.done_until, self.state = int(end), state
        if self.dir is not None and (signals.received() is not None or time.monotonic() - self.last_save >= SAVE_EVERY_S):
            self.save()

    def save(self) -> None:
        start, end = self.saved_until, self.done_until
        if self.dir is None or end <= start:
            return
        # clones: a view would save the whole storage of its tensor
        chunk = {"n": self.n, "batch_size": self.batch_size, "start": start, "end": end, "state": self.state,
                 "tensors": {key: t[start:end].clone() for key, t in self.into.items()}}
        torch_save(chunk, self.dir / f"{PREFIX}{start:010d}-{end:010d}.pt")
        self.saved_until, self.last_save = end, time.monotonic()
