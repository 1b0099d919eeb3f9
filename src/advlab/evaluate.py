"""advlab-eval: measure trained models the way Goodfellow et al. (2015) and Paknezhad et al. (2022) do.

    advlab-eval                                       # standard vs PGD-AT on digits
    advlab-eval experiment=paknezhad_digits           # standard / adversarial / sparsity, 3 seeds
    advlab-eval models=null checkpoints=[<advlab-train run dir>]

Models: named specs trained once per seed (then cached) and/or advlab-train checkpoints. Analyses,
all on the same test points: robust accuracy against ε (FGSM / PGD, L∞ / L2) with mean ± SEM over
seeds, DeepFool minimal perturbations (ρ), softmax statistics off the data support, and the logits
along the FGSM direction with a linearity score; optionally (``masking``) the gradient-masking checks. Writes metrics.json, CSV tables and plots to the
run directory and logs them to W&B (offline by default).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from advlab.cli import run_hydra_app
from advlab.config import CONF_DIR, validate
from advlab.utils.io import write_json, write_text
from advlab.utils.run import data_and_cache, finish_loggers, start_loggers, wandb_logger
from advlab.utils.wrapper import task_wrapper

# torch, Lightning and the analyses are imported inside the task, so that bad input is reported at once.

log = logging.getLogger("advlab.evaluate")


def _stat(values) -> dict:
    """{"mean", "sem", "values"} of per-member scalars."""
    from advlab.analysis.summary import mean_sem

    mean, sem = mean_sem(values)
    return {"mean": float(mean), "sem": float(sem), "values": [float(v) for v in values]}


def _curve_stat(rows, eps) -> dict:
    from advlab.analysis.summary import mean_sem

    mean, sem = mean_sem(rows)
    return {"eps": list(eps), "mean": mean.tolist(), "sem": sem.tolist(), "values": [list(r) for r in rows]}


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _flatten(tree, prefix: str = "") -> dict[str, float]:
    """Scalars of a nested summary as "a/b/c" keys (for W&B and the CSV logger); lists are left out."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


