"""Content-addressed cache of expensive artifacts (trained models, crafted datasets).

An artifact is keyed by a hash of exactly the config that determines it. Creation holds a file
lock, so concurrent runs (Hydra multirun with parallel launchers, DDP ranks) build it once and the
others wait and load it; the payload is written to a temp file and renamed, so a killed run never
leaves a half-written artifact behind.

Every artifact is verified before use. ``<kind>/<key>.pt`` holds the payload, its full key (the spec,
``payload["spec"]``) and, under ``_cache``, a sha256 of the payload's content (tensor bytes, dtypes,
shapes and plain values, the spec included). One file, so key, payload and checksum are replaced
together by one rename. A file that cannot be read (truncated, garbage, a pickle naming anything but
tensors and containers), whose checksum mismatches, or that holds another key's artifact is logged
once, moved aside to ``<key>.pt.corrupt-<UTC time>`` and rebuilt. ``<key>.json`` beside it is a
readable copy of the spec with what/when (for ``advlab-cache list``); it is never trusted.

A build keeps its progress in ``<kind>/.<key>.partial/`` (`partial_dir()`): a model's last completed
epoch (``last.ckpt``), a crafted set's batches so far. It is read and written only under the
artifact's lock and removed once the artifact is written, so a build stopped by a signal, a kill -9
or a lost node resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, ListConfig, OmegaConf

from advlab.utils.io import WriteError, check_writable, torch_save, write_json
from advlab.utils.safe_io import UnsafeFileError, load_torch

log = logging.getLogger(__name__)

META = "_cache"  # payload entry with the checksum; not returned to callers
FORMAT = 1
WAIT_LOG_INTERVAL_S = 30.0  # a waiting run says whom it waits for this often
HASH_CHUNK = 1 << 24
PARTIAL_SUFFIX = ".partial"
_BUILDING: contextvars.ContextVar[Path | None] = contextvars.ContextVar("advlab_cache_partial_dir", default=None)


def partial_dir() -> Path | None:
    """Where the artifact this process is building (`ArtifactCache.get_or_create`'s `create`) keeps its
    resumable progress, under the artifact's lock: ``<kind>/.<key>.partial/``; None outside a build."""
    return _BUILDING.get()


def partial_path(target: Path) -> Path:
    """The progress directory of the artifact file `target` (``<kind>/<key>.pt``)."""
    return target.with_name(f".{target.stem}{PARTIAL_SUFFIX}")


def plain(spec: Any) -> Any:
    """Resolved plain-python copy of a (possibly OmegaConf) spec."""
    if isinstance(spec, (DictConfig, ListConfig)):
        return OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, dict):
        return {str(k): plain(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [plain(v) for v in spec]
    return spec


def canonical(spec: Any) -> str:
    return json.dumps(plain(spec), sort_keys=True, default=str)


def spec_key(spec: Any) -> str:
    return hashlib.sha256(canonical(spec).encode()).hexdigest()[:16]


def _bytes_digest(buf: memoryview) -> bytes:
    """sha256 of a large buffer as the sha256 of its 16 MB chunks' sha256s, hashed in threads
    (hashlib releases the GIL): a verified cache hit of a CIFAR-sized set costs far less than one core's pass."""
    chunks = [buf[i : i + HASH_CHUNK] for i in range(0, len(buf), HASH_CHUNK)]
    if len(chunks) <= 1:
        return hashlib.sha256(buf).digest()
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1, 8)) as pool:
        return hashlib.sha256(b"".join(pool.map(lambda c: hashlib.sha256(c).digest(), chunks))).digest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(_bytes_digest(memoryview(t.reshape(-1).view(torch.uint8).numpy())))
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(("V" + json.dumps(obj, sort_keys=True, default=str) + ";").encode())


