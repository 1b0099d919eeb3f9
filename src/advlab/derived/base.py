"""What every derived-dataset builder shares: the source model it reads, what it returns, the
test-time agreement with the source, and how a method config names a builder."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_class
from omegaconf import OmegaConf
from torchmetrics import MeanMetric


@dataclass
class SourceModel:
    """A model from the artifact cache (`Artifacts.model`): eval-mode module, its metrics, its cache key."""
    model: torch.nn.Module
    metrics: dict
    key: dict


@dataclass
class DerivedData:
    """A builder's result: the datamodule to train on, metrics for metrics.json, figures drawn by
    `figures(out_dir) -> {name: png}` (rank 0, after training) and callbacks for the trainer."""
    datamodule: Any
    metrics: dict[str, float]
    figures: Callable[[Path], dict[str, Path]] = lambda out_dir: {}
    callbacks: list = field(default_factory=list)


class SourceAgreement(pl.Callback):
    """`test/agreement`: the fraction of test inputs on which the trained model predicts what the
    source model predicts (Kumano et al.'s sign f = sign g). Reads the logits `test_step` returns."""

    def __init__(self, source: torch.nn.Module):
        self.source = source  # not a submodule of the trained one: not trained, not checkpointed
        self.agreement = MeanMetric()

    def on_test_start(self, trainer, pl_module):
        self.source.to(pl_module.device).eval()
        self.agreement = self.agreement.to(pl_module.device)
        self.agreement.reset()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        with torch.no_grad():
            self.agreement.update((self.source(batch[0]).argmax(1) == outputs.argmax(1)).float())

    def on_test_epoch_end(self, trainer, pl_module):
        pl_module.log("test/agreement", self.agreement.compute())  # synced over DDP ranks by torchmetrics


def derived_builder(method_node):
    """(training node, builder or None) of a method config node. A derived-data method's node names
    its builder (`derived: <class path>`) and holds the builder's options beside the training's own
    (`_target_`, optimizer, ...), so that `method.target_rule=rand` stays the override it always was."""
    if not method_node.get("derived"):
        return method_node, None
    plain = OmegaConf.to_container(method_node, resolve=True)
    builder_class = get_class(plain.pop("derived"))
    names = {f.name for f in dataclasses.fields(builder_class)}
    options = {key: plain.pop(key) for key in list(plain) if key in names}
    return OmegaConf.create(plain), builder_class(**options)
