"""Perturbation learning (Ilyas et al. 2019; Kumano et al. ICLR'24, NeurIPS'24).

A source model f is trained on clean data (or taken from the cache). Every training image is
attacked towards a target class t and relabelled t; a fresh model g is trained only on these
(x+δ, t) pairs (or on δ alone) and evaluated on the clean test set with the TRUE labels. Above-chance
accuracy means the perturbations carry class features.
"""
from __future__ import annotations

import logging

import torch
from torchmetrics import MeanMetric
from advlab.utils.progress import progress_bar

from advlab.artifacts import describe_object
from advlab.cache import spec_key
from advlab.config import BASES, TARGET_RULES, TRAIN_ON
from advlab.errors import ConfigError
from advlab.methods.base import ClassifierModule

log = logging.getLogger(__name__)

# below this targeted success rate the crafted dataset is flagged (RECIPES.md §1: a weak attack
# silently produces a weak dataset)
WEAK_SUCCESS_RATE = 0.95
BUDGET_FRACTION = 0.98


def weak_attack_check(attack, success_rate: float, delta_norm_mean: float) -> tuple[bool, bool, str]:
    """(weak, budget_bound, message) of a crafting run. Weak: targeted success < 0.95. Budget-bound:
    the mean ‖δ‖ (in the attack's norm) reaches 0.98·ε, so only a larger ε helps; otherwise the
    optimiser stopped short (more steps or a larger step size)."""
    eps = float(attack.eps)
    budget = delta_norm_mean >= BUDGET_FRACTION * eps
    if success_rate >= WEAK_SUCCESS_RATE:
        return False, budget, ""
    alpha = getattr(attack, "alpha", None)
    knobs = f"ε={eps:g} ({attack.norm}), steps={getattr(attack, 'steps', 'n/a')}, step size={'n/a' if alpha is None else f'{alpha:g}'}"
    why = (f"budget-bound: mean ‖δ‖ {delta_norm_mean:.4g} ≥ {BUDGET_FRACTION}·ε, raise attack.eps" if budget else
           f"optimiser-bound: mean ‖δ‖ {delta_norm_mean:.4g} < {BUDGET_FRACTION}·ε (or clipped at the pixel box), "
           "raise attack.steps or attack.step_size")
    msg = (f"Weak crafting attack: targeted success rate {success_rate:.3f} < {WEAK_SUCCESS_RATE} with {knobs}; {why}. "
           "The perturbation dataset is weaker than the recipe's.")
    return True, budget, msg


def make_targets(y: torch.Tensor, num_classes: int, rule: str, generator: torch.Generator) -> torch.Tensor:
    """det: (y+1) mod C (D_det); rand: uniform over the classes other than y (D_rand);
    uniform: uniform over all classes (Kumano's noise / two-layer settings)."""
    if rule == "det":
        return (y + 1) % num_classes
    if rule == "rand":
        return (y + torch.randint(1, num_classes, y.shape, generator=generator)) % num_classes
    if rule == "uniform":
        return torch.randint(0, num_classes, y.shape, generator=generator)
    raise ConfigError("method.target_rule", f"unknown rule {rule!r}; allowed: {', '.join(TARGET_RULES)}")


