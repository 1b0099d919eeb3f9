"""Attack base class and the shared machinery every attack relies on.

Conventions (see RECIPES.md, "Attack correctness"):

* Everything lives in pixel space; normalisation is a layer of the model. ``bounds`` is the valid
  pixel box (``(0, 1)`` for images) or ``None`` for unbounded data (synthetic, mean-subtracted).
* ``attack(model, x, y) -> x_adv``: same shape, dtype and device as ``x``, detached.
  Untargeted: ``y`` are the true labels and the loss is maximised. Targeted: ``y`` are the TARGET
  classes and the loss is minimised.
* The model runs in eval mode; every module's previous ``training`` flag is restored afterwards,
  also when the forward raises. Only input gradients are taken (``torch.autograd.grad``), so
  parameter ``.grad`` is never touched. Works inside ``torch.no_grad()`` and
  ``torch.inference_mode()`` (Lightning's validation/test loops).
* Randomness comes from the attack's own ``torch.Generator`` (one per device, seeded with ``seed``,
  created lazily and kept across calls so successive batches get fresh draws). The global RNG is
  never read or reseeded.
* ``eps == 0`` returns ``x`` unchanged (a copy with identical values).

Models may return ``(N, C)`` logits or, for binary tasks, one score per sample (``(N,)`` or
``(N, 1)``, positive = class 1). Scores are treated as the two logits ``[-s/2, s/2]``, and labels
are mapped with ``y > 0`` so both ``{0, 1}`` and ``{-1, +1}`` conventions work; then "ce" is the
logistic loss and "margin" (and "dlr", which needs 3 classes) is ``-y·s``.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from advlab.attack_losses import NODE_LOSSES as LOSSES
from advlab.errors import ConfigError, check_number

NORMS = ("linf", "l2", "l1")
_NORM_ALIASES = {"linf": "linf", "inf": "linf", "l_inf": "linf", "l2": "l2", "2": "l2", "l1": "l1", "1": "l1"}
_BOUNDS_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# helpers shared by attacks and evaluation
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every submodule's own ``training`` flag on exit.

    Restoring per module (not ``model.train(previous)``) keeps deliberately mixed states intact,
    e.g. a frozen BatchNorm left in eval inside a model that is training.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        model.train(modes[0][1])
        for m, flag in modes:
            if m.training != flag:
                m.training = flag


@contextlib.contextmanager
def autograd_enabled() -> Iterator[bool]:
    """Enable autograd even inside ``no_grad`` or ``inference_mode``. Yields True when inference
    mode had to be left (then input tensors must be cloned before they enter autograd)."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False), torch.enable_grad():
            yield True
    else:
        with torch.enable_grad():
            yield False


