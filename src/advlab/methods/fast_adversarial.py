"""Fast adversarial training (Wong et al. 2020, "Fast is better than free"), optionally with GradAlign
(Andriushchenko & Flammarion 2020).

Wong et al.'s FGSM (locuslab/fast_adversarial, CIFAR10/train_fgsm.py): δ uniform in the ε-box and
clipped to the pixel box, one step of α·sign(∇) with α = 1.25ε (10/255 at ε = 8/255), δ clipped to
[−ε, ε] and to the pixel box: advlab's PGD with steps 1, rel_step_size 1.25, random_start
(conf/attack/fgsm_rs.yaml). Their attack runs in train mode; advlab's attacks run in eval mode.

GradAlign (tml-epfl/understanding-fast-adv-training, `get_input_grad`, the `grad_align_cos_lambda`
term): λ·(1 − mean_i cos(∇x L(x_i), ∇x L(x_i + η_i))), η uniform in the ε-box, the first gradient
detached, the second differentiated through (double backpropagation); both in train mode.
Catastrophic overfitting is watched by `advlab.callbacks.OverfittingGuard` (`callbacks=overfitting_guard`).
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from advlab.attacks.base import Attack
from advlab.errors import ConfigError, check_number
from advlab.methods.adversarial import AdversarialTraining


def input_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """∇x of the mean cross-entropy at `x` (a graph of it with `create_graph`)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), x, create_graph=create_graph)
    return grad


def grad_align_penalty(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """1 − mean_i cos(∇x L(x_i), ∇x L(x_i + η_i)), η uniform in [−ε, ε] (global RNG: the run's seed)."""
    noise = torch.rand_like(x).mul_(2 * eps).sub_(eps)
    clean = input_gradient(model, x, y, create_graph=False).flatten(1)
    noisy = input_gradient(model, x + noise, y, create_graph=True).flatten(1)
    return 1.0 - F.cosine_similarity(clean, noisy, dim=1).mean()


class FastAdversarialTraining(AdversarialTraining):
    """FGSM adversarial training with a random start (the run's attack: conf/attack/fgsm_rs.yaml), plus
    `grad_align` × GradAlign's penalty when `grad_align` > 0 (0.2 at CIFAR-10 ε = 8/255 in the paper;
    an L∞ attack). train/grad_align logs the penalty."""

    adversarial = True

    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, attack=None, grad_align: float = 0.0,
                 eps_warmup_epochs: int = 0, label_smoothing: float = 0.0, channels_last: bool = False, compile: bool = False):
        super().__init__(model, optimizer, scheduler, eval_attack, attack, adv_ratio=1.0, eps_warmup_epochs=eps_warmup_epochs,
                         label_smoothing=label_smoothing, channels_last=channels_last, compile=compile)
        self.grad_align = check_number("grad_align", grad_align, 0)
        if self.grad_align and isinstance(attack, Attack) and attack.norm != "linf":
            raise ConfigError("grad_align", f"GradAlign's random points fill the L∞ box; needs attack.norm=linf, got {attack.norm!r}")

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = super().training_loss(x, y)
        if self.grad_align:
            penalty = grad_align_penalty(self.model, x, y, self.attack.eps)
            if self._trainer is not None:
                self.log("train/grad_align", penalty.detach(), on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + self.grad_align * penalty
        return loss, logits
