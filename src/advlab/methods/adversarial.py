"""Adversarial training (Madry et al. PGD-AT and kin): train on attacked inputs."""
from __future__ import annotations

import torch

from advlab.errors import ConfigError, check_number
from advlab.methods.base import ClassifierModule


def warmup_eps(eps: float, epoch: int, warmup_epochs: int) -> float:
    """The training ε of 0-based `epoch` under a linear warm-up over `warmup_epochs`: ε·min(1, (epoch+1)/W)."""
    return eps * min(1.0, (epoch + 1) / warmup_epochs) if warmup_epochs > 0 else eps


class AdversarialTraining(ClassifierModule):
    """Each training batch is replaced by the attack's output against the current model.

    `adv_ratio` < 1 attacks only that fraction of each batch (e.g. FGSM-AT with ratio 0.3, as in
    Paknezhad et al.); 1.0 is Madry's PGD-AT. The attack comes from the `attack` group.
    `eps_warmup_epochs` = W > 0: epoch e (0-based) trains at ε·min(1, (e+1)/W) (`warmup_eps`), for every
    adversarial method built on this class.
    """

    adversarial = True

    # explicit arguments, no **kwargs: Lightning's load_from_checkpoint then passes only these
    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, attack=None, adv_ratio: float = 1.0,
                 eps_warmup_epochs: int = 0, label_smoothing: float = 0.0, channels_last: bool = False, compile: bool = False):
        super().__init__(model, optimizer, scheduler, eval_attack, label_smoothing=label_smoothing, channels_last=channels_last,
                         compile=compile)
        if attack is None:
            raise ConfigError("attack", "method=adversarial needs an attack; choose one of the attack group's options")
        if not 0.0 <= float(adv_ratio) <= 1.0:
            raise ConfigError("adv_ratio", f"must be in [0, 1], got {adv_ratio}")
        self.attack = attack
        self.adv_ratio = float(adv_ratio)
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
