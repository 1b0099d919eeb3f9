"""Base class of every architecture: pixel-space input, normalisation as the first layer."""
from __future__ import annotations

import math

import torch
from torch import nn

from advlab.errors import ConfigError

NORMALIZE_MODES = ("standardize", "center", "none")


class Classifier(nn.Module):
    """Maps pixel-space inputs (in [0,1] for images) to class logits.

    Normalisation is part of the model (a fixed layer with buffers), so attacks, ε and stored
    perturbations all live in pixel space and a checkpoint carries its own statistics.
    """

    def __init__(self, input_shape, num_classes: int, normalize: str = "standardize", mean=None, std=None):
        super().__init__()
        if normalize not in NORMALIZE_MODES:
            raise ConfigError("normalize", f"unknown mode {normalize!r}; allowed: {', '.join(NORMALIZE_MODES)}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        self.normalize = normalize
        # Per-channel statistics for images, per-feature (or one scalar) for vectors.
        view = (1, -1, 1, 1) if len(self.input_shape) == 3 else (1, -1)
        mean = torch.zeros(1) if mean is None or normalize == "none" else torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.ones(1) if std is None or normalize != "standardize" else torch.as_tensor(std, dtype=torch.float32).flatten()
        self.register_buffer("mean", mean.reshape(view).clone())
        self.register_buffer("std", std.clamp_min(1e-6).reshape(view).clone())

    @property
    def in_features(self) -> int:
        return math.prod(self.input_shape)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Logits of normalised inputs: ``readout(penultimate(x))``."""
        raise NotImplementedError

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Penultimate-layer activations (N, D) of normalised inputs: the input of the final linear readout."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer representation g(x) of pixel-space inputs (Ilyas et al.'s robust /
        non-robust dataset construction inverts it)."""
        return self.penultimate((x - self.mean) / self.std)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, device=None) -> torch.Tensor:
    """Predicted labels (on the CPU) of inputs `x`, in batches on `device` (default: the model's),
    in eval mode (the mode is restored)."""
    from advlab.attacks.base import eval_mode  # attacks import models' neighbours: import late

    device = device if device is not None else next(model.parameters()).device
    with eval_mode(model):
        out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
