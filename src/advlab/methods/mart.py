"""MART (Wang et al. 2020): boosted cross-entropy on x' plus λ·KL(f(x) ‖ f(x')) weighted by 1 − p_y(x).

Read from the authors' code (YisenWang/MART, `mart.py`, `mart_loss`): x' from PGD on the cross-entropy
with the model in eval mode; then, in train mode,
    BCE = CE(f(x'), y) + mean_i −log(1.0001 − p'_{i,k_i} + 1e-12),  k_i = the most likely class of x'_i other than y_i,
    robust = (1 / batch size) Σ_i KL(p_i ‖ p'_i) · (1.0000001 − p_{i,y_i}),  the KL as Σ_c p (log p − log(p' + 1e-12)),
    loss = BCE + λ·robust,
with p = softmax f(x), p' = softmax f(x'), gradients through both; the constants are theirs.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from advlab.errors import check_number
from advlab.methods.adversarial import AdversarialTraining


def mart_margin(logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The boosting term of MART's BCE: mean_i −log(1.0001 − max_{k≠y_i} p'_{i,k} + 1e-12)."""
    probs = F.softmax(logits_adv, dim=1)
    other = probs.scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1)
    return F.nll_loss(torch.log(1.0001 - probs + 1e-12), other)


def mart_weighted_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MART's robust term: (1/B) Σ_i KL(p_i ‖ p'_i) · (1 − p_{i,y_i}) (the authors' constants)."""
    p, p_adv = F.softmax(logits_clean, dim=1), F.softmax(logits_adv, dim=1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p, reduction="none").sum(dim=1)
    true_probs = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return (kl * (1.0000001 - true_probs)).sum() / logits_clean.shape[0]


class MART(AdversarialTraining):
    """MART: misclassification-aware adversarial training. x' from the run's attack (conf/attack/
    mart_pgd.yaml: the authors' CE-PGD); `lam` (λ) weighs the KL term. The cross-entropy part of the
    BCE is the method's `loss` (with `label_smoothing`). train/acc counts the adversarial logits;
    train/loss_bce and train/loss_robust log the two terms."""

    adversarial = True

    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, attack=None, lam: float = 5.0,
                 eps_warmup_epochs: int = 0, label_smoothing: float = 0.0, channels_last: bool = False, compile: bool = False):
        super().__init__(model, optimizer, scheduler, eval_attack, attack, adv_ratio=1.0, eps_warmup_epochs=eps_warmup_epochs,
                         label_smoothing=label_smoothing, channels_last=channels_last, compile=compile)
        self.lam = check_number("lam", lam, 0)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.attack(self.model, x, y)
        logits, logits_adv = self.training_forward(x), self.training_forward(x_adv)
        bce = self.loss(logits_adv, y) + mart_margin(logits_adv, y)
        robust = mart_weighted_kl(logits, logits_adv, y)
        if self._trainer is not None:
            self.log_dict({"train/loss_bce": bce.detach(), "train/loss_robust": robust.detach()},
                          on_step=False, on_epoch=True, batch_size=len(y))
        return bce + self.lam * robust, logits_adv
