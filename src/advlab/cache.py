"""Content-addressed cache of expensive artifacts (trained models, crafted datasets).

An artifact is keyed by a hash of exactly the config that determines it. Creation holds a file
lock, so concurrent runs (Hydra multirun with parallel launchers, DDP ranks) build it once and the
others wait and load it; the payload is written to a temp file and renamed, so a killed run never
leaves a half-written artifact behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from omegaconf import DictConfig, ListConfig, OmegaConf

from advlab.errors import ConfigError
from advlab.utils.io import torch_save, write_json

log = logging.getLogger(__name__)


def plain(spec: Any) -> Any:
    """Resolved plain-python copy of a (possibly OmegaConf) spec."""
    if isinstance(spec, (DictConfig, ListConfig)):
        return OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, dict):
        return {str(k): plain(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [plain(v) for v in spec]
    return spec


def spec_key(spec: Any) -> str:
    text = json.dumps(plain(spec), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure_writable(directory: str | os.PathLike, key: str = "paths.cache_dir") -> Path:
    """Create `directory` if needed and prove it is writable, or raise a one-line ConfigError."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as err:
        raise ConfigError(key, f"{path} is not a writable directory ({err.strerror or err}); point {key} at a writable path") from None
    return path


class ArtifactCache:
    def __init__(self, root: str | os.PathLike):
        self.root = ensure_writable(root)

    def path(self, kind: str, spec: Any) -> Path:
        return self.root / kind / f"{spec_key(spec)}.pt"

    def get_or_create(self, kind: str, spec: Any, create: Callable[[], dict], what: str | None = None) -> tuple[dict, bool]:
        """Return (payload, was_cached). `create` builds the payload (a dict of tensors and plain values)."""
        what = what or kind
        target = self.path(kind, spec)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            log.info("Cache hit: reusing %s from %s", what, target)
            return self._load(target), True
        with FileLock(str(target) + ".lock"):
            if target.exists():  # another process built it while we waited for the lock
                log.info("Cache hit: reusing %s from %s (built by a concurrent run)", what, target)
                return self._load(target), True
            log.info("Cache miss: building %s -> %s", what, target)
            payload = create()
            payload = {**payload, "spec": plain(spec)}
            torch_save(payload, target)
            write_json(target.with_suffix(".json"), plain(spec))
            return payload, False

    @staticmethod
    def _load(path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)
