"""Adversarial attacks in pixel space (normalisation is a layer of the model).

    attack = PGD(eps=8/255, norm="linf", steps=10)
    x_adv = attack(model, x, y)            # untargeted: y = true labels
    attack.targeted = True
    x_adv = attack(model, x, targets)      # targeted: y = target classes
    r = DeepFool(norm="l2").run(model, x, y)   # minimal perturbation: r.l2, r.linf, r.success per sample
    r = FMN(norm="l1").run(model, x, y)        # also CarliniWagnerL2: r.distance, r.success per sample
    x_adv = AutoAttack(eps=8/255)(model, x, y) # APGD-CE, APGD-T, FAB-T, Square on the points still robust
    acc = robust_accuracy(model, attack, test_loader, device)
"""
from advlab.attacks.apgd import APGD, APGDT
from advlab.attacks.autoattack import AutoAttack
from advlab.attacks.base import LOSSES, NORMS, Attack, as_logits, eval_mode, per_sample_loss, success
from advlab.attacks.cw import CarliniWagnerL2
from advlab.attacks.deepfool import DeepFool, DeepFoolResult
from advlab.attacks.accuracy import evaluate_attack, robust_accuracy, robust_accuracy_curve, robust_curve_per_sample
from advlab.attacks.difgsm import DIFGSM
from advlab.attacks.fab import FAB, FABT
from advlab.attacks.fmn import FMN
from advlab.attacks.minimal import MinimalNormAttack, MinimalResult
from advlab.attacks.pgd import FGSM, MIFGSM, PGD, OneStepL2
from advlab.attacks.square import Square
from advlab.attacks.tifgsm import TIFGSM
from advlab.attacks.vmifgsm import VMIFGSM

# By name, an attack is a config: conf/attack/<name>.yaml (`_target_` + its settings), built by Hydra's
# instantiate (`attack=pgd_linf`); there is no second registry here.

__all__ = [
    "APGD", "APGDT", "Attack", "AutoAttack", "CarliniWagnerL2", "DIFGSM", "DeepFool", "DeepFoolResult", "FAB", "FABT",
    "FGSM", "FMN", "LOSSES", "MIFGSM", "MinimalNormAttack", "MinimalResult", "NORMS", "OneStepL2", "PGD", "Square",
    "TIFGSM", "VMIFGSM", "as_logits", "eval_mode",
    "evaluate_attack", "per_sample_loss", "robust_accuracy", "robust_accuracy_curve", "robust_curve_per_sample",
    "success",
]
