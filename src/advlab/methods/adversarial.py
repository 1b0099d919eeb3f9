"""Adversarial training (Madry et al. PGD-AT and kin): train on attacked inputs."""
from __future__ import annotations

import torch

from advlab.errors import ConfigError, check_number
from advlab.methods.base import ClassifierModule


def warmup_eps(eps: float, epoch: int, warmup_epochs: int) -> float:
    """The training ε of 0-based `epoch` under a linear warm-up over `warmup_epochs`: ε·min(1, (epoch+1)/W)."""
    return eps * min(1.0, (epoch + 1) / warmup_epochs) if warmup_epochs > 0 else eps


def loss_weights(clean_weight, adv_weight, adv_ratio: float) -> tuple[float, float] | None:
    """(clean, adversarial) weights of the loss-weighted objective; None when both are null (the batch
    fraction `adv_ratio` then says which points are attacked). The two ways are exclusive."""
    if clean_weight is None and adv_weight is None:
        return None
    if adv_ratio != 1.0:
        raise ConfigError("adv_ratio", f"clean_weight/adv_weight weight the clean and adversarial loss of every point; adv_ratio "
                                              f"replaces a fraction of the batch instead: use one of the two (leave adv_ratio at 1.0 "
                                              f"with the weights, or the weights null with adv_ratio), got adv_ratio={adv_ratio}")
    missing = "clean_weight" if clean_weight is None else "adv_weight" if adv_weight is None else None
    if missing:
        raise ConfigError(missing, f"the loss weights come as a pair: set both or neither, got clean_weight={clean_weight}, "
                                   f"adv_weight={adv_weight}")
    weights = check_number("clean_weight", clean_weight, 0), check_number("adv_weight", adv_weight, 0)
    if sum(weights) == 0:
        raise ConfigError("adv_weight", "clean_weight + adv_weight must be > 0, got 0 and 0")
    return weights


class AdversarialTraining(ClassifierModule):
    """Training on the attack's output against the current model, in one of two exclusive ways:

    * batch fraction (the default, `clean_weight`/`adv_weight` null): the first `adv_ratio` of each batch
      is replaced by its adversarial examples and the loss is CE on the mixed batch; 1.0 is Madry's PGD-AT.
    * loss weights (`clean_weight` = c, `adv_weight` = a, `adv_ratio` left at 1.0): every point is
      attacked and the loss is (c·CE(x) + a·CE(x_adv)) / (c + a): Goodfellow et al.'s 0.5/0.5 objective,
      Paknezhad et al.'s FGSM-AT baseline (CE(x) + 0.3·CE(x_adv)) / 1.3 (clean 1, adversarial 0.3).
      train/acc counts the adversarial logits (as PGD-AT's).

    adv_ratio 0.3 is not Paknezhad's baseline: it trains 30 % of each batch on adversarial examples only
    and never on those points' clean inputs. The attack comes from the `attack` group.
    `eps_warmup_epochs` = W > 0: epoch e (0-based) trains at ε·min(1, (e+1)/W) (`warmup_eps`), for every
    adversarial method built on this class.
    """

    adversarial = True

    # explicit arguments, no **kwargs: Lightning's load_from_checkpoint then passes only these
    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, attack=None, adv_ratio: float = 1.0,
                 eps_warmup_epochs: int = 0, label_smoothing: float = 0.0, channels_last: bool = False, compile: bool = False,
                 clean_weight: float | None = None, adv_weight: float | None = None):
        super().__init__(model, optimizer, scheduler, eval_attack, label_smoothing=label_smoothing, channels_last=channels_last,
                         compile=compile)
        if attack is None:
            raise ConfigError("attack", "method=adversarial needs an attack; choose one of the attack group's options")
        if not 0.0 <= float(adv_ratio) <= 1.0:
            raise ConfigError("adv_ratio", f"must be in [0, 1], got {adv_ratio}")
        self.attack = attack
        self.adv_ratio = float(adv_ratio)
        self.loss_weights = loss_weights(clean_weight, adv_weight, self.adv_ratio)
        self.eps_warmup_epochs = check_number("eps_warmup_epochs", eps_warmup_epochs, 0, integer=True)
        self.full_eps = None  # the attack's configured ε, read when a fit starts (the warm-up lowers it)

    def on_train_epoch_start(self) -> None:
        if self.eps_warmup_epochs:
            if self.full_eps is None:
                self.full_eps = self.attack.eps
            self.attack.eps = warmup_eps(self.full_eps, self.current_epoch, self.eps_warmup_epochs)

    def on_fit_end(self) -> None:
        if self.full_eps is not None:  # the attack leaves the fit as configured
            self.attack.eps, self.full_eps = self.full_eps, None

    def training_inputs(self, x, y):
        n_adv = int(round(self.adv_ratio * len(x)))
        if n_adv == 0:
            return x
        x_adv = self.attack(self.model, x[:n_adv], y[:n_adv])
        return x_adv if n_adv == len(x) else torch.cat([x_adv, x[n_adv:]])

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss_weights is None:
            return super().training_loss(x, y)
        clean_w, adv_w = self.loss_weights
        # a zero weight's term is not computed (no attack, no forward pass: BatchNorm statistics as without it)
        clean = self.training_forward(x) if clean_w else None
        adv = self.training_forward(self.attack(self.model, x, y)) if adv_w else None
        loss = sum(w * self.loss(logits, y) for w, logits in ((clean_w, clean), (adv_w, adv)) if logits is not None)
        return loss / (clean_w + adv_w), adv if adv is not None else clean
