"""The tables and figures of a Hydra multirun: `write_report` (the advlab-report app, advlab.apps.report,
says what it writes; Hydra also runs it at a sweep's end)."""
from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from advlab.report.best_of import best_of_table
from advlab.report.sweep import Sweep, axis_of, cells, display_key, is_number, load_sweep, mean_std
from advlab.utils.io import check_writable, write_text

log = logging.getLogger(__name__)

# What a matrix shows, per task; only metrics that some job reported are used.
MATRIX_METRICS = {
    "transfer": ["transfer/target_acc", "transfer/fool_rate", "source/adv_acc"],
    "train": ["test/acc", "test/agreement", "test/adv_acc", "transfer/fool_rate"],
}
MATRIX_FILE = {"transfer": "transfer_matrix", "train": "perturbation_matrix"}
SUMMARY_HINTS = ("acc", "fool_rate", "agreement", "success_rate")


@dataclass
class Report:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    failed: list = field(default_factory=list)
    n_jobs: int = 0
    wandb_dir: Path | None = None
    swept: list[str] = field(default_factory=list)

    def failures(self) -> str:
        """One line naming every failed or missing job by its swept values."""
        return f"{len(self.failed)} of {self.n_jobs} jobs failed or are missing: " + "; ".join(
            f"job {j.num} ({j.label(self.swept) or ' '.join(j.overrides)}): {j.error}" for j in self.failed)


def _fmt(mean: float, std: float, n: int, expected: int) -> str:
    if math.isnan(mean):
        return "—"
    text = f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")
    return text + (f" (n={n}/{expected})" if n != expected else "")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    write_text(path, buffer.getvalue())
    return path


def _metric_names(sweep: Sweep) -> list[str]:
    names = {k for j in sweep.jobs if j.status == "ok" for k, v in j.metrics.items() if isinstance(v, (int, float))}
    return sorted(names)


def _order(values: list[str], sweep: Sweep, axis: str) -> list[str]:
    """Rows / columns in the order the sweep lists them (not alphabetical)."""
    keys = [k for k in sweep.varying if axis_of(k) == axis]
    if len(keys) == 1:
        ranked = sweep.varying[keys[0]]
        return sorted(values, key=lambda v: ranked.index(v) if v in ranked else len(ranked))
    return sorted(values)


def matrix_tables(sweep: Sweep, out_dir: Path, plots: dict) -> tuple[list[str], list[list], list[str]]:
    """The source × target matrices: (CSV header, CSV rows, Markdown lines); heatmaps into `plots`."""
    from advlab.report import plots as figures

    present = set(_metric_names(sweep))
    metrics = [m for m in MATRIX_METRICS.get(sweep.task_name, MATRIX_METRICS["train"]) if m in present]
    row_keys = [display_key(k) for k in sweep.varying if axis_of(k) == "row"]
    col_keys = [display_key(k) for k in sweep.varying if axis_of(k) == "col"]
    if not metrics or not (row_keys or col_keys):
        return [], [], []
    row_name, col_name = "/".join(row_keys) or "source", "/".join(col_keys) or "target"
    all_cells = cells(sweep, metrics)
    header = ["panel", "source", "target", "metric", "mean", "std", "n", "expected"]
    csv_rows, md = [], []
    for metric in metrics:
        for panel in dict.fromkeys(c.panel for c in all_cells):
            mine = {(c.row, c.col): c for c in all_cells if c.metric == metric and c.panel == panel}
            rows = _order(list(dict.fromkeys(r for r, _ in mine)), sweep, "row")
            cols = _order(list(dict.fromkeys(c for _, c in mine)), sweep, "col")
            title = metric + (f" [{panel}]" if panel else "")
            md += [f"### {title}", "", f"rows: {row_name}, columns: {col_name}; mean ± std over seeds", "",
                   "| " + row_name + " \\ " + col_name + " | " + " | ".join(cols) + " |",
                   "|---" * (len(cols) + 1) + "|"]
            grid_mean, grid_std = [], []
            for r in rows:
                line = []
                grid_mean.append([]), grid_std.append([])
                for c in cols:
                    cell = mine.get((r, c))
                    mean, std = (cell.mean, cell.std) if cell else (float("nan"), float("nan"))
                    grid_mean[-1].append(mean), grid_std[-1].append(std)
                    if cell:
                        csv_rows.append([panel, r, c, metric, mean, std, len(cell.values), cell.expected])
                        line.append(_fmt(mean, std, len(cell.values), cell.expected))
                    else:
                        line.append("—")
                md.append(f"| {r} | " + " | ".join(line) + " |")
            md.append("")
            slug = metric.replace("/", "_") + (("_" + "".join(ch if ch.isalnum() else "_" for ch in panel)) if panel else "")
            plots[f"heatmap_{slug}"] = figures.heatmap(
                grid_mean, grid_std, rows, cols, out_dir / f"heatmap_{slug}.png", title=f"{sweep.task_name}: {title}",
                row_label=row_name, col_label=col_name, value_label=metric)
            md += [f"![{title}](heatmap_{slug}.png)", ""]
    return header, csv_rows, md


