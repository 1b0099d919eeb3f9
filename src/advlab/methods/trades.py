"""TRADES (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x')), with x' from PGD on the KL term.

Read from the authors' code (yaodongyu/TRADES, `trades.py`, `trades_loss`): the attack runs with the
model in eval mode and maximises `KLDivLoss(size_average=False)(log_softmax(f(x')), softmax(f(x)))`,
the clean distribution taken in eval mode; the training loss, in train mode, divides that summed KL
by the batch size (`(1.0 / batch_size) * criterion_kl(...)`), and gradients flow through both f(x)
and f(x'). Here the attack is advlab's (its ε, steps, step size and start from the `attack` node) run
on the attack loss "kl" with the clean distribution as its soft targets (advlab.attacks.base).
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F

from advlab.attacks.base import eval_mode
from advlab.errors import check_number
from advlab.methods.adversarial import AdversarialTraining


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """The authors' robust term: Σ_i KL(softmax f(x_i) ‖ softmax f(x'_i)) / batch size (KLDivLoss with
    `size_average=False`, divided by the batch size)."""
    p = F.softmax(logits_clean, dim=1)
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p, reduction="sum") / logits_clean.shape[0]


@contextlib.contextmanager
def attack_loss(attack, loss: str):
    """Within the block `attack` runs on `loss` (its other settings as configured)."""
    previous = attack.loss
    attack.loss = loss
    try:
        yield attack
    finally:
        attack.loss = previous


class TRADES(AdversarialTraining):
    """TRADES: the natural cross-entropy plus `beta` times the KL divergence between the model's
    clean and adversarial distributions. x' comes from the run's attack (conf/attack/trades_pgd.yaml:
    the authors' PGD) on the KL term, whatever its own `loss` says: that is TRADES' inner problem.
    train/acc counts the adversarial logits (as PGD-AT's); train/loss_natural and train/loss_robust
    log the two terms."""

    adversarial = True

    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, attack=None, beta: float = 6.0,
                 eps_warmup_epochs: int = 0, label_smoothing: float = 0.0, channels_last: bool = False, compile: bool = False):
        super().__init__(model, optimizer, scheduler, eval_attack, attack, adv_ratio=1.0, eps_warmup_epochs=eps_warmup_epochs,
                         label_smoothing=label_smoothing, channels_last=channels_last, compile=compile)
        self.beta = check_number("beta", beta, 0)

    def adversarial_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """x': the attack on KL(f(x) ‖ f(·)), the clean distribution taken in eval mode (as the authors')."""
        with eval_mode(self.model), torch.no_grad():
            p_clean = F.softmax(self.model(x), dim=1)
        with attack_loss(self.attack, "kl"):
            return self.attack(self.model, x, p_clean)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.adversarial_inputs(x)
        logits, logits_adv = self.training_forward(x), self.training_forward(x_adv)
        natural, robust = self.loss(logits, y), trades_kl(logits, logits_adv)
        if self._trainer is not None:
            self.log_dict({"train/loss_natural": natural.detach(), "train/loss_robust": robust.detach()},
                          on_step=False, on_epoch=True, batch_size=len(y))
        return natural + self.beta * robust, logits_adv
