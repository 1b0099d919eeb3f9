"""DI-FGSM (Xie et al., CVPR 2019, "Improving Transferability of Adversarial Examples with Input
Diversity"): iterative FGSM whose gradients are taken through a random resize-and-pad of the input, so
the perturbation does not overfit the surrogate's exact pixel grid. With momentum (``decay`` > 0) it is
M-DI²-FGSM; ``diversity_prob=0`` gives back MI-FGSM (I-FGSM with ``decay=0``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attacks.base import as_logits, per_sample_loss
from advlab.attacks.pgd import MIFGSM
from advlab.errors import ConfigError, check_number


def _probability(key: str, value) -> float:
    value = check_number(key, value, 0)
    if value > 1:
        raise ConfigError(key, f"must be a probability in [0, 1], got {value!r}")
    return value


def momentum_update(momentum: torch.Tensor, g: torch.Tensor, decay: float) -> torch.Tensor:
    """MI-FGSM's ``m ← μ·m + g/‖g‖₁``, in place (torchattacks divides by mean |g|: larger by the constant d,
    the same direction and sign)."""
    n = g.shape[0]
    l1 = torch.linalg.vector_norm(g.reshape(n, -1), ord=1, dim=1)
    scale = torch.where(l1 > 0, 1.0 / l1, torch.zeros_like(l1)).view((n,) + (1,) * (g.dim() - 1))
    return momentum.mul_(decay).addcmul_(g, scale)


class DIFGSM(MIFGSM):
    r"""DI²-FGSM in the paper 'Improving Transferability of Adversarial Examples with Input Diversity'
    [https://arxiv.org/abs/1803.06978]

    Distance Measure : Linf (L2 steps as PGD's with ``norm="l2"``)

    At every step, with probability ``diversity_prob``, the gradient is taken at ``T(x_adv)``: the batch
    resized to a random side ``s`` and zero-padded at a random offset to side ``S``, where
    ``resize_rate < 1``: ``s ∈ [⌊W·rate⌋, W)``, ``S = W`` (the input keeps its size, torchattacks'
    default); ``resize_rate > 1``: ``s ∈ [W, ⌊W·rate⌋)``, ``S = ⌊W·rate⌋`` (the paper's 299 → 330; the
    model must take the larger input). One draw per batch and step, from the attack's generator in the
    order side, top pad, left pad, coin: seeded alike, the global RNG of torchattacks' ``DIFGSM`` draws the
    same transforms. Then the MI-FGSM update: ``g ← g/mean|g|``, ``m ← μ·m + g``, ``x ← Π(x + α·sign(m))``.

    Arguments:
        eps (float): maximum perturbation.
        norm (str): ``linf`` or ``l2``.
        steps (int): number of iterations. (Default: 10)
        decay (float): momentum factor μ. (Default: 0.0, DI²-FGSM; 1.0: M-DI²-FGSM)
        resize_rate (float): the resize factor (> 0, not 1). (Default: 0.9)
        diversity_prob (float): probability of transforming the input at a step. (Default: 0.5)
        step_size / rel_step_size: α, absolute or as a fraction of ε. (Default: ε/steps, as the papers)
        random_start, restarts, keep_best, targeted, bounds, seed, loss, stop_on_success: as PGD's.

    Shape:
        - x: :math:`(N, C, H, W)` in ``bounds``; y: :math:`(N)`; output: :math:`(N, C, H, W)`.

    Examples::
        >>> attack = DIFGSM(eps=8/255, steps=10, decay=1.0, resize_rate=0.9, diversity_prob=0.5)
        >>> x_adv = attack(model, x, y)
    """

    name = "difgsm"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, decay: float = 0.0, resize_rate: float = 0.9,
                 diversity_prob: float = 0.5, step_size: float | None = None, rel_step_size: float | None = None,
                 random_start: bool = False, restarts: int = 1, keep_best: bool = False, targeted: bool = False,
                 bounds=(0.0, 1.0), seed: int = 0, loss: str = "ce", stop_on_success: bool = False):
        super().__init__(eps=eps, norm=norm, steps=steps, decay=decay, step_size=step_size, rel_step_size=rel_step_size,
                         random_start=random_start, restarts=restarts, keep_best=keep_best, targeted=targeted,
                         bounds=bounds, seed=seed, loss=loss, stop_on_success=stop_on_success)
        self.resize_rate = check_number("resize_rate", resize_rate, 0, strict=True)
        if self.resize_rate == 1:
            raise ConfigError("resize_rate", "must differ from 1 (1 would never resize); allowed: > 0, e.g. 0.9 or 1.1")
        self.diversity_prob = _probability("diversity_prob", diversity_prob)

    # ------------------------------------------------------------------------------------------
    def diverse(self, x: torch.Tensor) -> torch.Tensor:
        """The random resize-and-pad ``T(x)`` of one step (or ``x``, with probability 1 − p)."""
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} transforms images: x must be (N, C, H, W), got {tuple(x.shape)}")
        width = x.shape[-1]
        low, high = int(width * self.resize_rate), width
        if self.resize_rate > 1:
            low, high = high, low
        if high - low < 1:
            raise ValueError(f"{type(self).__name__}: resize_rate={self.resize_rate:g} gives no size to draw from at width {width}; "
                             "allowed: a rate that changes the side by at least one pixel")
        gen = self.generator("cpu")  # tiny draws: on the CPU, whatever the device, so every device draws alike
        side = int(torch.randint(low, high, (1,), generator=gen, dtype=torch.int32))
        rest = high - side
        top = int(torch.randint(0, rest, (1,), generator=gen, dtype=torch.int32))
        left = int(torch.randint(0, rest, (1,), generator=gen, dtype=torch.int32))
        coin = float(torch.rand(1, generator=gen))
        if coin >= self.diversity_prob:
            return x
        resized = F.interpolate(x, size=[side, side], mode="bilinear", align_corners=False)
        return F.pad(resized, [left, rest - left, top, rest - top], value=0.0)

    def smooth(self, g: torch.Tensor) -> torch.Tensor:
        """What happens to the raw gradient before the momentum update (TI-FGSM: the kernel)."""
        return g

    def _gradient(self, model: nn.Module, xa: torch.Tensor, y: torch.Tensor, momentum, score: bool):
        """PGD's step direction, with the loss taken at ``T(xa)`` and the gradient through ``smooth``."""
        xa.requires_grad_(True)
        logits, yy = as_logits(model(self.diverse(xa)), y)
        total = per_sample_loss(self.loss, logits, yy).sum()
        (g,) = torch.autograd.grad(-total if self.targeted else total, xa)
        xa = xa.detach()
        scored = None
        if score:  # the iterate's own score: at xa, not at its transform
            with torch.no_grad():
                scored = (xa, *self._score(model(xa), y))
        return momentum_update(momentum, self.smooth(g), self._decay), xa, scored
