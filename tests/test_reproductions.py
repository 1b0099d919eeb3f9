"""The reproduction table (docs/REPRODUCTIONS.md): generated from the runs' metrics.json by
`advlab-report --reproductions`, every claim's command passing the pre-flight, the committed page
listing every claim of docs/reproductions.yaml."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_advlab

CLAIMS = REPO / "docs" / "reproductions.yaml"


def _run_dir(path, app: str, overrides: list[str], metrics: dict, mtime: float):
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"config_name": app}}}))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / "metrics.json").write_text(json.dumps(metrics))
    os.utime(path / "metrics.json", (mtime, mtime))
    return path


def _claims(tmp_path, claims: list[dict]):
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump({"papers": [{"title": "A paper", "claims": claims, "deviations": ["fewer epochs"]}]}))
    return path


def test_the_newest_run_of_exactly_the_command_is_read(tmp_path):
    from advlab.report.reproductions import write_reproductions

    runs = tmp_path / "runs"
    _run_dir(runs / "old", "train", ["experiment=x"], {"test/acc": 0.5, "time/total_s": 60}, 1_000)
    _run_dir(runs / "new", "train", ["experiment=x"], {"test/acc": 0.625, "time/total_s": 120}, 2_000)
    _run_dir(runs / "other", "train", ["experiment=x", "seed=1"], {"test/acc": 0.9}, 3_000)      # another command
    _run_dir(runs / "csv", "train", ["experiment=x", "logger=csv", "hydra.run.dir=/x", "dataset.zip_dir=/shared/cifar"],  # the newest, same science
             {"test/acc": 0.75, "time/total_s": 30}, 2_500)
    _run_dir(runs / "eval", "eval", ["experiment=x"], {"test/acc": 0.8}, 4_000)                  # another app
    _run_dir(runs / "sweep" / "0", "train", ["experiment=s", "rule=det"], {"test/acc": 0.25}, 1_000)
    _run_dir(runs / "sweep" / "1", "train", ["experiment=s", "rule=rand"], {"test/acc": 0.75, "time/total_s": 90,
                                                                            "time/source_s": 0.03}, 1_000)
    _run_dir(runs / "nested", "eval", ["experiment=e"], {"models": {"at": {"acc": [0.9, 0.4]}, "std": {"acc": [0.9, 0.1]}}}, 1_000)
    (runs / "broken" / ".hydra").mkdir(parents=True)
    (runs / "broken" / "metrics.json").write_text("[1, 2")  # a half-copied run is not a candidate
    claims = _claims(tmp_path, [
        {"claim": "acc", "paper": "60 %", "where": "Table 1", "command": "advlab-train experiment=x", "metric": "test/acc", "unit": "percent"},
        {"claim": "det", "paper": "0.2", "where": "Fig. 2", "command": "advlab-train experiment=s -m", "job": ["rule=det"], "metric": "test/acc"},
        {"claim": "rand", "paper": "0.6", "where": "Fig. 2", "command": "advlab-train experiment=s -m", "job": ["rule=rand"], "metric": "test/acc"},
        {"claim": "gap", "paper": "higher", "where": "§4", "command": "advlab-eval experiment=e", "metric": ["models", "at", "acc", 1],
         "baseline": ["models", "std", "acc", -1], "unit": "percent"},
        {"claim": "absent", "paper": "1", "where": "§5", "command": "advlab-probe experiment=p", "metric": "x"},
    ])
    out = tmp_path / "page.md"
    missing = write_reproductions(claims, [runs], out, machine="test CPU")
    text = out.read_text()
    assert "| acc | 60 % (Table 1) | 75.0 % | 0.5 min | test CPU | `advlab-train experiment=x` |" in text
    assert "| det | 0.2 (Fig. 2) | 0.250 |  | test CPU | `advlab-train experiment=s -m` (rule=det) |" in text
    assert "| rand | 0.6 (Fig. 2) | 0.750 | 1.5 min, source cached |" in text  # not a time from an empty cache
    assert "| gap | higher (§4) | +30.0 pp |" in text
    assert "| absent | 1 (§5) | not measured |" in text
    assert missing == ["A paper: absent"]
    assert "- fewer epochs" in text and "(test CPU where a run has none)" in text
    assert "```bash\nadvlab-train experiment=x\nadvlab-train experiment=s -m\nadvlab-eval experiment=e\n" in text


def test_a_real_run_is_read_and_the_cli_writes_the_page(tmp_path):
    run = run_advlab(tmp_path, "trainer.max_epochs=1", "logger=csv", run_dir=tmp_path / "outputs" / "run")
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads((run.run_dir / "metrics.json").read_text())
    claims = _claims(tmp_path, [{"claim": "clean accuracy", "paper": "0.9", "where": "Table 1",
                                 "command": "advlab-train trainer.max_epochs=1 logger=csv", "metric": "test/acc"}])
    out = tmp_path / "REPRODUCTIONS.md"
    proc = subprocess.run([sys.executable, "-m", "advlab.apps.report", "--reproductions", str(claims), str(tmp_path / "outputs"),
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import csv

    val = [float(r["val/acc"]) for r in csv.DictReader(open(run.run_dir / "csv" / "metrics.csv")) if r.get("val/acc")]
    assert measured["val/acc_best"] == max(val) >= measured["val/acc"]  # the best epoch's, from the run's history
    machine = json.loads((run.run_dir / "machine.json").read_text())  # every run records what it ran on
    assert machine["cores"] >= 1 and machine["torch"] and machine["cpu"]
    from advlab.utils.hardware import machine_label

    assert f"| clean accuracy | 0.9 (Table 1) | {measured['test/acc']:.3f} | {wall(measured)} | {machine_label(machine)} |" in out.read_text()


def wall(metrics: dict) -> str:
    from advlab.report.reproductions import wall_time

    return wall_time(metrics)


def test_kept_runs_regenerate_the_table_where_the_runs_are_gone(tmp_path):
    """`--keep DIR` copies the runs the table reads; the table from DIR alone is the same, with each
    run's own machine, and a kept copy is ordered by when its run finished, not when it was cloned."""
    from advlab.report.reproductions import write_reproductions

    runs, kept = tmp_path / "runs", tmp_path / "kept"
    new = _run_dir(runs / "a", "train", ["experiment=x"], {"test/acc": 0.625, "time/total_s": 120}, 2_000)
    (new / "machine.json").write_text(json.dumps({"cpu": "AMD EPYC 7B13", "cores": 2, "units": ["AVX2"], "gpu": None}))
    _run_dir(runs / "b", "train", ["experiment=x"], {"test/acc": 0.5}, 1_000)  # older: not kept
    _run_dir(runs / "c", "eval", ["experiment=e", "logger=csv"], {"x": 0.25}, 1_500)
    claims = _claims(tmp_path, [
        {"claim": "acc", "paper": "60 %", "where": "Table 1", "command": "advlab-train experiment=x", "metric": "test/acc", "unit": "percent"},
        {"claim": "x", "paper": "0.2", "where": "Fig. 1", "command": "advlab-eval experiment=e", "metric": "x"},
    ])
    write_reproductions(claims, [runs], tmp_path / "first.md", machine="test CPU", keep=kept)
    assert sorted(p.name for p in kept.iterdir()) == ["advlab-eval_experiment=e", "advlab-train_experiment=x"]
    assert json.loads((kept / "advlab-train_experiment=x" / "kept.json").read_text())["finished"] == 2_000
    for path in kept.rglob("*"):
        os.utime(path, (9_000, 9_000))  # a fresh clone: every file as new as the checkout
    _run_dir(runs / "d", "train", ["experiment=x"], {"test/acc": 0.75, "time/total_s": 60}, 3_000)  # newer than the kept copy
    write_reproductions(claims, [kept], tmp_path / "again.md", machine="another CPU")
    again = (tmp_path / "again.md").read_text()
    assert "| acc | 60 % (Table 1) | 62.5 % | 2.0 min | AMD EPYC 7B13, 2 cores, AVX2 only |" in again
    assert "| x | 0.2 (Fig. 1) | 0.250 |  | another CPU |" in again
    write_reproductions(claims, [kept, runs], tmp_path / "both.md", machine="test CPU")
    assert "| acc | 60 % (Table 1) | 75.0 % |" in (tmp_path / "both.md").read_text()  # the newest run, not the newest file


