"""The reproduction table: each seed paper's headline numbers next to advlab's, from finished runs.

The claims (paper value, where the paper states it, the advlab command that reproduces it, the
metric of that run's `metrics.json`, the deviations that remain) live in one YAML file,
`docs/reproductions.yaml`. `advlab-report --reproductions docs/reproductions.yaml <dirs>` finds, under
the given directories, the newest finished run of each claim's command and writes the Markdown
table (`docs/REPRODUCTIONS.md` by default), so the table is refreshed by re-running the commands.

A run matches a claim when it was started by the claim's app with exactly the claim's overrides
(a multirun job: the command's overrides with its swept values replaced by the claim's `job`).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from advlab.errors import ConfigError

APPS = {"train": "advlab-train", "eval": "advlab-eval", "transfer": "advlab-transfer", "probe": "advlab-probe"}
CLAIM_KEYS = {"claim", "paper", "where", "command", "metric"}
UNITS = ("fraction", "percent", "bits", "ratio")


@dataclass
class Claim:
    """One headline number: `paper` as published (`where`: section / table / figure), reproduced by
    `command` (one job of it: `job`), read from `metric` (a key of metrics.json, or a list of keys
    into its nested dicts), shown in `unit`; with `baseline` (another metric of the same run), the
    difference metric − baseline (a pattern such as "AT more robust than standard"); `note`: how the
    numbers compare."""

    claim: str
    paper: str
    where: str
    command: str
    metric: str | list[str | int]
    unit: str = "fraction"
    job: list[str] = field(default_factory=list)
    baseline: str | list[str | int] | None = None
    note: str = ""

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ConfigError("unit", f"{self.unit!r} is not a unit; allowed: {', '.join(UNITS)}")
        app, *_ = shlex.split(self.command) or [""]
        if app not in APPS.values():
            raise ConfigError("command", f"{self.command!r} does not start with an app; allowed: {', '.join(APPS.values())}")

    @property
    def app(self) -> str:
        return shlex.split(self.command)[0]

    def overrides(self) -> set[str]:
        """The overrides of the run (or multirun job) this claim reads."""
        args = [a for a in shlex.split(self.command)[1:] if a not in ("-m", "--multirun")]
        swept = {a.split("=")[0] for a in self.job}
        return {a for a in args if a.split("=")[0] not in swept} | set(self.job)


@dataclass
class Paper:
    title: str
    claims: list[Claim]
    deviations: list[str] = field(default_factory=list)


def load_claims(path: str | Path) -> list[Paper]:
    """The papers of the claims file; a bad entry is one ConfigError naming it and the key."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError("--reproductions", f"{path}: cannot be read as YAML ({type(err).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("papers"), list):
        raise ConfigError("--reproductions", f"{path}: expected a mapping with a list `papers`")
    return [_paper(entry, f"papers[{i}]") for i, entry in enumerate(data["papers"])]


def _paper(entry, where: str) -> Paper:
    if not isinstance(entry, dict) or not isinstance(entry.get("title"), str) or not isinstance(entry.get("claims"), list):
        raise ConfigError(where, "expected a mapping with `title` and a list `claims`")
    claims = []
    for j, item in enumerate(entry["claims"]):
        key = f"{where}.claims[{j}]"
        if not isinstance(item, dict) or not CLAIM_KEYS <= set(item):
            raise ConfigError(key, f"expected a mapping with the keys {', '.join(sorted(CLAIM_KEYS))}")
        try:
            claims.append(Claim(**item))
        except TypeError as err:  # an unknown key
            raise ConfigError(key, f"{err}; allowed keys: {', '.join(Claim.__dataclass_fields__)}") from None
        except ConfigError as err:
            raise err.under(key) from None
    return Paper(entry["title"], claims, list(entry.get("deviations") or []))


@dataclass
class Run:
    app: str
    overrides: set[str]
    metrics: dict
    path: Path
    mtime: float                 # when it finished (metrics.json written; a kept copy says when in KEPT)
    machine: dict | None = None  # its machine.json: what it ran on


# what a kept run holds (`keep_runs`): enough to re-read it, and KEPT: when it finished, where it was
RUN_FILES = ("metrics.json", "machine.json", "config_resolved.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")
KEPT = "kept.json"


def find_runs(roots: list[Path]) -> list[Run]:
    """Every finished run (metrics.json beside Hydra's .hydra/) under `roots`."""
    runs = []
    for root in roots:
        for metrics_file in sorted(Path(root).rglob("metrics.json")):
            run = _run(metrics_file.parent)
            if run is not None:
                runs.append(run)
    return runs


def _run(path: Path) -> Run | None:
    try:
        hydra = yaml.safe_load((path / ".hydra" / "hydra.yaml").read_text())
        overrides = yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or []
        metrics = json.loads((path / "metrics.json").read_text())
    except (OSError, yaml.YAMLError, json.JSONDecodeError):
        return None  # not a run directory (a sweep report, a half-copied run): not a candidate
    app = APPS.get(str(((hydra or {}).get("hydra") or {}).get("job", {}).get("config_name")))
    if app is None or not isinstance(metrics, dict):
        return None
    finished = (path / "metrics.json").stat().st_mtime
    kept, machine = _json(path / KEPT), _json(path / "machine.json")
    if isinstance(kept, dict) and isinstance(kept.get("finished"), (int, float)):
        finished = float(kept["finished"])  # a checkout's file times say when it was cloned, not run
    return Run(app, {str(o) for o in overrides}, metrics, path, finished, machine if isinstance(machine, dict) else None)


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# overrides that say where a run reads and writes and how it is launched, not what it computes
BOOKKEEPING = ("logger=", "hydra/launcher=", "hydra.", "run_name=", "paths.", "dataset.zip_dir=", "dataset.data_dir=")


def science(overrides: set[str]) -> set[str]:
    return {o for o in overrides if not o.lstrip("+~").startswith(BOOKKEEPING)}


def match(claim: Claim, runs: list[Run]) -> Run | None:
    """The newest run of exactly the claim's command (and job), up to where it logged and how it
    was launched (`logger=csv`, `hydra/launcher=joblib_local`, `hydra.run.dir=…`)."""
    wanted = science(claim.overrides())
    found = [r for r in runs if r.app == claim.app and science(r.overrides) == wanted]
    return max(found, key=lambda r: r.mtime, default=None)


def metric_value(metrics: dict, metric: str | list[str | int]) -> float | None:
    """A flat key (`test/acc`) or a path into nested dicts (keys) and lists (integer indices, e.g.
    the i-th ε of a robustness curve); None where the run lacks it."""
    node = metrics
    for key in [metric] if isinstance(metric, str) else metric:
        if isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
            node = node[key]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return None
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def claim_value(claim: Claim, metrics: dict) -> float | None:
    value = metric_value(metrics, claim.metric)
    if value is None or claim.baseline is None:
        return value
    base = metric_value(metrics, claim.baseline)
    return None if base is None else value - base


def formatted(value: float | None, unit: str, difference: bool = False) -> str:
    if value is None:
        return "not measured"
    sign = "+" if difference else ""
    if unit == "percent":
        return f"{100 * value:{sign}.1f} {'pp' if difference else '%'}"
    if unit == "bits":
        return f"{value:{sign}.2f} bits"
    return f"{value:{sign}.3f}" if unit == "fraction" else f"{value:{sign}.2f}×"


def wall_time(metrics: dict) -> str:
    """The run's `time/total_s` in minutes; "source cached" where its source model was a cache hit
    (`time/source_s` under a second: loading, not training), so the time is not from an empty cache."""
    if "time/total_s" not in metrics:
        return ""
    cached = float(metrics.get("time/source_s", 1e9)) < 1.0
    return f"{float(metrics['time/total_s']) / 60:.1f} min" + (", source cached" if cached else "")


def render(papers: list[Paper], runs: list[Run], machine: str) -> tuple[str, list[str]]:
    """(the Markdown page, the claims no run was found for). `machine`: what runs without a
    machine.json (runs from before it was recorded) are taken to have run on."""
    lines = ["# Reproductions: each paper against advlab", "",
             "Generated from the runs' `metrics.json` by `advlab-report --reproductions docs/reproductions.yaml <run dirs>`",
             "(the claims, commands and deviations live in `docs/reproductions.yaml`; edit that, not this page).",
             "Each row reads the newest finished run of its command; its machine is the run's `machine.json`",
             f"({machine} where a run has none). Wall time: the run's `time/total_s` (from an empty model cache",
             "unless the row says otherwise).", ""]
    missing = []
    for paper in papers:
        lines += [f"## {paper.title}", "", "| claim | paper | advlab | wall | machine | command |", "|---|---|---|---|---|---|"]
        for claim in paper.claims:
            row, measured = _row(claim, match(claim, runs), machine)
            lines.append(row)
            if not measured:
                missing.append(f"{paper.title}: {claim.claim}")
        if paper.deviations:
            lines += ["", "Deviations that remain:", ""] + [f"- {d}" for d in paper.deviations]
        commands = list(dict.fromkeys(c.command for c in paper.claims))
        lines += ["", "```bash", *commands, "```", ""]
    return "\n".join(lines), missing


def _row(claim: Claim, run: Run | None, machine: str) -> tuple[str, bool]:
    """(the claim's table row, whether its run measured it)."""
    from advlab.utils.hardware import machine_label

    value = None if run is None else claim_value(claim, run.metrics)
    wall = "" if run is None else wall_time(run.metrics)
    where = "" if run is None else machine_label(run.machine) if run.machine else machine
    job = f" ({', '.join(claim.job)})" if claim.job else ""
    note = f" {claim.note}" if claim.note else ""
    return (f"| {claim.claim}{note} | {claim.paper} ({claim.where}) | {formatted(value, claim.unit, claim.baseline is not None)} "
            f"| {wall} | {where} | `{claim.command}`{job} |"), value is not None


def keep_runs(papers: list[Paper], runs: list[Run], dest: str | Path) -> list[Path]:
    """Copy the run each claim reads (its RUN_FILES, and KEPT: when it finished, where it was) into
    `dest/<app>_<overrides>/`, so the table can be regenerated where the runs are gone (a new machine,
    a fresh clone): `advlab-report --reproductions CLAIMS <dest>`. Returns the folders written."""
    import re
    import shutil

    from advlab.utils.io import write_json

    written = []
    for claim in (c for paper in papers for c in paper.claims):
        run = match(claim, runs)
        if run is None:
            continue
        folder = Path(dest) / re.sub(r"[^A-Za-z0-9=.,_-]+", "_", "_".join([claim.app, *sorted(science(claim.overrides()))]))
        if folder in written or folder.resolve() == run.path.resolve():
            continue
        shutil.rmtree(folder, ignore_errors=True)  # an older kept copy of the command: replaced whole
        for name in RUN_FILES:
            if (run.path / name).is_file():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run.path / name, folder / name)
        write_json(folder / KEPT, {"finished": run.mtime, "from": str(run.path)})
        written.append(folder)
    return written


def write_reproductions(claims_path: str | Path, roots: list[str | Path], out: str | Path, machine: str | None = None,
                        keep: str | Path | None = None) -> list[str]:
    """Write the table to `out` (and with `keep`, copy the runs it reads there: `keep_runs`);
    returns the claims that no run under `roots` measured."""
    from advlab.utils.hardware import machine as this_machine, machine_label
    from advlab.utils.io import write_text

    papers = load_claims(claims_path)
    for root in roots:
        if not Path(root).is_dir():
            raise ConfigError("dirs", f"{root}: not a directory")
    runs = find_runs([Path(r) for r in roots])
    text, missing = render(papers, runs, machine or machine_label(this_machine()))
    if keep is not None:
        keep_runs(papers, runs, keep)
    write_text(out, text)
    return missing
