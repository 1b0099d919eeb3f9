"""Every command the README shows is exercised: the Hydra apps' commands compose and pass the
pre-flight check of every job they would run (what a user gets before any work starts); the other
tools' commands run. Commands that need a finished run directory run for real elsewhere
(test_eval_runs: `checkpoints=[...]`; test_api: the example and the Python API)."""
from __future__ import annotations

import re
import shlex

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text()
APPS = {"advlab-train": "train", "advlab-eval": "eval", "advlab-transfer": "transfer", "advlab-probe": "probe"}
NEEDS_A_RUN = ("checkpoint", "<")  # a run directory or a placeholder for one


def _commands() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                lines.append(line)
    return lines


HYDRA_COMMANDS = [c for c in _commands() if c.split()[0] in APPS and not any(s in c for s in NEEDS_A_RUN)]


def test_the_readme_shows_the_commands_this_file_checks():
    assert len(HYDRA_COMMANDS) >= 30
    assert {"make run", "make test"} <= set(_commands())  # CI runs these two (.ci/run)
    python_block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    assert "advlab.load_run" in python_block and "load_from_checkpoint" in python_block  # test_api runs both


def _first_job(args: list[str]) -> list[str]:
    """A multirun's first job (`-m k=a,b` -> `k=a`): composing one job per command keeps this cheap;
    every value of a sweep is checked by the slow variant below and by the sweep tests."""
    out = []
    for arg in args:
        if arg == "-m":
            continue
        key, _, value = arg.partition("=")
        if value and "," in value and not value.startswith("["):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else arg)
    return out


def _preflight(command: str, tmp_path, monkeypatch, whole_sweep: bool) -> None:
    from advlab.cli import precheck

    monkeypatch.setenv("ADVLAB_ROOT", str(tmp_path))
    app, *args = shlex.split(command)
    config_name = APPS[app]
    args = args if whole_sweep else _first_job(args)
    precheck(args, config_name)  # raises a ConfigError on any bad option


@pytest.mark.parametrize("command", HYDRA_COMMANDS)
def test_every_readme_command_passes_the_preflight(command, monkeypatch, tmp_path):
    _preflight(command, tmp_path, monkeypatch, whole_sweep=False)


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in HYDRA_COMMANDS if " -m " in f" {c} " or "sweep=" in c])
def test_every_job_of_every_readme_sweep_passes_the_preflight(command, monkeypatch, tmp_path):
    _preflight(command, tmp_path, monkeypatch, whole_sweep=True)


def test_the_readme_tools_run(tmp_path, capsys):
    from advlab.cache_cli import main as cache_main
    from advlab.data.shared import main as data_main

    assert "advlab-cache list|verify|clear" in README
    (tmp_path / "cache").mkdir()
    assert cache_main(["--cache-dir", str(tmp_path / "cache"), "list"]) == 0
    assert cache_main(["--cache-dir", str(tmp_path / "cache"), "verify"]) == 0
    with pytest.raises(SystemExit) as done:
        data_main(["--help"])
    assert done.value.code == 0 and "--shared" in capsys.readouterr().out
    for sweep in re.findall(r"wandb sweep (sweeps/\S+\.yaml)", README):
        assert (REPO / sweep).is_file(), sweep