@pytest.mark.parametrize("claims,key", [
    ("papers: [{title: t, claims: [{claim: c, paper: p, where: w, command: advlab-train, metric: m, unit: furlongs}]}]",
     "papers[0].claims[0].unit: 'furlongs' is not a unit; allowed: fraction, percent, bits, ratio"),
    ("papers: [{title: t, claims: [{claim: c, paper: p, where: w, command: python x.py, metric: m}]}]",
     "papers[0].claims[0].command: 'python x.py' does not start with an app; allowed: advlab-train"),
    ("papers: [{title: t, claims: [{claim: c, paper: p}]}]",
     "papers[0].claims[0]: expected a mapping with the keys claim, command, metric, paper, where"),
    ("papers: {", "--reproductions: "),
])
def test_a_bad_claims_file_is_one_line_and_exit_2(tmp_path, claims, key):
    path = tmp_path / "claims.yaml"
    path.write_text(claims)
    proc = subprocess.run([sys.executable, "-m", "advlab.apps.report", "--reproductions", str(path), str(tmp_path),
                           "--out", str(tmp_path / "page.md")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"advlab-report: error: {key}") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "page.md").exists()


def test_several_directories_need_reproductions(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "advlab.apps.report", str(tmp_path), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "one sweep_dir" in proc.stderr


def _claim_list():
    from advlab.report.reproductions import load_claims

    return [(paper.title, claim) for paper in load_claims(CLAIMS) for claim in paper.claims]


@pytest.mark.parametrize("title,claim", _claim_list(), ids=lambda c: getattr(c, "claim", c))
def test_every_claim_command_passes_the_preflight(title, claim, monkeypatch, tmp_path):
    """The job a claim reads, as a user would start it (the swept values replaced by the claim's)."""
    from advlab.preflight.jobs import precheck

    monkeypatch.setenv("ADVLAB_ROOT", str(tmp_path))
    app = {"advlab-train": "train", "advlab-eval": "eval", "advlab-transfer": "transfer", "advlab-probe": "probe"}[claim.app]
    precheck(sorted(claim.overrides()), app)
    assert shlex.split(claim.command)[0] == claim.app


def test_the_committed_page_lists_every_claim():
    """docs/REPRODUCTIONS.md is regenerated after the claims change (its rows start with each claim)."""
    from advlab.report.reproductions import load_claims

    page = (REPO / "docs" / "REPRODUCTIONS.md").read_text()
    for paper in load_claims(CLAIMS):
        assert f"## {paper.title}" in page
        for claim in paper.claims:
            assert f"| {claim.claim}{' ' + claim.note if claim.note else ''} | {claim.paper} ({claim.where}) |" in page, claim.claim


def test_the_committed_page_regenerates_from_the_kept_runs(tmp_path):
    """benchmarks/results/reproductions holds the runs the committed table read (`--keep`): the table is
    refreshed from the repository alone, row for row, machine for machine."""
    from advlab.report.reproductions import write_reproductions

    kept = REPO / "benchmarks" / "results" / "reproductions"
    missing = write_reproductions(CLAIMS, [kept], tmp_path / "page.md", machine="no machine.json")
    rows = [line for line in (tmp_path / "page.md").read_text().splitlines() if line.startswith("| ")]
    committed = [line for line in (REPO / "docs" / "REPRODUCTIONS.md").read_text().splitlines() if line.startswith("| ")]
    assert rows == committed and not missing
    assert not any("no machine.json" in row for row in rows)  # every kept run says where it ran
