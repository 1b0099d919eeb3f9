"""Small file helpers for the data modules: every write goes to a temp file and is renamed into place,
so a killed run never leaves a half-written file that a later run would trust."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from advlab.utils.io import atomic_path, torch_save


def gunzip_atomic(src: Path, dst: Path) -> Path:
    """Decompress the gzip file ``src`` into ``dst`` (temp file + rename)."""
    with atomic_path(dst) as tmp, gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, length=1 << 20)
    return dst


def copy_atomic(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def torch_save_atomic(obj, dst: Path) -> Path:
    torch_save(obj, dst)
    return dst


def ensure_decompressed(folder: Path, names: list[str]) -> None:
    """For every ``name`` missing in ``folder`` whose ``name.gz`` is there, write the decompressed file."""
    for name in names:
        plain = folder / name
        packed = folder / f"{name}.gz"
        if not plain.is_file() and packed.is_file():
            gunzip_atomic(packed, plain)
