"""TI-FGSM (Dong et al., CVPR 2019, "Evading Defenses to Transferable Adversarial Examples by
Translation-Invariant Attacks"): the gradient is convolved with a smoothing kernel before the sign step,
which approximates the gradient of the loss averaged over small translations of the image. As in
torchattacks' ``TIFGSM`` it runs on DI-FGSM (input diversity, momentum), so the defaults are TI-DI²-FGSM;
``diversity_prob=0`` gives plain TI-FGSM, ``decay=1`` TI-MI-FGSM."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from advlab.attacks.base import _is_int, _is_real
from advlab.attacks.difgsm import DIFGSM
from advlab.errors import ConfigError

KERNELS = ("gaussian", "linear", "uniform")


def smoothing_kernel(name: str, size: int, nsig: float = 3.0) -> torch.Tensor:
    """The (size, size) kernel, summing to 1: ``gaussian`` (the standard normal density on
    ``size`` points evenly spread over [−nsig, nsig], outer product), ``linear`` (a tent) or ``uniform``."""
    if name == "uniform":
        return torch.full((size, size), 1.0 / (size * size), dtype=torch.float64)
    if name == "gaussian":
        t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
        one = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    else:  # linear: 1 − |t|·2/(size + 1) on the centred grid t = −(size−1)/2 … (size−1)/2
        t = torch.linspace((1 - size) / 2, (size - 1) / 2, size, dtype=torch.float64)
        one = 1 - t.abs() / (size + 1) * 2
    kernel = torch.outer(one, one)
    return kernel / kernel.sum()


class TIFGSM(DIFGSM):
    r"""TI-FGSM in the paper 'Evading Defenses to Transferable Adversarial Examples by Translation-Invariant
    Attacks' [https://arxiv.org/abs/1904.02884]

    Distance Measure : Linf (L2 steps as PGD's with ``norm="l2"``)

    The gradient ``g`` (taken through DI-FGSM's input transform) becomes ``W ∗ g``: every channel convolved
    with the same kernel ``W`` (zero padding, output the size of the input: PyTorch's ``padding="same"``),
    then the DI / MI-FGSM update. A kernel of side ``len_kernel`` ≥ the image side blurs the whole image;
    the paper's 15 is for 299-pixel ImageNet inputs: use about 5 at 32 pixels, 3 at 8.

    Arguments:
        eps (float): maximum perturbation.
        norm (str): ``linf`` or ``l2``.
        steps (int): number of iterations. (Default: 10)
        decay (float): momentum factor. (Default: 0.0)
        kernel_name (str): ``gaussian``, ``linear`` or ``uniform``. (Default: gaussian)
        len_kernel (int): the kernel's side (odd keeps it centred). (Default: 15)
        nsig (float): the Gaussian's extent, in standard deviations at the kernel's edge. (Default: 3)
        resize_rate, diversity_prob: DI-FGSM's input diversity. (Default: 0.9, 0.5)
        other arguments: as DIFGSM's.

    Shape:
        - x: :math:`(N, C, H, W)` in ``bounds``; y: :math:`(N)`; output: :math:`(N, C, H, W)`.

    Examples::
        >>> attack = TIFGSM(eps=8/255, steps=10, len_kernel=5, nsig=3, diversity_prob=0.5)
        >>> x_adv = attack(model, x, y)
    """

    name = "tifgsm"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, decay: float = 0.0, kernel_name: str = "gaussian",
                 len_kernel: int = 15, nsig: float = 3.0, resize_rate: float = 0.9, diversity_prob: float = 0.5,
                 step_size: float | None = None, rel_step_size: float | None = None, random_start: bool = False,
                 restarts: int = 1, keep_best: bool = False, targeted: bool = False, bounds=(0.0, 1.0), seed: int = 0,
                 loss: str = "ce", stop_on_success: bool = False):
        super().__init__(eps=eps, norm=norm, steps=steps, decay=decay, resize_rate=resize_rate, diversity_prob=diversity_prob,
                         step_size=step_size, rel_step_size=rel_step_size, random_start=random_start, restarts=restarts,
                         keep_best=keep_best, targeted=targeted, bounds=bounds, seed=seed, loss=loss,
                         stop_on_success=stop_on_success)
        if kernel_name not in KERNELS:
            raise ConfigError("kernel_name", f"unknown kernel {kernel_name!r}; allowed: {', '.join(KERNELS)}")
        if not _is_int(len_kernel) or int(len_kernel) < 1:
            raise ConfigError("len_kernel", f"must be an integer >= 1, got {len_kernel!r}")
        if not _is_real(nsig) or not 0 < float(nsig) < float("inf"):
            raise ConfigError("nsig", f"must be a finite number > 0, got {nsig!r}")
        self.kernel_name, self.len_kernel, self.nsig = kernel_name, int(len_kernel), float(nsig)

    def smooth(self, g: torch.Tensor) -> torch.Tensor:
        """``W ∗ g`` per channel (depthwise convolution)."""
        channels = g.shape[1]
        kernel = smoothing_kernel(self.kernel_name, self.len_kernel, self.nsig).to(g.device, g.dtype)
        weight = kernel.expand(channels, 1, *kernel.shape)
        return F.conv2d(g, weight, padding="same", groups=channels)
