"""The standard AutoAttack figure as its own evaluation, and the RobustBench leaderboard entry for it.

A leaderboard number is one standalone AutoAttack run at one ε: the clean-correct points, the
version's members in order, each on the points still robust, nothing else mixed in (robustness curves
keep their own, stronger worst case over losses, smaller ε and earlier attacks). ``robustbench.json``
holds the fields of RobustBench's ``model_info/<dataset>/<threat model>/<name>.json`` entries
(accuracies as percent strings, ε as ``k/255`` where it is one) plus the number of points and the version.
"""
from __future__ import annotations

import copy
from pathlib import Path

from advlab.utils.io import write_json

THREAT_MODELS = {"linf": "Linf", "l2": "L2", "l1": "L1"}
FILE = "robustbench.json"


def eps_text(eps: float) -> str:
    """``8/255`` when ε is a whole number of pixel levels, else the number."""
    levels = eps * 255
    return f"{round(levels)}/255" if eps > 0 and abs(levels - round(levels)) < 1e-6 else f"{eps:g}"


def dataset_name(datamodule) -> str:
    """``cifar10`` for a ``CIFAR10DataModule`` (RobustBench's dataset names are the lower-case ones)."""
    return type(datamodule).__name__.removesuffix("DataModule").lower()


def standalone_autoattack(model, attack, x, y, eps: float, device=None, batch_size: int = 256) -> dict:
    """Clean and AutoAttack robust accuracy of ``model`` on (x, y) at ``eps``: a fresh copy of
    ``attack`` (an ``AutoAttack``; its version, norm and seed), run on its own."""
    from advlab.attacks.accuracy import evaluate_attack

    aa = copy.deepcopy(attack)
    aa.eps = eps
    aa.reset_rng()
    out = evaluate_attack(model, aa, (x, y), device=device, batch_size=batch_size)
    return {"clean_acc": out["clean_acc"], "autoattack_acc": out["robust_acc"], "eps": float(eps), "norm": aa.norm,
            "n": int(out["n"]), "version": aa.version, "members": list(aa.attacks)}


def leaderboard_entry(result: dict, name: str, dataset: str, architecture: str = "") -> dict:
    """A RobustBench ``model_info`` entry for one standalone result (see ``standalone_autoattack``)."""
    return {
        "name": name, "link": "", "authors": "", "venue": "", "architecture": architecture,
        "additional_data": False, "number_forward_passes": 1, "dataset": dataset,
        "threat_model": THREAT_MODELS[result["norm"]], "eps": eps_text(result["eps"]),
        "clean_acc": f"{100 * result['clean_acc']:.2f}", "reported": "",
        "autoattack_acc": f"{100 * result['autoattack_acc']:.2f}",
        "n_examples": result["n"], "version": result["version"],
    }


def write_entries(out_dir: Path, entries: dict[str, dict]) -> Path:
    """``robustbench.json`` in the run directory: one entry, or {model name: entry} for several."""
    path = Path(out_dir) / FILE
    write_json(path, next(iter(entries.values())) if len(entries) == 1 else entries)
    return path


def write_test_entry(out_dir: Path, metrics: dict, attack, n: int, name: str, dataset: str) -> Path | None:
    """advlab-train with ``attack@eval_attack=autoattack``: ``test/adv_acc`` is a standalone AutoAttack
    run on the test set; record it as ``test/autoattack_acc`` and write its ``robustbench.json``."""
    from advlab.attacks import AutoAttack

    if not isinstance(attack, AutoAttack) or "test/adv_acc" not in metrics:
        return None
    metrics["test/autoattack_acc"] = metrics["test/adv_acc"]
    result = {"clean_acc": metrics["test/acc"], "autoattack_acc": metrics["test/adv_acc"], "eps": attack.eps,
              "norm": attack.norm, "n": n, "version": attack.version}
    return write_entries(out_dir, {name: leaderboard_entry(result, name, dataset)})