@task_wrapper
def evaluate(cfg: DictConfig) -> float | None:
    started = time.time()
    validate(cfg)
    import torch

    from advlab.analysis import deepfool as deepfool_analysis
    from advlab.analysis import linearity as linearity_analysis
    from advlab.analysis import off_support as off_support_analysis
    from advlab.analysis import robustness as robustness_analysis
    from advlab.artifacts import Artifacts
    from advlab.attacks import DeepFool
    from advlab.model_sources import check_checkpoints, load_models, resolve_entries, validate_specs
    from advlab.report import analysis_plots

    out_dir = Path(cfg.paths.output_dir)
    analyses = list(cfg.analyses)
    # Everything that can be checked is checked before any work: data, cache, models, attacks.
    datamodule, cache, bounds = data_and_cache(cfg)
    attacks = {name: instantiate(cfg.robustness.attacks[name], bounds=bounds) for name in cfg.robustness.run}
    eps_grids = {norm: [float(e) for e in cfg.robustness.eps[norm]] for norm in ("linf", "l2")}
    deepfools = {norm: DeepFool(norm=norm, steps=cfg.deepfool.steps, overshoot=cfg.deepfool.overshoot, candidates=cfg.deepfool.candidates,
                                refine_steps=cfg.deepfool.refine_steps, bounds=bounds) for norm in cfg.deepfool.norms}
    entries = resolve_entries(cfg)
    run_datamodules = check_checkpoints(entries, cfg, datamodule)
    artifacts = Artifacts(cache, accelerator=cfg.get("accelerator"))
    validate_specs(entries, artifacts, datamodule)
    foreign = None
    if "off_support" in analyses and cfg.off_support.get("dataset") is not None:
        foreign_dm = instantiate(cfg.off_support.dataset)
        foreign_dm.check()
        foreign_dm.setup()
        foreign = (foreign_dm.name, off_support_analysis.match_shape(foreign_dm.x_test, datamodule.input_shape))

    loggers = start_loggers(cfg, out_dir)

    models = load_models(entries, artifacts, datamodule, run_datamodules)
    device = artifacts.device
    batch = int(cfg.batch_size)
    names = list(dict.fromkeys(m.name for m in models))

    predictions, correct, index, points = _test_points(cfg, models, datamodule, batch, device)
    x, y = datamodule.x_test[index], datamodule.y_test[index]
    log.info("Evaluating %d models (%s) on %d test points (%s)", len(models), ", ".join(names), len(index), cfg.points)

    per_member: dict[str, list[dict]] = {name: [] for name in names}
    noise_gen = torch.Generator().manual_seed(int(cfg.seed))
    noise = {kind: off_support_analysis.noise_inputs(kind, int(cfg.off_support.n), datamodule.x_train, datamodule.bounds, noise_gen)
             for kind in cfg.off_support.kinds} if "off_support" in analyses else {}
    if foreign is not None:
        noise[foreign[0]] = foreign[1][: int(cfg.off_support.n)]
    deepfool_rows, linearity_examples = [], {}
    for m in models:
        label = f"{m.name} ({m.member})"
        res: dict = {"member": m.member, "clean_acc": float(correct[id(m)].float().mean()), "info": m.info,
                     "points_acc": float(correct[id(m)][index].float().mean())}
        if "robustness" in analyses:
            curves = robustness_analysis.robustness_curves(
                m.model, attacks, eps_grids, x, y, losses=list(cfg.robustness.losses), cumulative=bool(cfg.robustness.cumulative),
                diagnostics=cfg.robustness.get("diagnostics", False), batch_size=batch, device=device, desc=label)
            res["robustness"] = {name: {"norm": c["norm"], "eps": c["eps"], "acc": robustness_analysis.accuracy(c["robust"]),
                                        "alone": None if c["alone"] is None else robustness_analysis.accuracy(c["alone"]),
                                        "by_loss": {loss: robustness_analysis.accuracy(mask) for loss, mask in c["by_loss"].items()},
                                        "attacked": c["attacked"], "attacked_all": c["attacked_all"]}
                                 for name, c in curves.items()}
        if "deepfool" in analyses:
            pred = predictions[id(m)][index]  # the distance to the model's own decision boundary
            res["deepfool"] = {}
            for norm, attack in deepfools.items():
                d = deepfool_analysis.deepfool_summary(m.model, x, pred, attack, batch_size=batch, device=device, desc=label)
                res["deepfool"][norm] = {k: d[k] for k in ("rho", "success_rate", "r_mean", "r_median")}
                res["deepfool"][norm]["r"] = d["r"][d["success"]].tolist()
                deepfool_rows += [[m.name, m.member, norm, int(i), float(r), float(xn), bool(s)]
                                  for i, r, xn, s in zip(index.tolist(), d["r"], d["x_norm"], d["success"])]
        if "off_support" in analyses:
            res["off_support"] = {"test": off_support_analysis.softmax_statistics(m.model, x, device=device)}
            for kind, inputs in noise.items():
                res["off_support"][kind] = off_support_analysis.softmax_statistics(m.model, inputs, device=device)
        if "linearity" in analyses:
            n_lin = min(int(cfg.linearity.n), len(x))
            lin = linearity_analysis.linearity(m.model, x[:n_lin], y[:n_lin], eps_max=float(cfg.linearity.eps_max),
                                               points=int(cfg.linearity.points), loss=str(cfg.linearity.loss), device=device)
            r2 = lin["r2"][~lin["r2"].isnan()]
            res["linearity"] = {"r2_mean": float(r2.mean()) if len(r2) else math.nan,
                                "r2_median": float(r2.median()) if len(r2) else math.nan,
                                "r2_min": float(r2.min()) if len(r2) else math.nan,
                                "zero_direction": float(lin["zero_direction"].float().mean())}
            if m.name not in linearity_examples:  # the plot shows the first member of each model
                k = int(cfg.linearity.examples)
                linearity_examples[m.name] = (lin["eps"], lin["logits"][:k], y[:k], lin["r2"][:k], m.member)
        if "masking" in analyses:
            res["masking"] = _masking(m.model, x, y, cfg.masking, bounds, device, int(cfg.seed), label)
        per_member[m.name].append(res)

    summary = _summarise(per_member, analyses)
    if cfg.get("robustbench_eps") is not None:
        _robustbench(summary, per_member, attacks, float(cfg.robustbench_eps), points["n"])
    images = _write_outputs(out_dir, cfg, summary, per_member, deepfool_rows, linearity_examples, datamodule, points, analysis_plots)
    metrics = {"points": points, "models": summary, "time/total_s": round(time.time() - started, 2)}
    write_json(out_dir / "metrics.json", metrics)
    flat = _flatten({"points": points, **summary})
    flat["time/total_s"] = metrics["time/total_s"]
    _log_robustness(loggers, per_member)
    finish_loggers(loggers, flat, images)
    _log_table(summary, points)
    log.info("Run directory: %s", out_dir)
    return None


