"""Atomic file writes: a reader never sees a half-written file, and a killed run never leaves one in
its place (a kill -9 leaves only the temp file beside it, `.<name>-XXXXXXXX.tmp`: see `advlab-cache clean`).

A write that fails for a reason of the file system (full disk, quota, read-only, no permission) is one
`WriteError` naming the file and the cause, never a traceback: torch.save's own report of a failed write
(`RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`) included. `check_writable`
proves a directory takes real bytes (not only an empty file) before any work starts.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from advlab.errors import ConfigError

# what a failed write or mkdir means, by errno (anything else is not the file system's fault: re-raised)
CAUSES = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a component of the path is a file, not a directory",
    errno.EISDIR: "is a directory",
    errno.EFBIG: "file too large for its file system",
    errno.EIO: "I/O error",
    errno.ENOENT: "no such file or directory",
}
PROBE_BYTES = 64 * 1024  # a probe file's size: a full disk refuses it, an empty file would still fit
PROBE_PREFIX, TMP_SUFFIX = ".advlab-probe-", ".tmp"


class WriteError(ConfigError):
    """A file or directory that cannot be written: one line naming the path and the cause."""

    def __init__(self, path: str | os.PathLike, cause: str, key: str | None = None, advice: str = ""):
        self.path, self.cause = Path(path), cause
        text = f"{path}: {cause}" if key else cause
        super().__init__(key or str(path), text + (f"; {advice}" if advice else ""))


def cause_of(err: OSError) -> str | None:
    """The one-line cause of a file-system error, or None when it is not one of CAUSES."""
    return CAUSES.get(err.errno) if isinstance(err, OSError) else None


def _probe(directory: Path) -> None:
    """Write PROBE_BYTES of real data into a temp file in `directory`, flush it to the disk, remove it."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=PROBE_PREFIX, suffix=TMP_SUFFIX)
    try:
        data = b"\0" * PROBE_BYTES
        written = 0
        while written < len(data):  # a short write means the file system ran out of room
            n = os.write(fd, data[written:])
            if n == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += n
        os.fsync(fd)  # network file systems and quotas report a full disk only here
    finally:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)


def existing_ancestor(path: Path) -> Path:
    """`path` itself when it exists, else its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | os.PathLike, key: str | None = None, create: bool = False, advice: str = "") -> Path:
    """Prove that `path` (a directory) takes real bytes, or raise one WriteError naming it and the cause.
    `create`: make it (and its parents) first; else nothing is created: a missing directory is probed
    at its nearest existing ancestor, where it would be made."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        where = existing_ancestor(path)
        if not where.is_dir():
            raise WriteError(path, f"cannot be made: {where} is a file, not a directory", key, advice)
        _probe(where)
    except OSError as err:
        cause = cause_of(err) or (err.strerror or str(err))
        where = existing_ancestor(path)
        at = "" if where == path else f" (at {where}, where it would be made)"
        raise WriteError(path, f"not writable: {cause}{at}", key, advice) from None
    return path


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which
    would briefly give other threads' new files the wrong mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain new file gets under the current umask (open(..., "w") would give the same)."""
    return 0o666 & ~current_umask()


def _failed_write(path: Path, tmp: Path, err: BaseException) -> WriteError | None:
    """The WriteError behind a failed write of `path` (via its temp `tmp`), or None when the file
    system is not at fault. torch.save says only "unexpected pos": probe the directory while the
    partial temp file still holds its space."""
    if isinstance(err, OSError):
        cause = cause_of(err)
        named = {str(path), str(tmp), None}
        if cause is None or not (err.filename in named or getattr(err, "filename2", None) in named):
            return None  # another file's trouble (a source being read): its own error says which
        return WriteError(path, f"cannot be written: {cause}", advice="nothing was replaced")
    try:
        _probe(tmp.parent)
    except OSError as probed:
        cause = cause_of(probed)
        return WriteError(path, f"cannot be written: {cause}", advice="nothing was replaced") if cause else None
    return None


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; on success rename it over `path`, else remove it. A failure of
    the file system (full disk, read-only, ...) is raised as one WriteError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=TMP_SUFFIX)
    except OSError as err:
        if cause_of(err) is None:
            raise
        raise WriteError(path, f"cannot be written: {cause_of(err)}") from None
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())  # mkstemp makes 0600 files; a shared cache needs the umask's mode
        yield Path(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        failed = _failed_write(path, Path(tmp), err)
        if failed is None:
            raise
        raise failed from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def stale_temp_files(directory: Path) -> list[Path]:
    """The temp files of atomic writes and probes directly in `directory` (`.<name>-XXXXXXXX.tmp`,
    `.advlab-probe-*.tmp`, the older `.probe-*`): what a run killed while writing leaves behind
    (a live writer's too: advlab-cache tells them apart by the artifact's build lock)."""
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.glob(".*")) if p.is_file() and (p.name.endswith(TMP_SUFFIX) or p.name.startswith(".probe-"))]
