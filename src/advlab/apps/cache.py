"""`advlab-cache list|verify|clean|clear`: what the artifact cache holds, whether it is sound, and removal.

Builds stopped part-way (a signal, a kill -9) keep their progress in ``<kind>/.<key>.partial/``: `list`
shows them ("partial"), `verify` counts them apart (they are not artifacts: the next run that needs one
resumes it), `clear --yes` removes those no run is building.

A run killed while writing leaves a temp file (``<kind>/.<key>.pt-XXXXXXXX.tmp``, a sidecar's, a probe's):
never read as an artifact, but disk space. `list` and `verify` show them, `clean --yes` (and `clear --yes`)
removes those no run is writing (its artifact's build lock is free).

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


def partial_dirs(root: Path, kind: str | None = None) -> list[Path]:
    from advlab.artifacts.cache import PARTIAL_SUFFIX

    kinds = [root / kind] if kind else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    return [p for d in kinds if d.is_dir() for p in sorted(d.glob(f".*{PARTIAL_SUFFIX}")) if p.is_dir()]


def _partial_key(path: Path) -> str:
    from advlab.artifacts.cache import PARTIAL_SUFFIX

    return path.name.removeprefix(".").removesuffix(PARTIAL_SUFFIX)


def partial_text(path: Path) -> str:
    """What a partial build holds: a model's epochs done, a crafted set's inputs done."""
    from advlab.callbacks.checkpoint import LAST
    from advlab.derived.resume import PREFIX

    if (path / LAST).is_file():
        from advlab.callbacks.checkpoint import completed_epochs, readable_checkpoint

        why = readable_checkpoint(path / LAST)
        return f"model training, {completed_epochs(path / LAST)} epoch(s) done" if why is None else f"model training ({LAST}: {why})"
    chunks = sorted(path.glob(f"{PREFIX}*.pt"))
    if chunks:
        done = chunks[-1].stem.rsplit("-", 1)[-1]
        return f"crafting, {int(done) if done.isdigit() else '?'} input(s) done in {len(chunks)} chunk(s)"
    return "empty"


def _short(target) -> str:
    return str(target).rsplit(".", 1)[-1] if target else "?"


def summary(spec) -> str:
    """A few words on what an artifact is, from its spec (arch, method, data, attack, source)."""
    if not isinstance(spec, dict):
        return "?"
    parts = []
    if isinstance(spec.get("arch"), dict):
        method = spec.get("method", "?")
        method = _short(method.get("_target_")) if isinstance(method, dict) else method  # a method node: its class
        parts.append(f"{method} {_short(spec['arch'].get('_target_'))}")
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


def _date(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cmd_list(root: Path, args) -> int:
    files, partials = artifact_files(root, args.kind), partial_dirs(root, args.kind)
    temps = _temp_lines(root, args.kind)
    if not files and not partials and not temps:
        print(f"no artifacts under {root}")
        return 0
    print(f"{'kind':<12} {'key':<16} {'size':>9}  {'date (UTC)':<19}  what")
    for p in files:
        info = _sidecar(p)
        spec = info.get("spec", info)  # sidecars of older caches are the bare spec
        what = f"{info['what']}: {summary(spec)}" if "what" in info else summary(spec)
        print(f"{p.parent.name:<12} {p.stem:<16} {_size(p.stat().st_size):>9}  {_date(p):<19}  {what}")
    for p in partials:
        size = sum(q.stat().st_size for q in p.iterdir() if q.is_file())
        key = _partial_key(p)
        print(f"{p.parent.name:<12} {key:<16} {_size(size):>9}  {_date(p):<19}  partial: {partial_text(p)} (the next run that needs it resumes it)")
    for line in temps:
        print(line)
    return 0


def cmd_verify(root: Path, args) -> int:
    from advlab.artifacts.cache import check_artifact

    files = artifact_files(root, args.kind)
    bad = 0
    for p in files:
        _, problem = check_artifact(p)
        if problem:
            bad += 1
            print(f"BAD {p}: {problem}")
        elif args.verbose:
            print(f"ok  {p}")
    partials = partial_dirs(root, args.kind)
    print(f"{len(files)} artifact(s) under {root}: {len(files) - bad} ok, {bad} bad"
          + ("; a run that needs a bad one moves it aside and rebuilds it (or remove it with `advlab-cache clear`)" if bad else "")
          + (f"; {len(partials)} partial build(s), resumed by the next run that needs them" if partials else "")
          + _temp_summary(root, args.kind))
    return 1 if bad else 0


def cmd_clear(root: Path, args) -> int:
    files = artifact_files(root, args.kind)
    doomed = []
    for p in files:
        doomed += [p] + [q for q in [p.with_suffix(".json")] if q.exists()]
    kinds = [root / args.kind] if args.kind else [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    doomed += [q for d in kinds if d.is_dir() for q in sorted(d.glob("*.pt.corrupt-*"))]
    total = sum(q.stat().st_size for q in doomed)
    partials = partial_dirs(root, args.kind)
    what = (f"{len(files)} artifact(s) ({_size(total)})" + (f" and {len(partials)} partial build(s)" if partials else "")
            + f" under {root / args.kind if args.kind else root}")
    if not args.yes:
        print(f"would remove {what}; nothing removed: add --yes")
        return 0
    for q in doomed:
        q.unlink(missing_ok=True)
    kept = _clear_partials(root, args.kind)
    for p, lock in temp_files(root, args.kind):  # what killed runs left half-written
        _in_use(p, lock, then=lambda q: q.unlink(missing_ok=True))
    print(f"removed {what}" + (f"; kept {len(kept)} partial build(s) that a run is building now: {', '.join(map(str, kept))}" if kept else ""))
    return 0


def _clear_partials(root: Path, kind: str | None) -> list[Path]:
    """Remove the partial builds no run holds the lock of; return those it holds."""
    import shutil

    from filelock import FileLock, Timeout

    kept = []
    for p in partial_dirs(root, kind):
        lock = FileLock(str(p.parent / f"{_partial_key(p)}.pt.lock"))  # the artifact's build lock (advlab.artifacts.cache.build_lock)
        try:
            with lock.acquire(timeout=0):
                shutil.rmtree(p, ignore_errors=True)
        except Timeout:
            kept.append(p)
    return kept


TEMP_GRACE_S = 600.0  # a probe file (no lock) younger than this may be a live write


def _kind_dirs(root: Path, kind: str | None) -> list[Path]:
    return [root / kind] if kind else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def temp_files(root: Path, kind: str | None = None) -> list[tuple[Path, Path | None]]:
    """The temp files of atomic writes (`.<key>.pt-XXXXXXXX.tmp`, its sidecar's and lock owner's) and of
    writability probes that a killed run left in the cache: (file, the build lock its writer held, or
    None for a probe). Partial builds' own files (``.<key>.partial/``) are not among them."""
    from advlab.utils.io import stale_temp_files

    found = [(p, None) for p in stale_temp_files(root)] if kind is None else []
    for d in _kind_dirs(root, kind):
        for p in stale_temp_files(d):
            key = p.name[1:].split(".", 1)[0]  # `.<key>.pt-...tmp` -> <key>
            found.append((p, None if p.name.startswith((".advlab-probe-", ".probe-")) else d / f"{key}.pt.lock"))
    return found


