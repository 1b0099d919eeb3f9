"""The minimal-norm attacks advlab-eval's minimal-perturbation analysis (`deepfool`, conf/analysis/deepfool.yaml)
can run instead of DeepFool: `deepfool.attack=cw` (Carlini–Wagner L2) or `fmn` (L∞, L2, L1), each with its
settings at `deepfool.cw` / `deepfool.fmn`."""
from __future__ import annotations

import inspect

from advlab.attacks import FMN, CarliniWagnerL2
from advlab.errors import ConfigError

MINIMAL_ATTACKS = {"cw": CarliniWagnerL2, "fmn": FMN}  # besides DeepFool (the analysis' own default)
# what the analysis sets itself: the minimal perturbation (no ε), untargeted, measured from the model's own predictions
_SET_BY_ANALYSIS = ("self", "eps", "norm", "targeted", "bounds", "seed", "loss")


def minimal_attack(name: str, norm: str, settings, bounds):
    """The attack `name` (cw / fmn) at `norm` with the analysis' node of its settings; one-line ConfigErrors
    naming `attack`, `norms` or `<name>.<key>` (the analysis' own keys: the pre-flight puts them under
    its node, `deepfool.fmn.steps`)."""
    if name not in MINIMAL_ATTACKS:
        raise ConfigError("attack", f"unknown value {name!r}; allowed: deepfool, {', '.join(MINIMAL_ATTACKS)}")
    cls = MINIMAL_ATTACKS[name]
    if norm not in cls.norms:
        raise ConfigError("norms", f"{name} does not measure {norm!r}; allowed: {', '.join(cls.norms)}")
    settings = dict(settings or {})
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in _SET_BY_ANALYSIS]
    unknown = sorted(str(k) for k in settings if k not in allowed)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    try:
        return cls(norm=norm, eps=None, bounds=bounds, **settings)
    except ConfigError as err:
        raise err.under(name, "attack") from None
