"""What an advlab-eval analysis is: one object, built by Hydra from its `conf/analysis/<name>.yaml`
(`_target_` + its settings, at the config's top-level key `<name>`), selected by `analyses=[...]`.

    prepare(datamodule)                 pre-flight work that can fail on bad input (before any model loads)
    run(member, points) -> dict         one model member's results (kept per member, not in metrics.json)
    summarise(results, points) -> dict  mean ± SEM over a model's members: entries of metrics.json's models.<name>
    write(out_dir, per_member, summary, points, loggers) -> {plot: path}   CSV tables, plots, W&B tables
    headline(summary) -> [str]          parts of the model's line in the log

`results` / `per_member[model]` are the members' result dicts; `results[i][analysis.key]` is what
`run` returned for member i. An analysis may keep state between `run` calls (e.g. sample rows).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from advlab.utils.io import write_text


def analysis_names(cfg: DictConfig, conf_dir: Path) -> list[str]:
    """advlab-eval's analyses: the top-level nodes composed from `conf_dir`/analysis/<name>.yaml
    (eval.yaml's `analysis@<name>: <name>` defaults), in the config's order."""
    options = {p.stem for p in (Path(conf_dir) / "analysis").glob("*.yaml")}
    return [key for key in cfg if key in options and OmegaConf.is_dict(cfg[key]) and "_target_" in cfg[key]]


@dataclass
class Points:
    """The test points every analysis uses, and what runs on them."""

    x: Any                 # inputs (N, ...) of the evaluated points
    y: Any                 # their labels
    index: Any             # their indices in the test set
    predictions: dict      # id(model) -> its predictions on the whole test set
    summary: dict          # metrics.json's `points`
    datamodule: Any
    device: Any
    batch_size: int
    title: str             # of the plots: "<run name>: <dataset>"
    where: str             # which points, for the plots

    @property
    def n(self) -> int:
        return len(self.index)


class Analysis:
    """The protocol (see the module); `key` is the analysis' name in `analyses` and in metrics.json."""

    key: str = ""

    def prepare(self, datamodule) -> None:
        return None

    def run(self, member, points: Points) -> dict:
        raise NotImplementedError

    def summarise(self, results: list[dict], points: Points) -> dict:
        raise NotImplementedError

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        return {}

    def headline(self, summary: dict) -> list[str]:
        return []


def label(member) -> str:
    """A member's name in progress bars and warnings."""
    return f"{member.name} ({member.member})"


def stat(values) -> dict:
    """{"mean", "sem", "values"} of per-member scalars."""
    from advlab.analysis.summary import mean_sem

    mean, sem = mean_sem(values)
    return {"mean": float(mean), "sem": float(sem), "values": [float(v) for v in values]}


def curve_stat(rows, eps) -> dict:
    """{"eps", "mean", "sem", "values"} of per-member curves over an ε grid."""
    from advlab.analysis.summary import mean_sem

    mean, sem = mean_sem(rows)
    return {"eps": list(eps), "mean": mean.tolist(), "sem": sem.tolist(), "values": [list(r) for r in rows]}


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def safe_name(name: str) -> str:
    """A model name as a file name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