def craft_dataset(source, attack, x, y, num_classes, *, target_rule="det", base="natural", train_on="adv",
                  seed=0, batch_size=512, device="cpu", bounds=(0.0, 1.0), progress=True) -> dict:
    """Attack every (base) training input towards its target; return the relabelled dataset.

    Returns {"x": training inputs (x+δ, or δ), "y": targets, "success_rate": fraction that the
    source classifies as the target, plus norms of δ and a small preview for plots}.
    """
    generator = torch.Generator().manual_seed(int(seed))
    targets = make_targets(y, num_classes, target_rule, generator)
    if base == "natural":
        x_base = x
    elif base == "uniform":
        x_base = torch.rand(x.shape, generator=generator) if bounds is not None else torch.randn(x.shape, generator=generator)
    else:
        raise ConfigError("method.base", f"unknown base {base!r}; allowed: {', '.join(BASES)}")
    if train_on not in TRAIN_ON:
        raise ConfigError("method.train_on", f"unknown value {train_on!r}; allowed: {', '.join(TRAIN_ON)}")
    attack.targeted = True
    source.eval()
    out = torch.empty_like(x_base)
    hits, l2, linf, linf_sum = 0, 0.0, 0.0, 0.0
    for i in progress_bar(range(0, len(x_base), batch_size), desc="Crafting perturbation dataset", disable=not progress):
        xb, tb = x_base[i : i + batch_size].to(device), targets[i : i + batch_size].to(device)
        adv = attack(source, xb, tb)
        with torch.no_grad():
            hits += int((source(adv).argmax(1) == tb).sum())
        delta = (adv - xb).flatten(1)
        l2 += float(delta.norm(dim=1).sum())
        if delta.numel():
            per_sample = delta.abs().amax(dim=1)
            linf, linf_sum = max(linf, float(per_sample.max())), linf_sum + float(per_sample.sum())
        out[i : i + batch_size] = (adv - xb if train_on == "delta" else adv).detach().cpu()
    n = max(len(x_base), 1)
    k = min(16, len(x_base))
    return {
        "x": out, "y": targets,
        "success_rate": hits / n, "delta_l2_mean": l2 / n, "delta_linf_max": linf, "delta_linf_mean": linf_sum / n,
        "preview_base": x_base[:k].clone(), "preview_y": y[:k].clone(),
    }