def _in_use(path: Path, lock_file: Path | None, then=None) -> bool:
    """Whether a run may be writing `path` now: it holds the artifact's build lock (every cache write
    happens under it), or, for a probe, the file is younger than TEMP_GRACE_S. `then(path)` runs while
    the lock is held, when it is free."""
    import time

    from filelock import FileLock, Timeout

    if lock_file is None:
        busy = time.time() - path.stat().st_mtime < TEMP_GRACE_S
        if not busy and then:
            then(path)
        return busy
    try:
        with FileLock(str(lock_file)).acquire(timeout=0):
            if then:
                then(path)
    except Timeout:
        return True
    return False


def cmd_clean(root: Path, args) -> int:
    """Remove the temp files that killed runs left half-written (never one a live run is writing)."""
    temps = [(p, lock) for p, lock in temp_files(root, args.kind) if p.exists()]
    stale = [(p, lock) for p, lock in temps if not _in_use(p, lock)]
    total = sum(p.stat().st_size for p, _ in stale if p.exists())
    what = f"{len(stale)} stale temp file(s) ({_size(total)}) under {root / args.kind if args.kind else root}"
    if not args.yes:
        print(f"would remove {what}; nothing removed: add --yes")
        return 0
    busy = [p for p, lock in stale if _in_use(p, lock, then=lambda q: q.unlink(missing_ok=True))]
    print(f"removed {what}" + (f"; kept {len(busy)} that a run is writing now" if busy else ""))
    return 0


def _temp_summary(root: Path, kind: str | None) -> str:
    """`advlab-cache verify`'s note on temp files (they are not artifacts: they do not make it fail)."""
    stale = [p for p, lock in temp_files(root, kind) if p.exists() and not _in_use(p, lock)]
    for p in stale:
        print(f"TMP {p}: half-written temp file of a killed run")
    return f"; {len(stale)} stale temp file(s): `advlab-cache clean --yes` removes them" if stale else ""


def _temp_lines(root: Path, kind: str | None) -> list[str]:
    """`advlab-cache list`'s rows for temp files."""
    rows = []
    for p, lock in temp_files(root, kind):
        try:
            size, date = _size(p.stat().st_size), _date(p)
        except FileNotFoundError:  # its writer just finished
            continue
        state = "being written (a run holds its lock)" if _in_use(p, lock) else "half-written by a killed run: `advlab-cache clean --yes` removes it"
        where, key = (p.parent.name, p.name[1:].split(".", 1)[0]) if p.parent != root else (".", "-")
        rows.append(f"{where:<12} {key[:16]:<16} {size:>9}  {date:<19}  temp file {p.name}: {state}")
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="advlab-cache", description=__doc__.splitlines()[0])
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="the cache directory (default: $ADVLAB_ROOT/cache, else ./cache, as runs use)")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("list", "kind, key, size, date and what of every artifact"),
                       ("verify", "check every artifact's checksum and key; exit 1 if any is bad"),
                       ("clean", "remove the temp files that killed runs left half-written (none a run is writing)"),
                       ("clear", "remove artifacts (with their sidecars, moved-aside corrupt files and stale temp files)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--kind", default=None, help="only this kind (models, datasets, adversarial)")
        if name == "verify":
            p.add_argument("-v", "--verbose", action="store_true", help="also list the sound ones")
        if name in ("clean", "clear"):
            p.add_argument("--yes", action="store_true", help="really remove (without it: say what would go)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = (args.cache_dir or default_cache_dir()).expanduser().resolve()
    if args.cache_dir is not None and not root.is_dir():
        print(f"advlab-cache: error: --cache-dir: {root} is not a directory", file=sys.stderr)
        return 2
    try:
        return {"list": cmd_list, "verify": cmd_verify, "clean": cmd_clean, "clear": cmd_clear}[args.command](root, args)
    except OSError as err:  # removing from a read-only cache, a lock file that cannot be made, ...
        print(f"advlab-cache: error: {err.filename or root}: {err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
