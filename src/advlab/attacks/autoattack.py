"""AutoAttack (Croce & Hein, ICML 2020) as one attack: an ensemble run in sequence, each member only on
the points still robust, per-sample worst case (the first member that breaks a sample gives its point).

Versions: the members, restarts and target counts of the authors' ``AutoAttack._set_version``
(pyautoattack 0.2.0, ``autoattack.py``), in their order:

* ``standard``: APGD-CE, APGD-T, FAB-T, Square (5,000 queries, the reference's unrescaled window
  schedule). L∞ / L2: 1 APGD restart, 9 targets. L1: APGD-CE with 5 restarts and APGD-T with 5
  targets, both on the 3ε/2ε/ε schedule (``large_eps``); FAB-T 9 targets, 1 restart;
* ``plus``: APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5 restarts, Square, APGD-T
  (9 targets), FAB-T (9 targets, 1 restart);
* ``rand``: APGD-CE and APGD-DLR with expectation over transformation (``eot_iter`` = 20 gradient
  samples), 1 restart, for randomised models.

``attacks`` overrides the members (names from ``MEMBERS``: the reference's ``custom``). ``loss`` is
accepted for the common interface and has no effect (every member has its own loss). After each call
``last_run`` lists per member how many points it attacked, how many it broke and its time.

Any number of classes C (read from the model's output at each call; a single-score binary model is 2):

* APGD-T and FAB-T attack ``min(n_target_classes, C − 1)`` targets: C − 1 below 10 classes, the
  version's count otherwise. The reference does not cap: it warns (``checks.check_n_classes``) and
  then indexes out of range.
* C = 3: APGD-DLR is the reference's (z_π1 − z_π3 exists); APGD-T's targeted DLR divides by
  z_π1 − (z_π3 + z_π4)/2 and there is no z_π4, so APGD-T maximises the targeted margin z_t − z_y
  (``base.dlr_targeted_loss``; z_π3 in z_π4's place would make target π3's loss a constant). The
  reference warns that the targeted DLR is not possible and fails with an IndexError.
* C = 2: APGD-DLR and APGD-T are skipped, with one logged warning: DLR's denominator needs a third
  logit, so they have no loss of their own (the reference warns, then fails with an IndexError); their
  stand-in, the margin z_other − z_y, gives APGD-CE's own sign steps (CE = softplus of it) except
  where the softmax saturates, which FAB-T and Square, working on logit differences, still cover. A
  member list with nothing but DLR members is refused on a 2-class model.

Where advlab differs from the reference on purpose: every member draws from its own generator, seeded
with ``seed`` as the reference seeds the global RNG for each member (so one batch draws what the
reference draws), but successive batches continue the stream (the reference reseeds every batch and
so repeats its draws); a broken point is the first adversarial iterate (the reference's last one);
the reference's diagnostic checks (randomness, logit range, dynamic graph) are advlab-eval's
``masking`` analysis instead.
"""
from __future__ import annotations

import logging
import time

import torch
from torch import nn

from advlab.attacks.apgd import APGD, APGDT
from advlab.attacks.base import Attack, as_logits
from advlab.attacks.fab import FAB, FABT
from advlab.attacks.pgd import _int_at_least_one
from advlab.attacks.square import Square
from advlab.errors import ConfigError

log = logging.getLogger(__name__)

MEMBERS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
DLR_MEMBERS = ("apgd-dlr", "apgd-t")  # their losses divide by z_π1 − z_π3: no third logit, no loss
TARGETED_MEMBERS = ("apgd-t", "fab-t")
VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