def content_sha256(payload: dict) -> str:
    """sha256 of a payload's content; the same before saving and after loading."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != META})
    return h.hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_artifact(path: Path, spec: Any = None) -> tuple[dict | None, str | None]:
    """(payload without its checksum, None) for a sound artifact, else (None, what is wrong). With
    `spec`, the stored key must be that spec; without it, it must be the one the file name says."""
    try:
        data = load_torch(path)
    except UnsafeFileError as err:
        return None, err.reason
    meta = data.get(META) if isinstance(data, dict) else None
    if not isinstance(meta, dict) or "sha256" not in meta or "spec" not in data:
        return None, "not a verifiable advlab cache artifact (no stored key or checksum)"
    payload = {k: v for k, v in data.items() if k != META}
    actual = content_sha256(payload)
    if actual != meta["sha256"]:
        return None, f"checksum mismatch (stored {str(meta['sha256'])[:12]}…, content {actual[:12]}…)"
    stored = spec_key(payload["spec"])
    wanted = spec_key(spec) if spec is not None else path.stem
    if stored != wanted or (spec is not None and canonical(payload["spec"]) != canonical(spec)):
        return None, f"holds the artifact of another key ({stored}, expected {wanted})"
    return payload, None


def move_aside(path: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, aside)
    return aside


def ensure_writable(directory: str | os.PathLike, key: str = "paths.cache_dir") -> Path:
    """Create `directory` if needed and prove that it takes real bytes (a probe file of 64 KiB, flushed:
    an empty file would still fit on a full disk), or raise a one-line ConfigError naming the cause."""
    return check_writable(directory, key, create=True, advice=f"point {key} at a writable path")


def _owner_text(owner: Path) -> str:
    try:
        info = json.loads(owner.read_text())
        host = f" on {info['host']}" if info.get("host") != socket.gethostname() else ""
        return f"pid {info['pid']}{host} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another run (it has not recorded its pid yet)"


@contextlib.contextmanager
def build_lock(target: Path, what: str):
    """Hold `<target>.lock`; while another run holds it, log whom we wait for every WAIT_LOG_INTERVAL_S."""
    lock = FileLock(str(target) + ".lock")
    owner = Path(str(target) + ".lock.owner")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        while True:
            log.info("Waiting for %s, built by %s (lock %s)", what, _owner_text(owner), lock.lock_file)
            try:
                lock.acquire(timeout=WAIT_LOG_INTERVAL_S)
                break
            except Timeout:
                continue
    try:
        write_json(owner, {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), "what": what})
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


class ArtifactCache:
    def __init__(self, root: str | os.PathLike):
        self.root = ensure_writable(root)
        # {file: (kind, what)} of every entry this cache was asked for (taken or built): W&B artifacts of the run
        self.used: dict[Path, tuple[str, str]] = {}

    def path(self, kind: str, spec: Any) -> Path:
        return self.root / kind / f"{spec_key(spec)}.pt"

    def get_or_create(self, kind: str, spec: Any, create: Callable[[], dict], what: str | None = None) -> tuple[dict, bool]:
        """Return (payload, was_cached). `create` builds the payload (a dict of tensors and plain values)."""
        what = what or kind
        target = self.path(kind, spec)
        self.used[target] = (kind, what)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            payload, problem = check_artifact(target, spec)
            if payload is not None:
                log.info("Cache hit: reusing %s from %s", what, target)
                return payload, True
            # a bad file is moved aside only under the lock: a concurrent builder may be replacing it
        with build_lock(target, what):
            if target.exists():
                payload, problem = check_artifact(target, spec)
                if payload is not None:  # another process built it while we waited for the lock
                    log.info("Cache hit: reusing %s from %s (built by a concurrent run)", what, target)
                    return payload, True
                with contextlib.suppress(FileNotFoundError):  # unless `advlab-cache clear` just removed it
                    aside = move_aside(target)
                    log.warning("Cache: %s is unusable (%s); moved aside to %s, rebuilding %s", target, problem, aside.name, what)
            partial = partial_path(target)
            log.info("Cache miss: building %s -> %s%s", what, target,
                     f" (resuming from {partial.name})" if partial.is_dir() and any(partial.iterdir()) else "")
            started = time.time()
            token = _BUILDING.set(partial)
            try:
                payload = {**create(), "spec": plain(spec)}
            finally:
                _BUILDING.reset(token)
            self._save(target, kind, payload, what, time.time() - started)
            shutil.rmtree(partial, ignore_errors=True)  # its progress is in the artifact now
            return payload, False

    @staticmethod
    def _save(target: Path, kind: str, payload: dict, what: str, seconds: float) -> None:
        meta = {"format": FORMAT, "sha256": content_sha256(payload), "kind": kind, "what": what, "created": utc_now()}
        # sidecar first: whoever sees the .pt finds a sidecar describing it
        write_json(target.with_suffix(".json"), {**meta, "build_seconds": round(seconds, 3), "spec": payload["spec"]})
        try:
            torch_save({**payload, META: meta}, target)
        except WriteError:  # a full disk: no sidecar describing an artifact that is not there
            if not target.exists():
                target.with_suffix(".json").unlink(missing_ok=True)
            raise
