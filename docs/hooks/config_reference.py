"""The config reference, generated from conf/ at every docs build (an mkdocs hook), so it cannot go stale.

Every config group becomes a section, every option a table of its keys with their defaults and the
comments written beside them in the YAML file; the apps' primary configs come first. mkdocs calls
`on_page_markdown` for each page; the page that holds `MARKER` gets the tables in its place.
`python docs/hooks/config_reference.py` prints the generated Markdown.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

MARKER = "<!-- config-reference -->"
APP_CONFIGS = {"train.yaml": "advlab-train", "eval.yaml": "advlab-eval", "transfer.yaml": "advlab-transfer", "probe.yaml": "advlab-probe"}
SKIPPED_GROUPS = ("hydra/help",)  # the apps' --help texts, not settings
KEY_LINE = re.compile(r"^(\s*)([^\s#:][^:#]*?):(\s.*|)$")


def _comment_of(rest: str) -> str:
    """The comment after a value (`value  # why`), not a `#` inside a quoted string."""
    match = re.search(r"(^|\s)#\s?(.*)$", rest)
    if not match or rest[:match.start()].count('"') % 2 or rest[:match.start()].count("'") % 2:
        return ""
    return match.group(2).strip()


def split_comments(text: str) -> tuple[list[str], dict[str, str]]:
    """(the file's leading comment lines, {dotted key: the comments above and beside it})."""
    lines = text.splitlines()
    header = []
    while lines and lines[0].lstrip().startswith("#"):
        line = lines.pop(0).lstrip()[1:].strip()
        if not line.startswith("@package"):
            header.append(line)
    notes: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            if not stripped[1:].strip().startswith("--"):  # `# -- section ---` dividers
                above.append(stripped[1:].strip())
            continue
        match = KEY_LINE.match(line)
        if not match or stripped.startswith("-"):
            above = [] if not stripped.startswith("-") else above
            continue
        indent, key = len(match.group(1)), match.group(2).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        note = " ".join(above + [_comment_of(match.group(3))]).strip()
        if note:
            notes[".".join(k for _, k in stack)] = note
        above = []
    return header, notes


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value).replace("\n", " ")


def flatten(node: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Leaf keys as (dotted key, value); an empty mapping is a leaf."""
    rows = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += flatten(value, path + ".")
        else:
            rows.append((path, value))
    return rows


# Markdown outside code spans (a `|` inside one does not split a table cell)
ESCAPES = {"<": "&lt;", ">": "&gt;", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "\\": "\\\\", "|": "\\|"}


def _prose(text: str) -> str:
    """A comment as Markdown text: code spans kept, the rest escaped (`<dir>`, `[a]`, `*_cpu` stay literal)."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        parts = [text]
    for i in range(0, len(parts), 2):
        parts[i] = "".join(ESCAPES.get(c, c) for c in parts[i])
    return "`".join(parts).replace("\n", " ")


def _defaults_line(defaults: list) -> str:
    items = []
    for entry in defaults:
        items.append(f"`{entry}`" if isinstance(entry, str) else ", ".join(f"`{k}: {_value(v)}`" for k, v in entry.items()))
    return "Defaults list: " + ", ".join(items) + "." if items else ""


def render_file(path: Path, heading: str, anchor: str) -> str:
    text = path.read_text()
    header, notes = split_comments(text)
    node = yaml.safe_load(text) or {}
    parts = [f"### {heading} {{ #{anchor} }}", ""]
    if header:
        parts += ["```text", *header, "```", ""]
    if "@package _global_" in text.split("\n", 1)[0]:
        parts += ["Package `_global_`: its keys are paths from the config's root.", ""]
    if node.get("defaults"):
        parts += [_defaults_line(node["defaults"]), ""]
    rows = [(k, v) for k, v in flatten({k: v for k, v in node.items() if k != "defaults"})]
    if rows:
        parts += ["| key | default | note |", "|---|---|---|"]
        parts += [f"| `{k}` | `{_value(v)}` | {_prose(notes.get(k, ''))} |" for k, v in rows]
        parts.append("")
    return "\n".join(parts)


def groups(conf: Path) -> dict[str, list[Path]]:
    """{group: its option files}, the group being the folder's path under conf/."""
    found: dict[str, list[Path]] = {}
    for path in sorted(conf.rglob("*.yaml")):
        group = path.parent.relative_to(conf).as_posix()
        if group != "." and not group.startswith(SKIPPED_GROUPS):
            found.setdefault(group, []).append(path)
    return found


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render(conf: Path) -> str:
    parts = ["## The apps' configs { #app-configs }", ""]
    for name, app in APP_CONFIGS.items():
        parts.append(render_file(conf / name, f"`{app}`: `conf/{name}`", f"app-{_slug(app)}"))
    for group, paths in groups(conf).items():
        options = ", ".join(f"`{p.stem}`" for p in paths)
        parts += [f"## `{group}` {{ #{_slug(group)} }}", "", f"`conf/{group}/`, options: {options}.", ""]
        for path in paths:
            parts.append(render_file(path, f"`{group}={path.stem}`", f"{_slug(group)}-{_slug(path.stem)}"))
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # mkdocs hook
    if MARKER not in markdown:
        return markdown
    conf = Path(config["config_file_path"]).parent / "conf"
    return markdown.replace(MARKER, render(conf))


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    sys.stdout.write(render(Path(sys.argv[1]) if len(sys.argv) > 1 else root / "conf"))
