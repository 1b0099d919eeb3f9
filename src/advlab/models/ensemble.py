"""An ensemble of classifiers averaged in logit space: the surrogate of ensemble transfer attacks (Liu et
al., ICLR 2017, "Delving into Transferable Adversarial Examples and Black-box Attacks"; Dong et al. 2018,
MI-FGSM's ensemble of logits). Built from an ensemble spec (conf/spec/ensemble.yaml) by
``advlab.artifacts.model_sources.spec_model``."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class LogitEnsemble(nn.Module):
    """``z(x) = (1/K)·Σ_k z_k(x)`` over the member models (each mapping pixel-space inputs to logits,
    with its own normalisation). Members must agree on the output shape (classes, or one binary score)."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member model")
        self.members = nn.ModuleList(members)
        shapes = {tuple(getattr(m, "input_shape", ())) for m in self.members} - {()}
        if len(shapes) == 1:
            self.input_shape = shapes.pop()  # as a Classifier's, for the code that reads it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for member in self.members[1:]:
            out = out + member(x)
        return out / len(self.members)
