"""The LightningModules in-process: evaluation under attack, adversarial batches."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advlab.attacks import PGD, Attack
from advlab.data import DigitsDataModule
from advlab.methods import AdversarialTraining, StandardTraining
from advlab.models import MLP

OPT = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9})


def _trainer(epochs=0):
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, inference_mode=False, accelerator="cpu")


class ToPrototype(Attack):
    """A fake 'attack' that replaces each input by an input the model classifies as y."""

    def __init__(self, prototypes):
        super().__init__(eps=1.0, bounds=None)
        self.prototypes = prototypes

    def __call__(self, model, x, y):
        return self.prototypes[y]


def _trained_digits_mlp():
    """(StandardTraining of a digits MLP trained 3 epochs, its datamodule)."""
    dm = DigitsDataModule(seed=0)
    dm.setup()
    torch.manual_seed(0)
    module = StandardTraining(MLP(dm.input_shape, 10, width=64, mean=dm.mean, std=dm.std), OPT)
    _trainer(3).fit(module, dm)
    return module, dm


def test_eval_attack_metrics_follow_the_rules():
    module, dm = _trained_digits_mlp()
    module.eval_attack = PGD(eps=0.0, norm="linf")
    res = _trainer().test(module, dm, verbose=False)[0]
    assert res["test/adv_acc"] == res["test/acc"]  # ε = 0 is clean accuracy
    # an "attack" that only ever helps: a sample misclassified when clean still counts as non-robust
    with torch.no_grad():
        preds = module.model(dm.x_train).argmax(1)
    prototypes = torch.stack([dm.x_train[preds == c][0] for c in range(10)])
    module.eval_attack = ToPrototype(prototypes)
    res = _trainer().test(module, dm, verbose=False)[0]
    assert res["test/acc"] < 1.0 and res["test/adv_acc"] == res["test/acc"]


def test_adversarial_training_attacks_the_configured_fraction():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, width=32)
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 10, (10,))
    attack = PGD(eps=0.1, norm="linf", steps=3)
    half = AdversarialTraining(model, OPT, attack=attack, adv_ratio=0.3).training_inputs(x, y)
    assert torch.equal(half[3:], x[3:]) and not torch.equal(half[:3], x[:3])
    assert (half - x).abs().max() <= 0.1 + 1e-6
    assert model.training  # the attack ran in eval mode and restored train mode
    full = AdversarialTraining(model, OPT, attack=attack, adv_ratio=1.0).training_inputs(x, y)
    assert (full != x).flatten(1).any(1).all()