class AutoAttack(Attack):
    """AutoAttack; untargeted (``y`` true labels). ``apgd_steps`` / ``fab_steps``: iterations of the
    APGD members and of FAB (100 in the paper). ``n_target_classes``: null = the version's (9; APGD-T at
    L1 standard: 5); a number sets both targeted members'."""

    name = "autoattack"
    fixed_losses = True  # `loss` has no effect: the losses are part of the method
    untargeted_only = True

    norms = ("linf", "l2", "l1")

    def __init__(self, eps: float, norm: str = "linf", version: str = "standard", attacks=None,
                 n_target_classes: int | None = None, square_queries: int = 5000, apgd_steps: int = 100, fab_steps: int = 100,
                 eot_iter: int = 20, bounds=(0.0, 1.0), seed: int = 0, targeted: bool = False, loss: str = "ce"):
        if version not in VERSIONS:
            raise ConfigError("version", f"unknown version {version!r}; allowed: {', '.join(VERSIONS)}")
        members = tuple(VERSIONS[version] if attacks is None else attacks)
        bad = [m for m in members if m not in MEMBERS]
        if bad or not members:
            raise ConfigError("attacks", f"unknown members {bad or members!r}; allowed: {', '.join(MEMBERS)}")
        self._members = {}
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.version, self.attacks = version, members
        self.n_target_classes = None if n_target_classes is None else _int_at_least_one("n_target_classes", n_target_classes)
        self.square_queries = _int_at_least_one("square_queries", square_queries)
        self.apgd_steps = _int_at_least_one("apgd_steps", apgd_steps)
        self.fab_steps = _int_at_least_one("fab_steps", fab_steps)
        self.eot_iter = _int_at_least_one("eot_iter", eot_iter)
        self._members = {name: self._build(name) for name in members}
        self.reset_rng()
        # a dict: cache keys (artifacts.keys.describe_object) skip it; "noted": class counts already logged
        self._report: dict = {"last_run": [], "noted": set()}

    def _build(self, name: str) -> Attack:
        """A member with the reference version's settings (``_set_version``)."""
        l1_standard = self.version == "standard" and self.norm == "l1"
        targets = self.n_target_classes or (5 if l1_standard and name == "apgd-t" else 9)
        common = dict(eps=self.eps, norm=self.norm, bounds=self.bounds, seed=self.seed)
        if name in ("apgd-ce", "apgd-dlr"):
            restarts = 5 if self.version == "plus" or l1_standard else 1
            eot = self.eot_iter if self.version == "rand" else 1
            return APGD(steps=self.apgd_steps, loss=name[5:], restarts=restarts, eot_iter=eot, large_eps=l1_standard, **common)
        if name == "apgd-t":
            return APGDT(steps=self.apgd_steps, n_target_classes=targets, large_eps=l1_standard, **common)
        if name == "fab":
            return FAB(steps=self.fab_steps, restarts=5 if self.version == "plus" else 1, **common)
        if name == "fab-t":
            return FABT(steps=self.fab_steps, n_target_classes=targets, restarts=1, **common)
        return Square(n_queries=self.square_queries, p_init=0.8, **common)

    @property
    def last_run(self) -> list[dict]:
        """Per member of the last call: points attacked, broken, robust after it, seconds."""
        return self._report["last_run"]

    @property
    def members(self) -> dict[str, Attack]:
        """The member attacks by name, in order (their settings may be changed)."""
        return self._members

    def reset_rng(self) -> None:
        super().reset_rng()
        for member in getattr(self, "_members", {}).values():
            member.seed = self.seed  # as the reference seeds each member; the seed setter resets the member's generators

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
            robust = logits.argmax(dim=1) == yy
        out, report = x.clone(), []
        if any(m.norm != self.norm for m in self._members.values()):  # the version's settings depend on the norm
            self._members = {name: self._build(name) for name in self.attacks}
        skipped = self._skipped_for(logits.shape[1])
        for name, member in self._members.items():
            member.eps, member.bounds = self.eps, self.bounds
            idx = robust.nonzero().squeeze(1)
            t0 = time.perf_counter()
            broken_n = 0
            if idx.numel() and name not in skipped:
                adv = member(model, x.index_select(0, idx), y.index_select(0, idx))
                with torch.no_grad():
                    z, yi = as_logits(model(adv), y.index_select(0, idx))
                    broken = z.argmax(dim=1) != yi
                out[idx[broken]] = adv[broken]
                robust[idx[broken]] = False
                broken_n = int(broken.sum())
            row = {"attack": name, "attacked": 0 if name in skipped else int(idx.numel()), "broken": broken_n,
                   "robust_after": int(robust.sum()), "seconds": time.perf_counter() - t0}
            report.append({**row, "skipped": skipped[name]} if name in skipped else row)
        self._report["last_run"] = report
        return out

    def _skipped_for(self, n_classes: int) -> dict[str, str]:
        """{member: why} of the members that cannot run on ``n_classes`` classes (see the module); logs
        once per class count what changes there (a warning for skipped members, else an info line)."""
        names = list(self._members)
        dlr = [m for m in names if m in DLR_MEMBERS] if n_classes < 3 else []
        if dlr and len(dlr) == len(names):
            raise ConfigError("attack.attacks", f"{', '.join(dlr)} use the DLR loss, which needs at least 3 classes, and this "
                                                f"model has {n_classes}; allowed here: {', '.join(m for m in MEMBERS if m not in DLR_MEMBERS)}")
        why = f"the DLR loss divides by z_π1 − z_π3 and a {n_classes}-class model has no third logit"
        if n_classes not in self._report.setdefault("noted", set()):
            self._report["noted"].add(n_classes)
            notes = []
            if dlr:
                log.warning("AutoAttack on %d classes: %s skipped: %s (the reference fails there with an IndexError); "
                            "running %s", n_classes, ", ".join(dlr), why, ", ".join(m for m in names if m not in dlr))
            elif n_classes == 3 and "apgd-t" in names:
                notes.append("APGD-T's targeted DLR has no 4th logit: APGD-T maximises the targeted margin z_t − z_y")
            capped = [f"{m} {self._members[m].n_target_classes}" for m in names
                      if m in TARGETED_MEMBERS and m not in dlr and self._members[m].n_target_classes > n_classes - 1]
            if capped:
                notes.append(f"{n_classes - 1} target class{'es' if n_classes > 2 else ''} (C − 1) instead of {', '.join(capped)}")
            if notes:
                log.info("AutoAttack on %d classes: %s", n_classes, "; ".join(notes))
        return {m: why for m in dlr}

    def __repr__(self) -> str:
        return (f"AutoAttack(eps={self.eps:g}, norm={self.norm!r}, version={self.version!r}, attacks={list(self.attacks)}, "
                f"n_target_classes={self.n_target_classes}, square_queries={self.square_queries}, seed={self.seed})")
