"""Small file helpers for the data modules: every write goes to a temp file and is renamed into place,
so a killed run never leaves a half-written file that a later run would trust."""
from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


def _temp_path_next_to(dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    return Path(tmp)


def gunzip_atomic(src: Path, dst: Path) -> Path:
    """Decompress the gzip file ``src`` into ``dst`` (temp file + rename)."""
    tmp = _temp_path_next_to(dst)
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def copy_atomic(src: Path, dst: Path) -> Path:
    tmp = _temp_path_next_to(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def torch_save_atomic(obj: Any, dst: Path) -> Path:
    tmp = _temp_path_next_to(dst)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


def ensure_decompressed(folder: Path, names: list[str]) -> None:
    """For every ``name`` missing in ``folder`` whose ``name.gz`` is there, write the decompressed file."""
    for name in names:
        plain = folder / name
        packed = folder / f"{name}.gz"
        if not plain.is_file() and packed.is_file():
            gunzip_atomic(packed, plain)