def _robustbench(summary: dict, per_member: dict, attacks: dict, eps: float, n: int) -> None:
    """RobustBench-style line per model (clean and AutoAttack robust accuracy at `eps` on the evaluated
    points), logged and kept as the model's `robustbench` entry."""
    from advlab.attacks import AutoAttack

    name = next((a for a, attack in attacks.items() if isinstance(attack, AutoAttack)), None)
    if name is None:
        return
    for model, results in per_member.items():
        curve = summary[model]["robustness"][name]
        i = curve["eps"].index(eps)  # on the grid: checked in the pre-flight
        clean = sum(r["points_acc"] for r in results) / len(results)
        entry = {"clean": clean, "autoattack": curve["mean"][i], "eps": curve["eps"][i], "norm": curve["norm"], "n": n, "attack": name}
        summary[model]["robustbench"] = entry
        log.info("model %s: clean %.3f, AutoAttack robust %.3f (%s eps=%g, n=%d)", model, clean, entry["autoattack"],
                 "Linf" if entry["norm"] == "linf" else "L2", entry["eps"], n)


def _masking(model, x, y, mcfg, bounds, device, seed: int, label: str) -> dict:
    """Gradient-masking checks on the first ``masking.n`` points; a warning line when one trips."""
    from advlab.analysis.masking import masking_checks, masking_warning

    n = min(int(mcfg.n), len(x))
    checks = masking_checks(model, x[:n].to(device), y[:n].to(device), float(mcfg.eps), str(mcfg.norm),
                            steps=int(mcfg.steps), n_target_classes=int(mcfg.n_target_classes), queries=int(mcfg.queries),
                            large_eps=mcfg.large_eps, bounds=bounds, seed=seed)
    warning = masking_warning(checks)
    if warning:
        log.warning("%s: %s", label, warning)
    return checks


def _test_points(cfg: DictConfig, models: list, datamodule, batch: int, device):
    """The test points every analysis uses: (predictions and correctness per model, their index, a summary)."""
    import torch

    from advlab.models.base import predict

    x_test, y_test = datamodule.x_test, datamodule.y_test
    predictions = {id(m): predict(m.model, x_test, batch, device) for m in models}
    correct = {key: pred == y_test for key, pred in predictions.items()}
    common = torch.stack(list(correct.values())).all(dim=0)
    index = common.nonzero().squeeze(1) if cfg.points == "common_correct" else torch.arange(len(y_test))
    if cfg.get("max_points"):
        index = index[: int(cfg.max_points)]
    if len(index) == 0:
        raise RuntimeError("no test point is classified correctly by every model: points=common_correct leaves nothing to evaluate")
    points = {"mode": str(cfg.points), "n": len(index), "n_test": len(y_test), "n_common_correct": int(common.sum())}
    return predictions, correct, index, points


def _log_robustness(loggers, per_member: dict) -> None:
    """The robustness table to W&B, and its curves as native line charts."""
    from advlab.report.wandb_charts import robustness_charts

    wb = wandb_logger(loggers)
    rows = _robustness_rows(per_member)
    if wb is not None and rows:
        wb.log_table(key="robustness", columns=_ROBUSTNESS_HEADER, data=rows)
        wb.experiment.log(robustness_charts(_ROBUSTNESS_HEADER, rows))


