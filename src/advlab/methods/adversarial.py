"""Adversarial training (Madry et al. PGD-AT and kin): train on attacked inputs."""
from __future__ import annotations

import torch

from advlab.errors import ConfigError
from advlab.methods.base import ClassifierModule


class AdversarialTraining(ClassifierModule):
    """Each training batch is replaced by the attack's output against the current model.

    `adv_ratio` < 1 attacks only that fraction of each batch (e.g. FGSM-AT with ratio 0.3, as in
    Paknezhad et al.); 1.0 is Madry's PGD-AT. The attack comes from the `attack` group.
    """

    adversarial = True

    # explicit arguments, no **kwargs: Lightning's load_from_checkpoint then passes only these
    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, attack=None, adv_ratio: float = 1.0,
                 label_smoothing: float = 0.0, channels_last: bool = False, compile: bool = False):
        super().__init__(model, optimizer, scheduler, eval_attack, label_smoothing=label_smoothing, channels_last=channels_last,
                         compile=compile)
        if attack is None:
            raise ConfigError("attack", "method=adversarial needs an attack; choose one of the attack group's options")
        if not 0.0 <= float(adv_ratio) <= 1.0:
            raise ConfigError("method.adv_ratio", f"must be in [0, 1], got {adv_ratio}")
        self.attack = attack
        self.adv_ratio = float(adv_ratio)

    def training_inputs(self, x, y):
        n_adv = int(round(self.adv_ratio * len(x)))
        if n_adv == 0:
            return x
        x_adv = self.attack(self.model, x[:n_adv], y[:n_adv])
        return x_adv if n_adv == len(x) else torch.cat([x_adv, x[n_adv:]])