def as_logits(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits (N, C), class indices (N,))`` for a model output and labels/targets."""
    if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
        s = out.reshape(-1)
        half = 0.5 * s
        return torch.stack((-half, half), dim=1), (y > 0).long()
    if out.dim() != 2:
        raise ValueError(f"attacks expect model outputs of shape (N, C), (N,) or (N, 1); got {tuple(out.shape)}")
    return out, (y if y.is_floating_point() and y.dim() == 2 else y.long())  # (N, C) floats: soft targets (loss "kl")


def per_sample_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Loss per sample; larger = further from ``y``. Untargeted attacks maximise it, targeted
    attacks minimise it (with ``y`` the targets)."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "kl":  # KL(y ‖ softmax(logits)), 0·log 0 = 0; class indices y: one-hot, i.e. cross-entropy
        log_q = F.log_softmax(logits, dim=1)
        if y.dim() == 1:
            return -log_q.gather(1, y.unsqueeze(1)).squeeze(1)
        return (torch.xlogy(y, y) - y * log_q).sum(dim=1)
    # margin (Carlini-Wagner, unclipped): best other logit minus the logit of y
    idx = y.unsqueeze(1)
    own = logits.gather(1, idx).squeeze(1)
    other = logits.scatter(1, idx, float("-inf")).amax(dim=1)
    if kind == "dlr" and logits.shape[1] >= 3:
        # DLR (Croce & Hein 2020): the margin over z_π1 − z_π3, invariant to shifts and scales of the
        # logits, so a saturated softmax does not flatten it. Two classes: the plain margin.
        top = logits.topk(3, dim=1).values
        return (other - own) / (top[:, 0] - top[:, 2] + 1e-12)
    return other - own


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2): larger = closer to class ``t``
    (APGD-T maximises it). Fewer than 4 classes there is no z_π4: the targeted margin z_t − z_y. (z_π3
    for z_π4 would make the loss of target π3 the constant −1 on every correctly classified point, as
    z_t − z_y = −(z_π1 − z_π3) there: no gradient, no attack.)"""
    diff = logits.gather(1, t.unsqueeze(1)).squeeze(1) - logits.gather(1, y.unsqueeze(1)).squeeze(1)
    if logits.shape[1] < 4:
        return diff
    top = logits.sort(dim=1, descending=True).values
    return diff / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def success(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-sample bool tensor: untargeted, the model misclassifies ``x_adv`` (prediction != y);
    targeted, it predicts the target ``y``. Runs in eval mode without gradients."""
    with eval_mode(model), torch.no_grad():
        logits, yy = as_logits(model(x_adv), y.to(x_adv.device))
        pred = logits.argmax(dim=1)
    return pred == yy if targeted else pred != yy


def lp_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of ``t`` flattened, in the AutoAttack reference's arithmetic (‖·‖₂ as the square
    root of the sum of squares): the attacks that must match it point by point share this one."""
    flat = t.reshape(t.shape[0], -1)
    if norm == "linf":
        return flat.abs().max(dim=1)[0]
    if norm == "l2":
        return (flat ** 2).sum(dim=-1).sqrt()
    return flat.abs().sum(dim=-1)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_norm(norm, allowed=NORMS, owner: str = "") -> str:
    """The canonical name of ``norm``; ConfigError when it is unknown or not in ``allowed``."""
    key = str(norm).strip().lower() if isinstance(norm, (str, int)) and not isinstance(norm, bool) else None
    name = _NORM_ALIASES.get(key)
    if name not in allowed:
        what = "unknown norm" if name is None else f"{owner or 'this attack'} does not support norm"
        raise ConfigError("norm", f"{what} {norm!r}; allowed: {', '.join(allowed)}")
    return name


def parse_number(value):
    """Numbers pass through; a string ``"8/255"`` or ``"0.5"`` (YAML has no arithmetic) is parsed.
    Anything else is returned unchanged for the caller's validation to reject."""
    if isinstance(value, str):
        parts = value.split("/")
        try:
            if len(parts) == 1:
                return float(parts[0])
            if len(parts) == 2:
                return float(parts[0]) / float(parts[1])
        except (ValueError, ZeroDivisionError):
            return value
    return value


def check_eps(eps) -> float:
    return check_number("eps", parse_number(eps), 0)


def optional_eps() -> property:
    """`eps` of a minimal-norm attack (DeepFool, CW, FMN): None means unbounded, a number is checked."""
    def get(self):
        return self._eps

    def set_(self, value) -> None:
        self._eps = None if value is None else check_eps(value)

    return property(get, set_)


def check_bounds(bounds):
    if bounds is None:
        return None
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ConfigError("bounds", f"must be null or a pair [lo, hi] with lo < hi, got {bounds!r}") from None
    if not (_is_real(lo) and _is_real(hi)) or not float(lo) < float(hi):
        raise ConfigError("bounds", f"must be null or a pair [lo, hi] with lo < hi, got {bounds!r}")
    return (float(lo), float(hi))


# --------------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------------
class Attack:
    """Base of all attacks. Subclasses implement ``_perturb(model, x, y)``, called with autograd on,
    the model in eval mode, ``eps > 0`` and ``x`` detached (and inside the bounds)."""

    name = "attack"
    norms = ("linf", "l2")  # the threat models this attack implements (a subset of NORMS)
    untargeted_only = False  # True: ``targeted`` cannot be set (AutoAttack and its targeted-search members)

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False, bounds=(0.0, 1.0),
                 seed: int = 0, loss: str = "ce"):
        self.eps = eps
        self.norm = norm
        self.targeted = targeted
        self.bounds = bounds
        self.seed = seed
        self.loss = loss

    # ---- validated attributes (settable after construction) --------------------------------
    @property
    def eps(self) -> float:
        return self._eps

    @eps.setter
    def eps(self, value) -> None:
        self._eps = check_eps(value)

    @property
    def norm(self) -> str:
        return self._norm

    @norm.setter
    def norm(self, value) -> None:
        self._norm = check_norm(value, type(self).norms, type(self).__name__)

    @property
    def targeted(self) -> bool:
        return self._targeted

    @targeted.setter
    def targeted(self, value) -> None:
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise ConfigError("targeted", f"must be a boolean, got {value!r}; allowed: true, false")
        if value and self.untargeted_only:
            raise ConfigError("targeted", f"{type(self).__name__} takes true labels and picks its own targets "
                                                 "(or none); allowed: false")
        self._targeted = bool(value)

    @property
    def bounds(self):
        return self._bounds

    @bounds.setter
    def bounds(self, value) -> None:
        self._bounds = check_bounds(value)

    @property
    def loss(self) -> str:
        return self._loss

    @loss.setter
    def loss(self, value) -> None:
        if value not in LOSSES:
            raise ConfigError("loss", f"unknown loss {value!r}; allowed: {', '.join(LOSSES)}")
        self._loss = value

    @property
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value) -> None:
        if not _is_int(value):
            raise ConfigError("seed", f"must be an integer, got {value!r}")
        self._seed = int(value)
        self.reset_rng()

    # ---- randomness ----------------------------------------------------------------------
    def generator(self, device) -> torch.Generator:
        """This attack's generator for ``device`` (created and seeded on first use, then kept)."""
        device = torch.device(device)
        if device.type != "cpu" and device.index is None:
            device = torch.device(device.type, torch.get_device_module(device.type).current_device())
        key = (device.type, device.index)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed)
            state = self._pending_states.pop(key, None)
            if state is not None:  # carried over by a copy / pickle of this attack
                gen.set_state(state)
            self._generators[key] = gen
        return gen

    def reset_rng(self) -> None:
        """Forget the generators: the next call draws as a freshly built attack would."""
        self._generators = {}
        self._pending_states = {}

    def __getstate__(self) -> dict:
        # Generators are stored as their states, so copies and pickles continue the same stream.
        state = self.__dict__.copy()
        pending = dict(state.get("_pending_states", {}))
        pending.update({k: g.get_state() for k, g in state.get("_generators", {}).items()})
        state["_generators"] = {}
        state["_pending_states"] = pending
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    # ---- public API ----------------------------------------------------------------------
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("attack(model, x, y) expects tensors x and y")
        if x.dim() < 1 or y.shape[:1] != x.shape[:1]:
            raise ValueError(f"x and y must share the batch dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if self._eps == 0 or x.shape[0] == 0:
            return x.detach().clone()
        if self._bounds is not None:
            lo, hi = self._bounds
            xmin, xmax = torch.aminmax(x.detach())
            if bool(xmin < lo - _BOUNDS_TOL) or bool(xmax > hi + _BOUNDS_TOL):
                raise ValueError(
                    f"attack input outside attack.bounds={list(self._bounds)} (min {float(xmin):.4g}, max "
                    f"{float(xmax):.4g}); attacks work in pixel space: pass raw pixels or set bounds=None")
        with eval_mode(model), autograd_enabled() as left_inference:
            x_in, y_in = x.detach(), y.detach().to(x.device)
            if left_inference:  # inference tensors cannot enter autograd; plain copies can
                x_in, y_in = x_in.clone(), y_in.clone()
            x_adv = self._perturb(model, x_in, y_in)
        return x_adv.detach()

    def success(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample bool: the attack's goal is reached on ``x_adv`` (see module ``success``)."""
        return success(model, x_adv, y, self._targeted)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self._eps:g}, norm={self._norm!r}, targeted={self._targeted}, "
                f"bounds={self._bounds}, seed={self._seed}, loss={self._loss!r})")
