"""VMI-FGSM (Wang & He, CVPR 2021, "Enhancing the Transferability of Adversarial Attacks through Variance
Tuning"): MI-FGSM whose gradient at step t is corrected by the variance term of step t − 1, the mean
gradient over random neighbours of the previous iterate minus the gradient there, which stabilises the
update direction and transfers better."""
from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.base import as_logits, per_sample_loss
from advlab.attacks.difgsm import momentum_update
from advlab.attacks.pgd import MIFGSM, _boolean, _int_at_least_one
from advlab.errors import ConfigError, check_number


class VMIFGSM(MIFGSM):
    r"""VMI-FGSM in the paper 'Enhancing the Transferability of Adversarial Attacks through Variance Tuning'
    [https://arxiv.org/abs/2103.15571]

    Distance Measure : Linf

    Step t, at the iterate ``x_t`` with gradient ``g_t`` and variance ``v_t`` (``v_0 = 0``):
    ``m ← μ·m + (g_t + v_t)/‖g_t + v_t‖₁``; ``v_{t+1} = (1/N)·Σ_i ∇L(x_t + r_i) − g_t`` with
    ``r_i ~ U[−β·ε, β·ε]^d`` (neighbours not clipped to the box, as in the paper and torchattacks);
    ``x_{t+1} = Π(x_t + α·sign(m))``. The neighbours come from the attack's generator (torchattacks:
    the global RNG), so the two agree in distribution, and exactly where the neighbours' gradients do not
    depend on where they are drawn (e.g. ``beta=0``).

    Arguments:
        eps (float): maximum perturbation.
        steps (int): number of iterations. (Default: 10)
        decay (float): momentum factor μ. (Default: 1.0)
        neighbors (int): N, neighbours sampled per step. (Default: 20, the paper; torchattacks: 5)
        beta (float): the neighbourhood's half-width as a multiple of ε. (Default: 1.5)
        step_size / rel_step_size: α, absolute or as a fraction of ε. (Default: ε/steps, as the paper)
        random_start, restarts, keep_best, targeted, bounds, seed, loss: as PGD's. ``stop_on_success``
            must stay false: the variance term belongs to the whole batch's trajectory (an evaluation's
            early stopping leaves it off).

    Shape:
        - x: :math:`(N, ...)` in ``bounds``; y: :math:`(N)`; output: the shape of x.

    Examples::
        >>> attack = VMIFGSM(eps=8/255, steps=10, decay=1.0, neighbors=20, beta=1.5)
        >>> x_adv = attack(model, x, y)
    """

    name = "vmifgsm"
    norms = ("linf",)

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, decay: float = 1.0, neighbors: int = 20,
                 beta: float = 1.5, step_size: float | None = None, rel_step_size: float | None = None,
                 random_start: bool = False, restarts: int = 1, keep_best: bool = False, targeted: bool = False,
                 bounds=(0.0, 1.0), seed: int = 0, loss: str = "ce", stop_on_success: bool = False):
        if _boolean("stop_on_success", stop_on_success):
            raise ConfigError("stop_on_success", "VMIFGSM keeps a variance term per point of the batch; allowed: false")
        super().__init__(eps=eps, norm=norm, steps=steps, decay=decay, step_size=step_size, rel_step_size=rel_step_size,
                         random_start=random_start, restarts=restarts, keep_best=keep_best, targeted=targeted,
                         bounds=bounds, seed=seed, loss=loss)
        self.neighbors = _int_at_least_one("neighbors", neighbors)
        self.beta = check_number("beta", beta, 0)

    @property
    def stop_on_success(self) -> bool:
        return False

    @stop_on_success.setter
    def stop_on_success(self, value) -> None:
        # never on: an evaluation's early stopping (attacks.pgd.early_stopping) runs every point to the end
        _boolean("stop_on_success", value)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, view, need_score: bool):
        # the variance term lives for one run, outside the attributes (they are the cache key of crafted sets)
        self.__dict__["_variance"] = torch.zeros_like(x)
        try:
            return super()._run(model, x, y, view, need_score)
        finally:
            self.__dict__.pop("_variance", None)

    def _loss_gradient(self, model: nn.Module, xa: torch.Tensor, y: torch.Tensor):
        """(∇ of the oriented loss at ``xa``, logits, labels, per-sample loss)."""
        xa = xa.detach().requires_grad_(True)
        logits, yy = as_logits(model(xa), y)
        loss = per_sample_loss(self.loss, logits, yy)
        total = loss.sum()
        (g,) = torch.autograd.grad(-total if self.targeted else total, xa)
        return g, logits.detach(), yy, loss.detach()

    def _gradient(self, model: nn.Module, xa: torch.Tensor, y: torch.Tensor, momentum, score: bool):
        g, logits, yy, loss = self._loss_gradient(model, xa, y)
        xa = xa.detach()
        scored = (xa, *self._score(logits, yy, loss)) if score else None
        direction = momentum_update(momentum, g + self._variance, self._decay)
        gen, radius = self.generator(xa.device), self.beta * self.eps
        total = torch.zeros_like(xa)
        for _ in range(self.neighbors):
            r = torch.rand(xa.shape, generator=gen, device=xa.device, dtype=xa.dtype).mul_(2 * radius).sub_(radius)
            total += self._loss_gradient(model, xa + r, y)[0]
        self.__dict__["_variance"] = total.div_(self.neighbors).sub_(g)
        return direction, xa, scored
