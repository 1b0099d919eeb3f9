"""`advlab-cache list|verify|clear`: what the artifact cache holds, whether it is sound, and removal.

The default directory is the one runs use (conf/paths/default.yaml: ``${paths.root_dir}/cache`` with
root_dir = $ADVLAB_ROOT, else the current directory); a run started with ``paths.cache_dir=...``
needs the same ``--cache-dir`` here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADVLAB_ROOT") or os.getcwd()).resolve() / "cache"


def artifact_files(root: Path, kind: str | None = None) -> list[Path]:
    kinds = [root / kind] if kind else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [p for d in kinds if d.is_dir() for p in sorted(d.glob("*.pt"))]


def _short(target) -> str:
    return str(target).rsplit(".", 1)[-1] if target else "?"


def summary(spec) -> str:
    """A few words on what an artifact is, from its spec (arch, method, data, attack, source)."""
    if not isinstance(spec, dict):
        return "?"
    parts = []
    if isinstance(spec.get("arch"), dict):
        parts.append(f"{spec.get('method', '?')} {_short(spec['arch'].get('_target_'))}")
    if "construction" in spec:
        parts.append(str(spec["construction"]))
    if isinstance(spec.get("attack"), dict):
        parts.append(_short(spec["attack"].get("class") or spec["attack"].get("_target_")))
    if isinstance(spec.get("data"), dict) and "source" not in spec:
        parts.append(str(spec["data"].get("name")))
    if isinstance(spec.get("source"), dict):
        parts.append(f"from [{summary(spec['source'])}]")
    return " ".join(parts) or "?"


def _sidecar(path: Path) -> dict:
    try:
        info = json.loads(path.with_suffix(".json").read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def cmd_list(root: Path, args) -> int:
    files = artifact_files(root, args.kind)
    if not files:
        print(f"no artifacts under {root}")
        return 0
    print(f"{'kind':<12} {'key':<16} {'size':>9}  {'date (UTC)':<19}  what")
    for p in files:
        info = _sidecar(p)
        date = datetime.fromtimestamp(p.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        spec = info.get("spec", info)  # sidecars of older caches are the bare spec
        what = f"{info['what']}: {summary(spec)}" if "what" in info else summary(spec)
        print(f"{p.parent.name:<12} {p.stem:<16} {_size(p.stat().st_size):>9}  {date:<19}  {what}")
    return 0


def cmd_verify(root: Path, args) -> int:
    from advlab.cache import check_artifact

    files = artifact_files(root, args.kind)
    bad = 0
    for p in files:
        _, problem = check_artifact(p)
        if problem:
            bad += 1
            print(f"BAD {p}: {problem}")
        elif args.verbose:
            print(f"ok  {p}")
    print(f"{len(files)} artifact(s) under {root}: {len(files) - bad} ok, {bad} bad"
          + ("; a run that needs a bad one moves it aside and rebuilds it (or remove it with `advlab-cache clear`)" if bad else ""))
    return 1 if bad else 0


def cmd_clear(root: Path, args) -> int:
    files = artifact_files(root, args.kind)
    doomed = []
    for p in files:
        doomed += [p] + [q for q in [p.with_suffix(".json")] if q.exists()]
    kinds = [root / args.kind] if args.kind else [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    doomed += [q for d in kinds if d.is_dir() for q in sorted(d.glob("*.pt.corrupt-*"))]
    total = sum(q.stat().st_size for q in doomed)
    what = f"{len(files)} artifact(s) ({_size(total)}) under {root / args.kind if args.kind else root}"
    if not args.yes:
        print(f"would remove {what}; nothing removed: add --yes")
        return 0
    for q in doomed:
        q.unlink(missing_ok=True)
    print(f"removed {what}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="advlab-cache", description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="the cache directory (default: $ADVLAB_ROOT/cache, else ./cache, as runs use)")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("list", "kind, key, size, date and what of every artifact"),
                       ("verify", "check every artifact's checksum and key; exit 1 if any is bad"),
                       ("clear", "remove artifacts (with their sidecars and moved-aside corrupt files)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--kind", default=None, help="only this kind (models, datasets, adversarial)")
        if name == "verify":
            p.add_argument("-v", "--verbose", action="store_true", help="also list the sound ones")
        if name == "clear":
            p.add_argument("--yes", action="store_true", help="really remove (without it: say what would go)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = (args.cache_dir or default_cache_dir()).expanduser().resolve()
    if args.cache_dir is not None and not root.is_dir():
        print(f"advlab-cache: error: --cache-dir: {root} is not a directory", file=sys.stderr)
        return 2
    return {"list": cmd_list, "verify": cmd_verify, "clear": cmd_clear}[args.command](root, args)


if __name__ == "__main__":
    sys.exit(main())