class PerturbationLearning(ClassifierModule):
    """Train the model on a dataset crafted from a source model's targeted adversarial examples.

    `source` is the source model's spec (the top-level `source` config node); `attack` crafts the
    dataset (made targeted here); `target_rule` in {det, rand, uniform}; `base` in {natural, uniform}
    (attack natural images or U[0,1] noise); `train_on` in {adv, delta} (train on x+δ or on δ alone).
    """

    def __init__(self, model, optimizer, scheduler=None, eval_attack=None, attack=None, source=None,
                 target_rule: str = "det", base: str = "natural", train_on: str = "adv",
                 craft_seed: int = 0, craft_batch_size: int = 512, measure_transfer: bool = False, transfer_target=None, transfer_eps: float | None = None, **kw):
        super().__init__(model, optimizer, scheduler, eval_attack, **kw)
        if attack is None:
            raise ConfigError("attack", "method=perturbation needs an attack to craft its dataset")
        if source is None:
            raise ConfigError("source", "method=perturbation needs a source model spec (the `source` config node)")
        for key, value, allowed in (("target_rule", target_rule, TARGET_RULES), ("base", base, BASES), ("train_on", train_on, TRAIN_ON)):
            if value not in allowed:
                raise ConfigError(f"method.{key}", f"unknown value {value!r}; allowed: {', '.join(allowed)}")
        self.attack = attack
        self.source_cfg = source
        self.target_rule, self.base, self.train_on = target_rule, base, train_on
        self.craft_seed, self.craft_batch_size = int(craft_seed), int(craft_batch_size)
        if measure_transfer and transfer_target is None:
            raise ConfigError("method.measure_transfer", "needs the spec of a standard model of the trained architecture (transfer_target)")
        # Ilyas et al. Fig. 3: how well the source's (untargeted) attack transfers to an independently
        # trained standard model of the trained architecture, next to what perturbation learning reaches.
        self.transfer_target = transfer_target if measure_transfer else None
        self.transfer_eps = None if transfer_eps is None else float(transfer_eps)
        self.test_agreement = MeanMetric()
        # kept outside the module tree (not a registered submodule): not trained, not checkpointed,
        # never switched to train mode by Lightning
        self.__dict__["_source"] = None
        self.preview = None

    def prepare(self, datamodule, artifacts):
        source, source_metrics, source_key = artifacts.model(self.source_cfg, datamodule)
        self.attack.targeted = True
        spec = {
            "source": source_key,
            "attack": describe_object(self.attack),
            "target_rule": self.target_rule, "base": self.base, "train_on": self.train_on,
            "seed": self.craft_seed,
        }

        def craft():
            return craft_dataset(source, self.attack, datamodule.x_train, datamodule.y_train, datamodule.num_classes,
                                 target_rule=self.target_rule, base=self.base, train_on=self.train_on, seed=self.craft_seed,
                                 batch_size=self.craft_batch_size, device=artifacts.device, bounds=datamodule.bounds,
                                 progress=artifacts.progress)

        payload, _ = artifacts.cache.get_or_create("datasets", spec, craft, what="perturbation dataset")
        self.__dict__["_source"] = source
        if self.transfer_target is not None:
            self.extra_metrics.update(self._transfer_metrics(source, source_key, datamodule, artifacts))
        self.extra_metrics.update({
            "source/test/acc": float(source_metrics["test/acc"]),
            "perturb/success_rate": float(payload["success_rate"]),
            "perturb/delta_l2_mean": float(payload["delta_l2_mean"]),
            "perturb/delta_linf_max": float(payload["delta_linf_max"]),
        })
        log.info("Perturbation dataset: %d examples, targeted success rate %.3f (source test acc %.3f)",
                 len(payload["y"]), payload["success_rate"], source_metrics["test/acc"])
        self._flag_weak_attack(payload)
        self.preview = {k: payload[k] for k in ("preview_base", "preview_y")} | {"x": payload["x"][: len(payload["preview_y"])], "t": payload["y"][: len(payload["preview_y"])]}
        tag = f"perturbation-{spec_key(spec)}"
        return datamodule.with_train(payload["x"], payload["y"], tag=tag, check_bounds=self.train_on != "delta")

    def _flag_weak_attack(self, payload) -> None:
        """perturb/weak_attack (1.0 / 0.0) and perturb/budget_bound; a warning naming the knobs."""
        # datasets cached before delta_linf_mean existed: the max bounds the mean from above
        linf = payload.get("delta_linf_mean", payload["delta_linf_max"])
        norm_mean = float(payload["delta_l2_mean"] if self.attack.norm == "l2" else linf)
        weak, budget, msg = weak_attack_check(self.attack, float(payload["success_rate"]), norm_mean)
        self.extra_metrics.update({"perturb/weak_attack": float(weak), "perturb/budget_bound": float(budget),
                                   "perturb/delta_linf_mean": float(linf)})
        if weak:
            log.warning(msg)

    def _transfer_metrics(self, source, source_key, datamodule, artifacts) -> dict:
        from advlab.analysis.transfer import adversarial_test_set, evaluate_transfer, untargeted

        target, _, target_key = artifacts.model(self.transfer_target, datamodule, name="transfer target model",
                                            where="method.transfer_target")
        attack = untargeted(self.attack)
        if self.transfer_eps is not None:  # the crafting ε can be far too large to tell architectures apart
            attack.eps = self.transfer_eps
        x_adv, _ = adversarial_test_set(artifacts, source, source_key, attack, datamodule, batch_size=self.craft_batch_size)
        metrics, _ = evaluate_transfer(source, target, datamodule.x_test, x_adv, datamodule.y_test,
                                       batch_size=self.craft_batch_size, device=artifacts.device)
        metrics["transfer/same_model"] = float(target_key == source_key)
        metrics["transfer/eps"] = float(attack.eps)
        log.info("Transfer of the source's untargeted attack to a standard %s: fool rate %.3f",
                 self.transfer_target.arch.get("_target_", "model"), metrics["transfer/fool_rate"])
        return metrics

    @property
    def source(self):
        return self._source

    def on_test_start(self):
        if self._source is not None:
            self._source.to(self.device).eval()

    def test_step(self, batch, batch_idx):
        logits = super().test_step(batch, batch_idx)
        if self._source is not None:
            x, _ = batch
            agree = (self._source(x).argmax(1) == logits.argmax(1)).float()
            self.test_agreement.update(agree)
            self.log("test/agreement", self.test_agreement, on_epoch=True, batch_size=len(x))
        return logits
