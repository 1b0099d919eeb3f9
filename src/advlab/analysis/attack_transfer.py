"""Attack transfer (Szegedy; Goodfellow; Ilyas et al. §3): adversarial examples crafted on a source
model, evaluated on a target model.

The crafted test set is an artifact like a trained model: keyed by the source model's key, the
attack's parameters and the data, built once (under a lock) and shared by every target of a sweep.
"""
from __future__ import annotations

import copy
import logging

import torch
from advlab.utils.progress import progress_bar

from advlab.artifacts.keys import describe_object
from advlab.errors import ConfigError
from advlab.models.base import predict

log = logging.getLogger(__name__)


def untargeted(attack):
    """An untargeted copy of `attack` (perturbation learning crafts with a targeted one)."""
    attack = copy.copy(attack)
    attack.targeted = False
    attack.reset_rng()  # draws as a freshly built attack would: what its cache key (the seed) says
    return attack


def craft_adversarial(source, attack, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, device, progress: bool = True,
                      desc: str = "Crafting adversarial test set") -> torch.Tensor:
    """Untargeted adversarial examples of (x, y) against `source`, on CPU.

    The attack runs as configured, without early stopping: what the target is tested on is the
    returned point itself, and a PGD stopped at the source's first misclassifying iterate (barely
    across the source's boundary) transfers worse than its best or last one. Opt in with
    `+attack.stop_on_success=true` (with keep_best the source's numbers stay the same; the set gets its own
    cache key)."""
    if attack.targeted:
        raise ConfigError("attack.targeted", "attack transfer needs an untargeted attack; allowed: false")
    out = torch.empty_like(x)
    # every point is attacked, also those the source misclassifies clean (not robust-only): the
    # examples are the transfer set, and a target may classify correctly what the source does not
    for i in progress_bar(range(0, len(x), batch_size), desc=desc, disable=not progress):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out[i : i + batch_size] = attack(source, xb, yb).detach().cpu()
    return out


def evaluation_split(datamodule, images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of the datamodule's test split, or of `images` of its images drawn with a fixed seed
    (a split stored class by class would give a prefix of few classes), in their stored order."""
    x, y = datamodule.x_test, datamodule.y_test
    if images is None or images >= len(y):
        return x, y
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:images].sort().values
    return x[keep], y[keep]


def adversarial_test_set(artifacts, source, source_key: dict, attack, datamodule, batch_size: int = 512,
                         images: int | None = None) -> tuple[torch.Tensor, bool]:
    """(x_adv of `evaluation_split(datamodule, images)` against `source`, whether it came from the cache)."""
    spec = {"source": source_key, "attack": describe_object(attack), "data": datamodule.describe(), "split": "test"}
    if images is not None:  # only then: the keys of sets crafted on the whole split stay what they were
        spec["images"] = int(images)

    def craft():
        x, y = evaluation_split(datamodule, images)
        x_adv = craft_adversarial(source, attack, x, y, batch_size=batch_size, device=artifacts.device,
                                  progress=artifacts.progress)
        return {"x_adv": x_adv}

    payload, cached = artifacts.constructed("adversarial", spec, craft, what="adversarial test set")
    return payload["x_adv"], cached


def transfer_metrics(y: torch.Tensor, source_clean: torch.Tensor, source_adv: torch.Tensor,
                     target_clean: torch.Tensor, target_adv: torch.Tensor) -> dict[str, float]:
    """Accuracies and fooling rates from predicted labels (all tensors of shape (n,)).

    Accuracies on adversarial examples are plain accuracies with the true labels, for source and
    target alike, so a target identical to the source reproduces the white-box number exactly.
    A fooling rate counts, among the examples a model classifies correctly when clean, those it
    misclassifies after the attack (NaN if it gets none right).
    """
    n = len(y)
    if n == 0:
        raise ValueError("no test examples")

    def acc(pred):
        return float((pred == y).float().mean())

    def fool_rate(clean, adv):
        ok = clean == y
        return float((adv[ok] != y[ok]).float().mean()) if ok.any() else float("nan")

    return {
        "source/clean_acc": acc(source_clean),
        "source/adv_acc": acc(source_adv),
        "source/fool_rate": fool_rate(source_clean, source_adv),
        "target/clean_acc": acc(target_clean),
        "transfer/target_acc": acc(target_adv),
        "transfer/fool_rate": fool_rate(target_clean, target_adv),
        "transfer/n": float(n),
    }


def evaluate_transfer(source, target, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, *, batch_size: int, device) -> tuple[dict, dict]:
    """(metrics, predictions) of the transfer of x_adv (crafted on source) to target."""
    preds = {
        "source_clean": predict(source, x, batch_size, device),
        "source_adv": predict(source, x_adv, batch_size, device),
        "target_clean": predict(target, x, batch_size, device),
        "target_adv": predict(target, x_adv, batch_size, device),
    }
    return transfer_metrics(y.cpu(), **preds), preds