def ilyas_scatter(sweep: Sweep, out_dir: Path, plots: dict) -> list[str]:
    """Perturbation-learning sweeps with `derived.measure_transfer=true`: per (source, architecture),
    how well the source's attack transfers to the architecture against what perturbation learning
    reaches on it (Ilyas et al. Fig. 3)."""
    from advlab.report import plots as figures

    if sweep.task_name != "train":
        return []
    present = set(_metric_names(sweep))
    if "perturb/success_rate" not in present:
        return []
    if "transfer/fool_rate" not in present:
        return ["_No scatter: the jobs did not measure transfer (run with `derived.measure_transfer=true`)._", ""]
    by_pair = {}
    for c in cells(sweep, ["transfer/fool_rate", "test/acc"]):
        by_pair.setdefault((c.panel, c.row, c.col), {})[c.metric] = c
    points = []
    for (panel, row, col), pair in by_pair.items():
        x, y = pair["transfer/fool_rate"], pair["test/acc"]
        if x.values and y.values:
            points.append({"source": row + (f" [{panel}]" if panel else ""), "target": col, "x": x.mean, "y": y.mean,
                           "x_err": x.std, "y_err": y.std})
    if not points:
        return []
    r = pearson([p["x"] for p in points], [p["y"] for p in points])
    plots["ilyas_scatter"] = figures.transfer_scatter(
        points, out_dir / "ilyas_scatter.png", title=f"Perturbation learning vs attack transfer (Pearson r = {r:.2f})",
        x_label="transfer rate of the source's attack (fool rate on a standard model)",
        y_label="perturbation-learning test accuracy")
    lines = ["## Transfer rate vs perturbation-learning accuracy (Ilyas et al. Fig. 3)", "",
             "| source | architecture | transfer fool rate | test/acc |", "|---|---|---|---|"]
    lines += [f"| {p['source']} | {p['target']} | {_fmt(p['x'], p['x_err'], 0, 0)} | {_fmt(p['y'], p['y_err'], 0, 0)} |" for p in points]
    return lines + ["", f"Pearson correlation over the {len(points)} pairs: r = {r:.3f}", "", "![scatter](ilyas_scatter.png)", ""]


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation (NaN when either side is constant or there are fewer than 2 points)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def summary_table(sweep: Sweep) -> tuple[list[str], list[list], list[str]]:
    """Mean ± std over seeds of every metric, per configuration (all swept keys but the seed)."""
    keys = [k for k in sweep.varying if axis_of(k) != "seed"]
    metrics = _metric_names(sweep)
    groups: dict[str, list] = {}
    for job in sweep.jobs:
        groups.setdefault(job.label(keys) or "all jobs", []).append(job)
    header = ["configuration", "metric", "mean", "std", "n", "expected"]
    rows = []
    shown = [m for m in metrics if any(h in m for h in SUMMARY_HINTS)]
    md = ["## Summary (mean ± std over seeds)", "", "| configuration | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for label, jobs in groups.items():
        line = []
        for metric in metrics:
            values = [j.metrics[metric] for j in jobs if j.status == "ok" and is_number(j.metrics.get(metric))]
            mean, std = mean_std(values)
            rows.append([label, metric, mean, std, len(values), len(jobs)])
            if metric in shown:
                line.append(_fmt(mean, std, len(values), len(jobs)))
        md.append(f"| {label} | " + " | ".join(line) + " |")
    return header, rows, md + [""]


def _job_rows(sweep: Sweep) -> tuple[list[str], list[list]]:
    metrics = _metric_names(sweep)
    header = ["job", "status", "overrides", "error", *metrics]
    rows = [[j.num, j.status, " ".join(j.overrides), j.error or "", *[j.metrics.get(m, float("nan")) for m in metrics]] for j in sweep.jobs]
    return header, rows


def _job_config(sweep: Sweep) -> dict:
    """The resolved config of the first job that has one (for the W&B project, group, mode)."""
    for job in sweep.jobs:
        if job.dir is not None and (job.dir / "config_resolved.yaml").is_file():
            return OmegaConf.to_container(OmegaConf.load(job.dir / "config_resolved.yaml"))
    return {}


def log_to_wandb(sweep: Sweep, report: Report, tables: dict[str, tuple[list[str], list[list]]], mode: str) -> Path | None:
    """One W&B run, job type `report`, in the sweep's group: tables, figures and the CSV files."""
    cfg = _job_config(sweep)
    wb_cfg = (cfg.get("logger") or {}).get("wandb")
    if mode == "off" or (mode == "auto" and not wb_cfg):
        return None
    import wandb

    wb_cfg = wb_cfg or {}
    offline = (cfg.get("logger") or {}).get("offline", True) if mode == "auto" else mode == "offline"
    group = wb_cfg.get("group") or f"{sweep.task_name}-{sweep.dir.parent.name}_{sweep.dir.name}"
    run = wandb.init(project=wb_cfg.get("project", "advlab"), entity=wb_cfg.get("entity"), group=group, job_type="report",
                     name=f"report-{sweep.dir.parent.name}_{sweep.dir.name}", dir=str(report.out_dir),
                     mode="offline" if offline else "online", reinit="create_new",
                     config={"sweep_dir": str(sweep.dir), "task_name": sweep.task_name, "jobs": len(sweep.jobs),
                             "swept": {display_key(k): v for k, v in sweep.varying.items()}})
    try:
        from advlab.report.wandb_charts import matrix_charts

        for name, (header, rows) in tables.items():
            # None, W&B's missing value: "" in a numeric column (a cell whose jobs all failed) makes wandb.Table raise
            run.log({name: wandb.Table(columns=header, data=[[(None if isinstance(v, float) and math.isnan(v) else v) for v in r] for r in rows])})
            if "panel" in header and "source" in header:
                run.log(matrix_charts(header, rows))
        for name, path in report.files.items():
            if path.suffix == ".png":
                run.log({f"plots/{name}": wandb.Image(str(path))})
            elif path.suffix in (".csv", ".md"):
                run.save(str(path), base_path=str(report.out_dir), policy="now")
        run.summary.update({"jobs/total": len(sweep.jobs), "jobs/failed": len(sweep.failed)})
        run_dir = Path(run.dir).parent
    finally:
        run.finish(exit_code=1 if sweep.failed else 0)
    return run_dir


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None, wandb_mode: str = "auto") -> Report:
    sweep = load_sweep(sweep_dir)
    out = Path(out_dir) if out_dir else sweep.dir / "report"
    # before any file is written: a read-only or full --out is one line (write_text names a later failure)
    check_writable(out, "--out" if out_dir else "sweep_dir", advice="pass a writable --out directory")
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, failed=sweep.failed, n_jobs=len(sweep.jobs), swept=list(sweep.varying))
    plots: dict[str, Path] = {}
    ok = len(sweep.jobs) - len(sweep.failed)
    md = [f"# {sweep.task_name} sweep report", "", f"Sweep: `{sweep.dir}`  ", f"Jobs: {ok} of {len(sweep.jobs)} finished"
          + (f", **{len(sweep.failed)} failed or missing**" if sweep.failed else ""), "",
          "Swept: " + (", ".join(f"`{display_key(k)}` ∈ {{{', '.join(v)}}}" for k, v in sweep.varying.items()) or "nothing"), ""]
    tables: dict[str, tuple[list[str], list[list]]] = {}
    header, rows, lines = matrix_tables(sweep, out, plots)
    if rows:
        name = MATRIX_FILE.get(sweep.task_name, "matrix")
        report.files[name] = _write_csv(out / f"{name}.csv", header, rows)
        tables[name] = (header, rows)
        md += [f"## {name.replace('_', ' ').capitalize()}", ""] + lines
    md += ilyas_scatter(sweep, out, plots)
    b_header, b_rows, b_md = best_of_table(sweep, [m for m in _metric_names(sweep) if any(h in m for h in SUMMARY_HINTS)])
    if b_rows:  # the sweep names the keys to take the best over (`report_best_of`)
        report.files["best_of"] = _write_csv(out / "best_of.csv", b_header, b_rows)
        tables["best_of"] = (b_header, b_rows)
        md += b_md
    s_header, s_rows, s_md = summary_table(sweep)
    report.files["summary"] = _write_csv(out / "summary.csv", s_header, s_rows)
    tables["summary"] = (s_header, s_rows)
    md += s_md
    j_header, j_rows = _job_rows(sweep)
    report.files["jobs"] = _write_csv(out / "jobs.csv", j_header, j_rows)
    tables["jobs"] = (j_header, j_rows)
    if sweep.failed:
        md += ["## Failed or missing jobs", "", "| job | status | swept values | error |", "|---|---|---|---|"]
        md += [f"| {j.num} | {j.status} | `{j.label(sweep.varying)}` | {j.error} |" for j in sweep.failed]
        md.append("")
    report.files.update(plots)
    write_text(out / "report.md", "\n".join(md) + "\n")
    report.files["report"] = out / "report.md"
    report.wandb_dir = log_to_wandb(sweep, report, tables, wandb_mode)
    log.info("Sweep report (%d of %d jobs finished): %s", ok, len(sweep.jobs), out / "report.md")
    for job in sweep.failed:
        log.warning("Job %d %s: %s (%s)", job.num, job.status, job.error, job.label(sweep.varying))
    return report
