"""Install the shared real MNIST test files (t10k) into torchvision's layout.

``<shared_dir>/data/mnist-t10k/t10k-{images-idx3,labels-idx1}-ubyte.gz`` are decompressed into
``<data_dir>/MNIST/raw/`` (temp file + rename; files already there are kept), where
``MNISTDataModule(data_dir=<data_dir>, official_split=False)`` reads them. A shared file that is not
what its name says (not gzip, truncated, not an IDX file of its kind) and a data folder that cannot be
written are one line each, naming the file and what is wrong; nothing half-written is left.

advlab-data (advlab.apps.data) is its command line.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import zlib
from pathlib import Path

from advlab.errors import ConfigError
from advlab.utils.io import atomic_path, check_writable, existing_ancestor

log = logging.getLogger(__name__)

T10K_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# IDX: a big-endian magic (0x08 = unsigned bytes, then the number of dimensions), then each dimension
IDX_MAGIC = {"t10k-images-idx3-ubyte": (2051, 3), "t10k-labels-idx1-ubyte": (2049, 1)}


def _check_idx(path: Path, name: str, source: Path) -> None:
    """`path` (the decompressed copy of `source`) is an IDX file of `name`'s kind whose size its header gives."""
    magic, dims = IDX_MAGIC[name]
    with open(path, "rb") as f:
        header = f.read(4 + 4 * dims)
    size = path.stat().st_size
    if len(header) < 4 + 4 * dims or struct.unpack(">I", header[:4])[0] != magic:
        found = struct.unpack(">I", header[:4])[0] if len(header) >= 4 else None
        raise ConfigError(str(source), f"not an MNIST {'images' if dims == 3 else 'labels'} file: its IDX magic number is "
                                       f"{found}, expected {magic}")
    shape = struct.unpack(f">{dims}I", header[4:])
    values = 1
    for d in shape:
        values *= d
    expected = 4 + 4 * dims + values  # one byte a value
    if size != expected:
        raise ConfigError(str(source), f"truncated or padded: its header says {' x '.join(map(str, shape))} values "
                                       f"({expected} bytes), the file has {size} bytes")


def _install(source: Path, dst: Path, name: str, packed: bool) -> None:
    """Decompress (or copy) `source` into `dst` via a temp file, checked before it is renamed into place."""
    try:
        with atomic_path(dst) as tmp:
            with (gzip.open(source, "rb") if packed else open(source, "rb")) as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, length=1 << 20)
            _check_idx(tmp, name, source)
    except gzip.BadGzipFile:
        raise ConfigError(str(source), f"not a gzip file; expected the gzipped MNIST file {name}.gz") from None
    except (EOFError, zlib.error) as err:
        raise ConfigError(str(source), f"damaged gzip file: truncated or corrupt ({' '.join(str(err).split()) or type(err).__name__})") from None
    except ConfigError:
        raise
    except OSError as err:  # reading the shared file (writing dst is atomic_path's WriteError)
        raise ConfigError(str(err.filename or source), f"cannot be read: {err.strerror or err}") from None


def install_shared_mnist(shared_dir: str | Path, data_dir: str | Path) -> Path:
    """Decompress the shared MNIST t10k files into ``<data_dir>/MNIST/raw``; returns that folder. Idempotent."""
    src_dir = Path(shared_dir) / "data" / "mnist-t10k"
    raw = Path(data_dir) / "MNIST" / "raw"
    todo = []
    for name in T10K_FILES:
        dst = raw / name
        if dst.is_file() and dst.stat().st_size > 0:
            continue
        packed, plain = src_dir / f"{name}.gz", src_dir / name
        if not packed.is_file() and not plain.is_file():
            raise ConfigError(
                "shared_dir",
                f"no {name}.gz under {src_dir}; pass the shared folder that holds data/mnist-t10k (e.g. --shared ../shared)",
            )
        todo.append((packed if packed.is_file() else plain, dst, name, packed.is_file()))
    if not todo:
        return raw
    check_writable(raw, "--data", advice="pass a writable data folder (--data)")  # before any file is written
    existed = existing_ancestor(raw)
    try:
        for source, dst, name, packed in todo:
            _install(source, dst, name, packed)
            log.info("installed %s", dst)
    except ConfigError:
        made = Path(os.path.abspath(raw))
        for folder in (made, *made.parents):  # the folders made for nothing, if still empty
            if folder == existed or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
        raise
    return raw