def _summarise(per_member: dict, analyses: list[str]) -> dict:
    """Mean ± SEM over the members (seeds / runs) of each model."""
    summary = {}
    for name, results in per_member.items():
        s: dict = {"members": [r["member"] for r in results], "clean_acc": _stat([r["clean_acc"] for r in results]),
                   "sources": [r["info"]["source"] for r in results]}
        if "robustness" in analyses:
            s["robustness"] = {}
            for attack, first in results[0]["robustness"].items():
                entry = _curve_stat([r["robustness"][attack]["acc"] for r in results], first["eps"])
                entry["norm"] = first["norm"]
                alone = [r["robustness"][attack]["alone"] for r in results]  # None: not exact (robustness.diagnostics)
                entry["alone_mean"] = None if None in alone else _curve_stat(alone, first["eps"])["mean"]
                entry["by_loss_mean"] = {loss: _curve_stat([r["robustness"][attack]["by_loss"][loss] for r in results], first["eps"])["mean"]
                                         for loss in first["by_loss"]}
                # attack calls per point (over ε and losses): robust-only vs attacking every point
                entry["attacked"] = _stat([r["robustness"][attack]["attacked"] for r in results])
                entry["attacked_all"] = _stat([r["robustness"][attack]["attacked_all"] for r in results])
                s["robustness"][attack] = entry
        if "deepfool" in analyses:
            s["deepfool"] = {norm: {k: _stat([r["deepfool"][norm][k] for r in results]) for k in ("rho", "success_rate", "r_mean", "r_median")}
                             for norm in results[0]["deepfool"]}
        if "off_support" in analyses:
            s["off_support"] = {kind: {k: _stat([r["off_support"][kind][k] for r in results]) for k in ("max_softmax", "entropy", "entropy_ratio")}
                                for kind in results[0]["off_support"]}
        if "linearity" in analyses:
            s["linearity"] = {k: _stat([r["linearity"][k] for r in results]) for k in ("r2_mean", "r2_median", "r2_min", "zero_direction")}
        if "masking" in analyses:  # booleans: the fraction of members that trip the check
            s["masking"] = {k: _stat([float(r["masking"][k]) for r in results]) for k in results[0]["masking"]}
        summary[name] = s
    return summary


_ROBUSTNESS_HEADER = ["model", "member", "attack", "norm", "eps", "robust_acc", "attack_alone_acc", "ce_acc", "margin_acc"]


def _robustness_rows(per_member: dict) -> list[list]:
    rows = []
    for name, results in per_member.items():
        for r in results:
            for attack, c in r.get("robustness", {}).items():
                for i, eps in enumerate(c["eps"]):
                    rows.append([name, r["member"], attack, c["norm"], eps, c["acc"][i], (c["alone"] or [None] * len(c["eps"]))[i],
                                 c["by_loss"].get("ce", [None] * len(c["eps"]))[i], c["by_loss"].get("margin", [None] * len(c["eps"]))[i]])
    return rows


