"""Perturbation learning (Ilyas et al. 2019; Kumano et al. ICLR'24, NeurIPS'24).

A source model f is trained on clean data (or taken from the cache). Every training image is
attacked towards a target class t and relabelled t; a fresh model g is trained only on these
(x+δ, t) pairs (or on δ alone) by plain standard training and evaluated on the clean test set with
the TRUE labels. Above-chance accuracy means the perturbations carry class features.
`PerturbationDataset` builds (and caches) that dataset; `craft_dataset` is the crafting itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from advlab.artifacts.keys import describe_object
from advlab.artifacts.cache import spec_key
from advlab.derived.base import DerivedData, NaturalTrainAccuracy, SourceAgreement, SourceModel
from advlab.derived.resume import CraftProgress
from advlab.errors import ConfigError
from advlab.errors import check_number
from advlab.utils import signals
from advlab.utils.progress import progress_bar

log = logging.getLogger(__name__)

# the crafting's choices (checked when the builder is made: the pre-flight makes it)
TARGET_RULES = ("det", "rand", "uniform")
BASES = ("natural", "uniform")
TRAIN_ON = ("adv", "delta")

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
    raise ConfigError("derived.target_rule", f"unknown rule {rule!r}; allowed: {', '.join(TARGET_RULES)}")


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
        raise ConfigError("derived.base", f"unknown base {base!r}; allowed: {', '.join(BASES)}")
    if train_on not in TRAIN_ON:
        raise ConfigError("derived.train_on", f"unknown value {train_on!r}; allowed: {', '.join(TRAIN_ON)}")
    attack.targeted = True
    source.eval()
    out, stats = _craft(source, attack, x_base, targets, train_on=train_on, batch_size=batch_size, device=device, progress=progress)
    hits, l2, linf, linf_sum = stats["hits"], stats["l2"], stats["linf"], stats["linf_sum"]
    n = max(len(x_base), 1)
    k = min(16, len(x_base))
    return {
        "x": out, "y": targets,
        "success_rate": hits / n, "delta_l2_mean": l2 / n, "delta_linf_max": linf, "delta_linf_mean": linf_sum / n,
        "preview_base": x_base[:k].clone(), "preview_y": y[:k].clone(),
    }


def attack_rng(attack) -> dict[str, torch.Tensor]:
    """The attack's random streams as {"<device type>:<index>": state} (as methods.base's checkpoints keep them)."""
    return {f"{t}:{i}": state for (t, i), state in attack.__getstate__()["_pending_states"].items()}


def set_attack_rng(attack, states: dict[str, torch.Tensor]) -> None:
    """Continue the attack's random streams from `attack_rng`'s states (each generator takes its state when first used)."""
    attack.reset_rng()
    attack._pending_states = {(k.split(":")[0], None if k.split(":")[1] == "None" else int(k.split(":")[1])): state
                              for k, state in states.items()}


def _craft(source, attack, x_base, targets, *, train_on, batch_size, device, progress) -> tuple[torch.Tensor, dict]:
    """The crafting loop: (inputs to train on, running sums). Resumable inside a cache build
    (`resume.CraftProgress`): the batches saved, the sums and the attack's random streams after them."""
    out = torch.empty_like(x_base)
    saved = CraftProgress({"x": out}, len(x_base), batch_size, "perturbation dataset")
    start, state = saved.resume()
    stats = dict(state["stats"]) if state else {"hits": 0, "l2": 0.0, "linf": 0.0, "linf_sum": 0.0}
    if state:
        set_attack_rng(attack, state["rng"])
    batches = range(start, len(x_base), batch_size)
    desc = "Crafting perturbation dataset" + (f" (resumed at batch {start // batch_size + 1})" if start else "")
    with signals.deferred("crafting the perturbation dataset"):
        for i in progress_bar(batches, desc=desc, disable=not progress):
            xb, tb = x_base[i : i + batch_size].to(device), targets[i : i + batch_size].to(device)
            adv = attack(source, xb, tb)
            with torch.no_grad():
                stats["hits"] += int((source(adv).argmax(1) == tb).sum())
            delta = (adv - xb).flatten(1)
            stats["l2"] += float(delta.norm(dim=1).sum())
            if delta.numel():
                per_sample = delta.abs().amax(dim=1)
                stats["linf"], stats["linf_sum"] = max(stats["linf"], float(per_sample.max())), stats["linf_sum"] + float(per_sample.sum())
            out[i : i + batch_size] = (adv - xb if train_on == "delta" else adv).detach().cpu()
            saved.done(i + len(xb), {"stats": dict(stats), "rng": attack_rng(attack)})
            if signals.received() is not None:
                break  # saved: the deferred region raises signals.Interrupted
    return out, stats


