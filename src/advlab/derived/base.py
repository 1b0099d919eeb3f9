"""What every derived-dataset builder shares: the source model it reads, what it returns, the
test-time agreement with the source, and the method keys that moved to the `derived` group."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torchmetrics import MeanMetric

from advlab.errors import ConfigError, moved_keys


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


class NaturalTrainAccuracy(pl.Callback):
    """`test/natural_train_acc`: the trained model's accuracy on the clean TRAINING inputs `x` with their true
    labels `y` (the source's training set). Kumano et al. (NeurIPS'24) report this one as g's accuracy
    (s-kumano/perturbation-learning, train.py: `adv_acc_for_natural = i.test(adv_classifier, data, labels)` on
    the training data); advlab's `test/acc` is on the held-out test split."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int):
        self.x, self.y, self.batch_size = x, y, int(batch_size)

    def on_test_epoch_end(self, trainer, pl_module):
        correct = 0
        with torch.no_grad():
            for i in range(0, len(self.x), self.batch_size):
                pred = pl_module.model(self.x[i : i + self.batch_size].to(pl_module.device)).argmax(1).cpu()
                correct += int((pred == self.y[i : i + self.batch_size]).sum())
        pl_module.log("test/natural_train_acc", correct / max(len(self.x), 1))  # every rank: the same whole set


# Keys that sat in the method node before derived datasets had their own config group (`derived=`):
# they still work for one release, each with a one-line deprecation naming its new form. old → new
MOVED_TO_DERIVED = {"target_rule": "target_rule", "base": "base", "train_on": "train_on", "craft_seed": "seed",
                    "craft_batch_size": "batch_size", "measure_transfer": "measure_transfer", "transfer_eps": "transfer_eps",
                    "steps": "steps", "step_size": "step_size", "construct_seed": "seed", "construct_batch_size": "batch_size"}


def split_method(method_node, derived_node=None, where: str = "method"):
    """(the training node, the derived-dataset node or None, deprecation lines) of a run's `method` and
    `derived` nodes. The method node is one object (the training); old keys of the derived dataset in
    it (`method.target_rule=rand`, a `derived: <class path>` key) are moved to the derived node, each
    named by one line saying the new form (`derived.target_rule=rand`)."""
    if method_node is None or not OmegaConf.is_dict(method_node):
        return method_node, derived_node, []
    old = {k: method_node[k] for k in method_node if k in MOVED_TO_DERIVED or k == "derived"}
    if not old:
        return method_node, derived_node, []
    plain = OmegaConf.to_container(method_node, resolve=True)  # copies taken out of the run's config: resolved
    training = OmegaConf.create({k: v for k, v in plain.items() if k not in old})
    moved, notes = moved_keys(plain, MOVED_TO_DERIVED, where, "derived")
    derived = OmegaConf.to_container(derived_node, resolve=True) if derived_node is not None else None
    if plain.get("derived"):  # the old form of a derived method: its builder's class path in the method node
        notes.append(f"{where}.derived is deprecated: choose the dataset with derived=<option> (conf/derived/)")
        derived = {"_target_": plain["derived"], **(derived or {})}
    if moved and derived is None:
        key = next(k for k, v in plain.items() if k in MOVED_TO_DERIVED and v is not None)
        raise ConfigError(f"{where}.{key}", f"a derived dataset's option, and no dataset is chosen: choose one with derived=<option> "
                                            f"(conf/derived/), then set derived.{MOVED_TO_DERIVED[key]}")
    if derived is not None:
        derived = OmegaConf.create({**derived, **moved})
    return training, derived, notes