def _write_outputs(out_dir: Path, cfg, summary, per_member, deepfool_rows, linearity_examples, datamodule, points, plots) -> dict:
    """CSV tables and plots; returns {plot name: path} for W&B."""
    images = {}
    title = f"{cfg.run_name}: {datamodule.name}"
    where = "test points every model classifies correctly" if cfg.points == "common_correct" else "all test points"
    where += f" (n={points['n']})"
    if any("robustness" in s for s in summary.values()):
        _csv(out_dir / "robustness.csv", _ROBUSTNESS_HEADER, _robustness_rows(per_member))
        rows = []
        for name, s in summary.items():
            for attack, c in s["robustness"].items():
                rows += [[name, attack, c["norm"], e, m, se, len(s["members"])] for e, m, se in zip(c["eps"], c["mean"], c["sem"])]
        _csv(out_dir / "robustness_summary.csv", ["model", "attack", "norm", "eps", "mean", "sem", "n_members"], rows)
        curves = {name: {a: {**c, "n": len(s["members"])} for a, c in s["robustness"].items()} for name, s in summary.items()}
        images["robustness"] = plots.robustness_curves(curves, out_dir / "plots" / "robustness.png", title=title, points=where)
    if any("deepfool" in s for s in summary.values()):
        _csv(out_dir / "deepfool_samples.csv", ["model", "member", "norm", "test_index", "r", "x_norm", "success"], deepfool_rows)
        rows = [[name, r["member"], norm, d["rho"], d["success_rate"], d["r_mean"], d["r_median"]]
                for name, results in per_member.items() for r in results for norm, d in r["deepfool"].items()]
        _csv(out_dir / "deepfool.csv", ["model", "member", "norm", "rho", "success_rate", "r_mean", "r_median"], rows)
        norms = {}
        for name, results in per_member.items():
            for norm in results[0]["deepfool"]:
                pooled = [v for r in results for v in r["deepfool"][norm]["r"]]
                rho = summary[name]["deepfool"][norm]["rho"]
                norms.setdefault(norm, {})[name] = (pooled, rho["mean"], rho["sem"])
        images["deepfool"] = plots.deepfool_norms(norms, out_dir / "plots" / "deepfool.png", title=f"{title}: DeepFool on {where}")
    if any("off_support" in s for s in summary.values()):
        rows = [[name, r["member"], kind, st["max_softmax"], st["entropy"], st["entropy_ratio"], *st["mean_softmax"]]
                for name, results in per_member.items() for r in results for kind, st in r["off_support"].items()]
        classes = datamodule.class_names
        _csv(out_dir / "off_support.csv", ["model", "member", "inputs", "max_softmax", "entropy", "entropy_ratio",
                                           *[f"p_{c}" for c in classes]], rows)
        stats = {name: {kind: {k: (v["mean"], v["sem"]) for k, v in st.items()} for kind, st in s["off_support"].items()}
                 for name, s in summary.items()}
        images["off_support"] = plots.off_support_bars(stats, out_dir / "plots" / "off_support.png", title=f"{title}: softmax on and off the data")
    if any("masking" in s for s in summary.values()):
        keys = list(next(r for results in per_member.values() for r in results)["masking"])
        rows = [[name, r["member"], *[r["masking"][k] for k in keys]] for name, results in per_member.items() for r in results]
        _csv(out_dir / "masking.csv", ["model", "member", *keys], rows)
    if linearity_examples:
        rows = [[name, r["member"], *[r["linearity"][k] for k in ("r2_mean", "r2_median", "r2_min", "zero_direction")]]
                for name, results in per_member.items() for r in results]
        _csv(out_dir / "linearity.csv", ["model", "member", "r2_mean", "r2_median", "r2_min", "zero_direction"], rows)
        for name, (eps, logits, labels, r2, member) in linearity_examples.items():
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            images[f"linearity_{safe}"] = plots.logit_lines(
                eps, logits, labels, r2, out_dir / "plots" / f"linearity_{safe}.png", class_names=datamodule.class_names,
                title=f"{name} ({member}): logits along the FGSM direction; mean R² = {summary[name]['linearity']['r2_mean']['mean']:.3f}")
    return images


def _log_table(summary: dict, points: dict) -> None:
    """The headline numbers in the log: clean accuracy, robust accuracy at the middle ε, ρ."""
    for name, s in summary.items():
        parts = [f"clean {s['clean_acc']['mean']:.3f}±{s['clean_acc']['sem']:.3f}"]
        for attack, c in s.get("robustness", {}).items():
            i = len(c["eps"]) // 2
            parts.append(f"{attack}@{c['eps'][i]:g} {c['mean'][i]:.3f}±{c['sem'][i]:.3f}")
        for norm, d in s.get("deepfool", {}).items():
            parts.append(f"ρ_{norm} {d['rho']['mean']:.3f}±{d['rho']['sem']:.3f} (success {d['success_rate']['mean']:.3f})")
        if "linearity" in s:
            parts.append(f"linearity R² {s['linearity']['r2_mean']['mean']:.3f}")
        if "masking" in s:
            from advlab.analysis.masking import CHECKS

            tripped = [c for c in CHECKS if s["masking"][f"checks/{c}"]["mean"] > 0]
            parts.append(f"masking checks: {', '.join(tripped) if tripped else 'none tripped'}")
        log.info("%s [%d members, %d points]: %s", name, len(s["members"]), points["n"], ", ".join(parts))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig):
    return evaluate(cfg)


def main() -> None:
    run_hydra_app(_hydra_main, "advlab-eval", "eval")


if __name__ == "__main__":
    main()