@dataclass
class PerturbationDataset:
    """The dataset of a source model's targeted adversarial examples, relabelled with their targets.

    `target_rule` in {det, rand, uniform}; `base` in {natural, uniform} (attack natural images or
    U[0,1] noise); `train_on` in {adv, delta} (train on x+δ or on δ alone). `measure_transfer`: also
    measure how the source's untargeted attack (at `transfer_eps`, default the crafting ε) transfers
    to a standard model of the trained architecture (Ilyas et al. Fig. 3), on `transfer_images` test
    images drawn with a fixed seed (default: all of them). `measure_train_acc`: also report the trained model's
    accuracy on the clean training inputs with their true labels (`test/natural_train_acc`, Kumano et al.
    NeurIPS'24's accuracy).
    """
    target_rule: str = "det"
    base: str = "natural"
    train_on: str = "adv"
    seed: int = 0
    batch_size: int = 512
    measure_transfer: bool = False
    transfer_eps: float | None = None
    transfer_images: int | None = None
    measure_train_acc: bool = False

    source_name = "source model"  # in the log and the cache messages

    def __post_init__(self):
        for key, allowed in (("target_rule", TARGET_RULES), ("base", BASES), ("train_on", TRAIN_ON)):
            if getattr(self, key) not in allowed:
                raise ConfigError(key, f"unknown value {getattr(self, key)!r}; allowed: {', '.join(allowed)}")
        self.seed = int(self.seed)
        self.batch_size = check_number("batch_size", self.batch_size, 1, integer=True)
        self.transfer_eps = None if self.transfer_eps is None else float(self.transfer_eps)
        self.transfer_images = check_number("transfer_images", self.transfer_images, 1, integer=True, allow_none=True)
        if self.measure_train_acc not in (True, False):
            raise ConfigError("measure_train_acc", f"must be a boolean, got {self.measure_train_acc!r}; allowed: true, false")

    def build(self, source: SourceModel, datamodule, artifacts, *, attack=None, eval_attack=None, arch=None, source_spec=None) -> DerivedData:
        """Craft (or take from the cache) the dataset with `attack`, made targeted; `arch` and
        `source_spec` give the transfer target of `measure_transfer`."""
        if attack is None:
            raise ConfigError("attack", "method=perturbation needs an attack to craft its dataset")
        attack.targeted = True
        spec = {"source": source.key, "attack": describe_object(attack), "target_rule": self.target_rule, "base": self.base,
                "train_on": self.train_on, "seed": self.seed}

        def craft():
            return craft_dataset(source.model, attack, datamodule.x_train, datamodule.y_train, datamodule.num_classes,
                                 target_rule=self.target_rule, base=self.base, train_on=self.train_on, seed=self.seed,
                                 batch_size=self.batch_size, device=artifacts.device, bounds=datamodule.bounds,
                                 progress=artifacts.progress)

        payload, _ = artifacts.constructed("datasets", spec, craft, what="perturbation dataset")
        metrics = {}
        if self.measure_transfer:
            metrics.update(self._transfer_metrics(source, attack, datamodule, artifacts, transfer_target(source_spec, arch)))
        metrics.update({"source/test/acc": float(source.metrics["test/acc"]), **self._dataset_metrics(payload, attack)})
        log.info("Perturbation dataset: %d examples, targeted success rate %.3f (source test acc %.3f)",
                 len(payload["y"]), payload["success_rate"], source.metrics["test/acc"])
        fit_datamodule = datamodule.with_train(payload["x"], payload["y"], tag=f"perturbation-{spec_key(spec)}",
                                               check_bounds=self.train_on != "delta")
        callbacks = [SourceAgreement(source.model)]
        if self.measure_train_acc:  # the clean training split, before it is replaced by the crafted one
            callbacks.append(NaturalTrainAccuracy(datamodule.x_train, datamodule.y_train, datamodule.eval_batch_size))
        return DerivedData(fit_datamodule, metrics, figures=lambda out_dir: self._figures(source.model, payload, datamodule, out_dir),
                           callbacks=callbacks)

    def _dataset_metrics(self, payload, attack) -> dict[str, float]:
        """perturb/*: success rate, norms of δ, weak_attack (1.0 / 0.0) and budget_bound; a warning naming the knobs."""
        # datasets cached before delta_linf_mean existed: the max bounds the mean from above
        linf = payload.get("delta_linf_mean", payload["delta_linf_max"])
        norm_mean = float(payload["delta_l2_mean"] if attack.norm == "l2" else linf)
        weak, budget, msg = weak_attack_check(attack, float(payload["success_rate"]), norm_mean)
        if weak:
            log.warning(msg)
        return {"perturb/success_rate": float(payload["success_rate"]), "perturb/delta_l2_mean": float(payload["delta_l2_mean"]),
                "perturb/delta_linf_max": float(payload["delta_linf_max"]), "perturb/weak_attack": float(weak),
                "perturb/budget_bound": float(budget), "perturb/delta_linf_mean": float(linf)}

    def _transfer_metrics(self, source: SourceModel, attack, datamodule, artifacts, target_spec) -> dict:
        from advlab.analysis.attack_transfer import adversarial_test_set, evaluate_transfer, evaluation_split, untargeted

        target, _, target_key = artifacts.model(target_spec, datamodule, name="transfer target model", where="derived.transfer_target")
        attack = untargeted(attack)
        if self.transfer_eps is not None:  # the crafting ε can be far too large to tell architectures apart
            attack.eps = self.transfer_eps
        x_adv, _ = adversarial_test_set(artifacts, source.model, source.key, attack, datamodule, batch_size=self.batch_size,
                                        images=self.transfer_images)
        x, y = evaluation_split(datamodule, self.transfer_images)
        metrics, _ = evaluate_transfer(source.model, target, x, x_adv, y, batch_size=self.batch_size, device=artifacts.device)
        metrics["transfer/same_model"] = float(target_key == source.key)
        metrics["transfer/eps"] = float(attack.eps)
        log.info("Transfer of the source's untargeted attack to a standard %s: fool rate %.3f",
                 target_spec.arch.get("_target_", "model"), metrics["transfer/fool_rate"])
        return metrics

    def _figures(self, source, payload, datamodule, out_dir: Path) -> dict[str, Path]:
        """plots/perturbation_dataset.png: base images and their crafted counterparts, with the source's predictions."""
        from advlab.report import plots

        names, k = datamodule.class_names, len(payload["preview_y"])
        base, x, t = payload["preview_base"], payload["x"][:k], payload["y"][:k]
        adv = base + x if self.train_on == "delta" else x
        device = next(source.parameters()).device
        with torch.no_grad():
            p_clean, p_adv = source(base.to(device)).argmax(1).cpu(), source(adv.to(device)).argmax(1).cpu()
        top = [f"y={names[int(y)]} f:{names[int(p)]}" for y, p in zip(payload["preview_y"], p_clean)]
        bottom = [f"t={names[int(a)]} f:{names[int(p)]}" for a, p in zip(t, p_adv)]
        path = plots.adversarial_grid(base, adv, top, bottom, Path(out_dir) / "plots" / "perturbation_dataset.png",
                                      title=f"Perturbation dataset ({self.target_rule}, base={self.base}): source predictions")
        return {"perturbation_dataset": path}


def transfer_target(source_spec, arch):
    """The spec of a standard model of the trained architecture `arch`, otherwise the source's."""
    if source_spec is None or arch is None:
        raise ConfigError("derived.measure_transfer", "needs the source's spec and the trained architecture")
    target = {k: v for k, v in OmegaConf.to_container(source_spec, resolve=True).items() if k not in ("arch", "attack")}
    method = target.get("method")
    own = {k: v for k, v in method.items() if k in ("label_smoothing", "channels_last")} if isinstance(method, dict) else {}
    target["method"] = {"_target_": "advlab.methods.StandardTraining", **own}
    return OmegaConf.create({**target, "arch": OmegaConf.to_container(arch, resolve=True)})
