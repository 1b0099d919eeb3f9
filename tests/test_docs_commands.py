"""Every command the README and the documentation site (docs/**/*.md) show is exercised: the Hydra apps'
commands compose and pass the pre-flight of every job they would run (what a user gets before any work
starts). Commands that need a finished run directory or a file of the user's (`<...>` placeholders,
`checkpoint`) run for real elsewhere (test_eval_runs: `checkpoints=[...]`; test_api: the Python API;
test_external_models: weight files)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO

APPS = {"advlab-train": "train", "advlab-eval": "eval", "advlab-transfer": "transfer", "advlab-probe": "probe"}
NEEDS_A_RUN = ("checkpoint", "<")  # a run directory or a placeholder for one
PAGES = [REPO / "README.md", *sorted(p for p in (REPO / "docs").rglob("*.md") if "hooks" not in p.parts)]


def shell_commands(page: Path) -> list[str]:
    """The command lines of a page's ```bash blocks, without their comments."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line:
                lines.append(line)
    return lines


def _hydra_commands() -> list[tuple[str, str]]:
    """(the first page that shows it, command), each command once."""
    found: dict[str, str] = {}
    for page in PAGES:
        for command in shell_commands(page):
            if command.split()[0] in APPS and not any(s in command for s in NEEDS_A_RUN):
                found.setdefault(command, page.relative_to(REPO).as_posix())
    return [(page, command) for command, page in found.items()]


HYDRA_COMMANDS = _hydra_commands()


def test_the_pages_show_the_commands_this_file_checks():
    assert len(HYDRA_COMMANDS) >= 50, len(HYDRA_COMMANDS)
    pages = {page for page, _ in HYDRA_COMMANDS}
    assert {"README.md", "docs/apps/train.md", "docs/apps/eval.md", "docs/apps/transfer.md", "docs/apps/probe.md"} <= pages
    # every Hydra app appears in the README, each with a command
    assert {c.split()[0] for p, c in HYDRA_COMMANDS if p == "README.md"} == set(APPS)


def _first_job(args: list[str]) -> list[str]:
    """A multirun's first job (`-m k=a,b` -> `k=a`): composing one job per command keeps this cheap;
    every value of a sweep is checked by the slow variant below and by the sweep tests."""
    out = []
    for arg in args:
        if arg == "-m":
            continue
        key, sep, value = arg.partition("=")
        if value and "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if sep else arg)
    return out


def _preflight(command: str, tmp_path, monkeypatch, whole_sweep: bool) -> None:
    from advlab.preflight.jobs import precheck

    monkeypatch.setenv("ADVLAB_ROOT", str(tmp_path))
    app, *args = shlex.split(command)
    args = args if whole_sweep else _first_job(args)
    precheck(args, APPS[app])  # raises a ConfigError on any bad option


def _ids(cases):
    return [f"{page}: {command}" for page, command in cases]


@pytest.mark.parametrize("page,command", HYDRA_COMMANDS, ids=_ids(HYDRA_COMMANDS))
def test_every_documented_command_passes_the_preflight(page, command, monkeypatch, tmp_path):
    _preflight(command, tmp_path, monkeypatch, whole_sweep=False)


SWEEPS = [(p, c) for p, c in HYDRA_COMMANDS if " -m " in f" {c} " or "sweep=" in c]


@pytest.mark.slow
@pytest.mark.parametrize("page,command", SWEEPS, ids=_ids(SWEEPS))
def test_every_job_of_every_documented_sweep_passes_the_preflight(page, command, monkeypatch, tmp_path):
    _preflight(command, tmp_path, monkeypatch, whole_sweep=True)


def test_first_job_of_a_multirun():
    assert _first_job(["-m", "a=1,2", "b=[1,2]", "c={x:1,y:2}", "d"]) == ["a=1", "b=[1,2]", "c={x:1,y:2}", "d"]


def test_the_config_reference_names_every_group_option_and_key():
    """docs/reference/config.md is generated from conf/ at each docs build (docs/hooks/config_reference.py)."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "docs" / "hooks" / "config_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    assert reference.MARKER in (REPO / "docs" / "reference" / "config.md").read_text()
    conf = REPO / "conf"
    text = reference.render(conf)
    groups = reference.groups(conf)
    assert {"dataset", "arch", "method", "attack", "eps", "spec", "trainer", "experiment", "sweep", "hydra/launcher"} <= set(groups)
    for group, paths in groups.items():
        assert f"## `{group}`" in text, group
        for path in paths:
            assert f"### `{group}={path.stem}`" in text, path
            node = yaml.safe_load(path.read_text()) or {}
            for key, _ in reference.flatten({k: v for k, v in node.items() if k != "defaults"}):
                assert f"| `{key}` |" in text, (path, key)
    # a key's comment travels with it, and comments are Markdown-safe
    assert "| `max_train` | `null` | keep only the first N training examples (quick runs) |" in text
    assert reference._prose("see `a_b` and <dir>/x_y [a]") == "see `a_b` and &lt;dir&gt;/x\\_y \\[a\\]"


def test_no_documented_command_uses_a_deprecated_key():
    """The old place of a derived dataset's options (`method.target_rule=rand`) still works for one
    release; the pages show the new one (`derived.target_rule=rand`)."""
    from advlab.derived.base import MOVED_TO_DERIVED

    for page, command in HYDRA_COMMANDS:
        for arg in shlex.split(command):
            key = arg.split("=")[0].lstrip("+~")
            assert not (key.startswith("method.") and key.split(".")[1] in MOVED_TO_DERIVED), (page, command)
