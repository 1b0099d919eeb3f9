"""The README is the front door: at most 10 KB, the two commands CI runs, one command per app, a layout
that matches the tree, and links that lead somewhere. Its commands and the documentation site's go through
the pre-flight in test_docs_commands; here the other tools' commands run."""
from __future__ import annotations

import importlib
import re

import pytest

from conftest import REPO
from test_docs_commands import PAGES, shell_commands

README_PATH = REPO / "README.md"
README = README_PATH.read_text()


def test_the_readme_is_small_and_shows_the_two_commands():
    assert len(README.encode()) <= 10_000, len(README.encode())
    assert {"make run", "make test"} <= set(shell_commands(README_PATH))  # CI runs these two (.ci/run)
    for leftover in ("issue 4", "as before", "(issue "):
        assert leftover not in README


def test_every_relative_link_of_the_readme_leads_to_a_file():
    """The site's own links are checked by `make docs` (mkdocs build --strict)."""
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 15
    for link in links:
        assert (REPO / link).is_file(), link


def test_the_readme_layout_matches_the_tree():
    layout = README[README.index("## Layout"):].split("```")[1]
    folders = re.findall(r"^  (\w+)/ ", layout, re.M)
    assert len(folders) >= 10
    for folder in folders:
        assert (REPO / "src" / "advlab" / folder / "__init__.py").is_file(), folder
    for top in re.findall(r"^(\w+)/ ", layout, re.M):
        assert (REPO / top).is_dir(), top


def test_every_advlab_name_the_pages_cite_exists():
    """`advlab.x.y` in README.md and docs/: a module, or a name in one (kept true across moves)."""
    names = {n for page in PAGES for n in re.findall(r"`(advlab(?:\.\w+)+)`", page.read_text())}
    assert {"advlab.attacks.base.Attack", "advlab.models.base.Classifier", "advlab.load_run"} <= names
    for name in sorted(names):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            module, _, attr = name.rpartition(".")
            assert hasattr(importlib.import_module(module), attr), name


def test_the_python_api_example_uses_what_test_api_runs():
    api_page = (REPO / "docs" / "reference" / "api.md").read_text()
    python_block = re.search(r"```python\n(.*?)```", api_page, re.S).group(1)
    assert "advlab.load_run" in python_block and "load_from_checkpoint" in python_block  # test_api runs both


def test_the_documented_tools_run(tmp_path, capsys):
    from advlab.apps.cache import main as cache_main
    from advlab.apps.data import main as data_main

    assert "advlab-cache list" in README
    (tmp_path / "cache").mkdir()
    assert cache_main(["--cache-dir", str(tmp_path / "cache"), "list"]) == 0
    assert cache_main(["--cache-dir", str(tmp_path / "cache"), "verify"]) == 0
    with pytest.raises(SystemExit) as done:
        data_main(["--help"])
    assert done.value.code == 0 and "--shared" in capsys.readouterr().out
    sweeps = [s for page in PAGES for s in re.findall(r"wandb sweep (sweeps/\S+\.yaml)", page.read_text())]
    assert sweeps
    for sweep in sweeps:
        assert (REPO / sweep).is_file(), sweep


def test_every_repository_path_the_pages_cite_exists():
    """`src/...`, `conf/...`, `tests/...`, `benchmarks/...` in README.md and docs/ (placeholders aside)."""
    cited = {p for page in PAGES
             for p in re.findall(r"`((?:src|conf|tests|benchmarks|examples|sweeps|docs)/[^`\s]*)`", page.read_text())}
    assert len(cited) >= 30
    for path in sorted(cited):
        if "<" in path:
            continue
        assert list(REPO.glob(path.rstrip("/"))), path
