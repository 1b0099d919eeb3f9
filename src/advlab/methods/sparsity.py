"""Data-sparsity training (Paknezhad et al. 2022, "Explaining adversarial vulnerability with a data
sparsity hypothesis"; RECIPES.md §5).

Most of input space lies off the data support, and a network is free to put its decision boundary
anywhere there, e.g. right next to the data: that is where adversarial examples live. This method
fills the space around the data with unlabelled points and asks the softmax to be flat there, which
pushes the boundary away from the labelled points:

* unlabelled anchors ``x_u = x + N(0, σ_u² I)``, ``n_unlabeled`` copies per labelled point;
* neighbours ``x' = a + N(0, σ_n² I)``, ``n_neighbors`` per anchor a (labelled or unlabelled);
* loss = cross-entropy on the labelled points (unlabelled ones are masked out) +
  ``lam`` · mean over (anchor, neighbour) pairs and classes of ``((softmax(a) − softmax(x')) / ‖a − x'‖₂)²``.

The reference implementation handles one anchor per step (batch size 1); here a whole batch of
labelled points, their unlabelled copies and every neighbour go through one forward pass.

``adv_ratio > 0`` adds FGSM adversarial training as in the paper: the FGSM images of the labelled
points (L∞, ``adv_eps``) and their own neighbours join the batch; the cross-entropy is
``(CE(clean) + adv_ratio · CE(adversarial)) / (1 + adv_ratio)`` (a weight, not a batch fraction) and
the slope penalty is added for the adversarial anchors too. Noise points are not clipped to the
pixel box: they are meant to lie off the data support.

Two options follow the reference implementation (MahsaPaknezhad/AdversariallyRobustTraining; main.py,
LossFunction.py, NoiseGenerator.py, DatasetMNIST.py) more closely:

* ``units: normalized``: ``sigma_u``, ``sigma_n``, ``adv_eps`` and ``lam`` are given in the units of the
  reference's ``Normalize(mean, norm_std)`` inputs (MNIST: std 0.3081) and converted once, here, to
  pixel units: a distance d in normalised units is ``d · norm_std`` pixels, so σ_u, σ_n and the FGSM ε
  are multiplied by ``norm_std``; the penalty divides by the squared neighbour distance
  ‖a − x'‖², which is ``norm_std²`` times larger in pixels, so ``lam_pixel = lam · norm_std²`` gives the
  same loss (MNIST: λ = 1e5 → 9.49e3). The mean plays no part (only differences of inputs enter).
* ``penalty_weighting: per_anchor``: the reference trains with batch size 1 over the shuffled labelled
  and unlabelled anchors; a step's loss is CE(a) (0 for an unlabelled anchor; CELoss) + λ · the slope
  penalty of a (GRLoss: mse over its neighbours and classes), plus λ · the penalty of FGSM(a) for a
  labelled anchor with adversarial training. Its expectation over the N·(1 + u) anchors of an epoch
  (N labelled, u = ``n_unlabeled``) is the mean over the batch's anchors of that per-anchor loss::

      loss = (CE_labelled + λ · penalty_adversarial) / (1 + u) + λ · penalty_anchors

  with CE_labelled the mean over the labelled points, penalty_anchors the mean over all labelled and
  unlabelled anchors (and their neighbours) and penalty_adversarial the mean over the FGSM anchors.
  ``batch_mean`` (the default) is ``CE_labelled + λ · (penalty_anchors + penalty_adversarial)``: at the
  same λ it gives the penalty (1 + u)× less weight relative to the cross-entropy.

Too large a λ has a degenerate minimum: a saturated softmax (huge logits) is flat almost everywhere,
so the penalty vanishes while the decision boundary stays where it was. Cross-entropy attacks then
see zero gradients and report robustness that margin-loss attacks and DeepFool do not confirm;
advlab-eval attacks with both losses for that reason.
"""
from __future__ import annotations

import torch

from advlab.attacks import FGSM
from advlab.errors import ConfigError, check_number
from advlab.methods.base import ClassifierModule


def softmax_slope_penalty(p_anchor: torch.Tensor, p_neighbor: torch.Tensor, x_anchor: torch.Tensor,
                          x_neighbor: torch.Tensor) -> torch.Tensor:
    """Mean over pairs and classes of ``((p(a) − p(x')) / ‖a − x'‖₂)²``.

    ``p_anchor`` (A, C) and ``x_anchor`` (A, ...); ``p_neighbor`` (A·k, C) and ``x_neighbor`` (A·k, ...)
    hold the k neighbours of anchor i in rows i·k … i·k + k − 1 (``repeat_interleave`` order).
    """
    a, c = p_anchor.shape
    if a == 0 or p_neighbor.shape[0] == 0:
        return p_anchor.sum() * 0.0
    k = p_neighbor.shape[0] // a
    if k * a != p_neighbor.shape[0] or x_neighbor.shape[0] != p_neighbor.shape[0]:
        raise ValueError(f"expected k neighbours per anchor: {a} anchors, {p_neighbor.shape[0]} neighbour outputs, "
                         f"{x_neighbor.shape[0]} neighbour inputs")
    dist = torch.linalg.vector_norm((x_neighbor.reshape(a, k, -1) - x_anchor.reshape(a, 1, -1)), dim=2)  # (A, k)
    slope = (p_neighbor.reshape(a, k, c) - p_anchor.reshape(a, 1, c)) / dist.unsqueeze(2)
    return slope.pow(2).mean()


class SparsityTraining(ClassifierModule):
    """Cross-entropy on labelled points + ``lam`` × the softmax-slope penalty on labelled and
    Gaussian unlabelled anchors and their neighbours; optionally FGSM adversarial training."""

    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, sigma_u: float = 0.2, n_unlabeled: int = 4,
                 sigma_n: float = 0.02, n_neighbors: int = 1, lam: float = 100.0, adv_ratio: float = 0.0,
                 adv_eps: float = 0.1, label_smoothing: float = 0.0, channels_last: bool = False, attack=None,
                 compile: bool = False, penalty_weighting: str = "batch_mean", units: str = "pixel", norm_std: float = 0.3081):
        # explicit arguments, no **kwargs: Lightning's load_from_checkpoint then passes only these
        super().__init__(model, optimizer, scheduler, eval_attack, label_smoothing=label_smoothing, channels_last=channels_last,
                         compile=compile)
        self.sigma_u = check_number("sigma_u", sigma_u, 0)
        self.n_unlabeled = check_number("n_unlabeled", n_unlabeled, 0, integer=True)
        self.sigma_n = check_number("sigma_n", sigma_n, 0, strict=True)
        self.n_neighbors = check_number("n_neighbors", n_neighbors, 1, integer=True)
        self.lam = check_number("lam", lam, 0)
        self.adv_ratio = check_number("adv_ratio", adv_ratio, 0)
        self.adv_eps = check_number("adv_eps", adv_eps, 0)
        if penalty_weighting not in ("batch_mean", "per_anchor"):
            raise ConfigError("penalty_weighting", f"unknown value {penalty_weighting!r}; allowed: batch_mean, per_anchor")
        self.penalty_weighting = penalty_weighting
        if units not in ("pixel", "normalized"):
            raise ConfigError("units", f"unknown value {units!r}; allowed: pixel, normalized")
        std = check_number("norm_std", norm_std, 0, strict=True)
        if units == "normalized":  # to pixel units, once (see the module docstring)
            self.sigma_u, self.sigma_n, self.adv_eps = self.sigma_u * std, self.sigma_n * std, self.adv_eps * std
            self.lam = self.lam * std ** 2
        # the FGSM adversarial-training option composes the FGSM attack; bounds follow the data (setup)
        self.adv_attack = FGSM(eps=self.adv_eps, norm="linf") if self.adv_ratio > 0 else None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.adv_attack is not None and datamodule is not None:
            self.adv_attack.bounds = datamodule.bounds

    def _neighbors(self, anchors: torch.Tensor) -> torch.Tensor:
        near = anchors.repeat_interleave(self.n_neighbors, dim=0)
        return near + self.sigma_n * torch.randn_like(near)

    def training_step(self, batch, batch_idx):
        x, y = batch
        unlabeled = x.repeat_interleave(self.n_unlabeled, dim=0)
        unlabeled = unlabeled + self.sigma_u * torch.randn_like(unlabeled)
        groups = [torch.cat([x, unlabeled])]  # anchors: the labelled points first
        if self.adv_attack is not None:
            groups.append(self.adv_attack(self.model, x, y))
        inputs = []
        for anchors in groups:
            inputs += [anchors, self._neighbors(anchors)]
        # one forward pass for every anchor and neighbour of the batch
        logits = self.training_forward(torch.cat(inputs))
        parts = logits.split([len(t) for t in inputs])
        probs = [p.softmax(dim=1) for p in parts]
        slopes = [softmax_slope_penalty(probs[i], probs[i + 1], inputs[i], inputs[i + 1]) for i in range(0, len(inputs), 2)]
        penalty = sum(slopes)
        clean_logits = parts[0][: len(y)]
        ce = self.loss(clean_logits, y)
        if self.adv_attack is not None:
            ce = (ce + self.adv_ratio * self.loss(parts[2], y)) / (1.0 + self.adv_ratio)
        if self.penalty_weighting == "per_anchor":  # the mean over anchors of the reference's per-anchor loss
            loss = (ce + self.lam * sum(slopes[1:])) / (1 + self.n_unlabeled) + self.lam * slopes[0]
        else:
            loss = ce + self.lam * penalty
        self.train_acc(clean_logits, y)
        n = len(y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/ce", ce, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/penalty", penalty, on_step=False, on_epoch=True, batch_size=n)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss
