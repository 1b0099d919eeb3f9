"""Install the shared real MNIST test files (t10k) into torchvision's layout.

``<shared_dir>/data/mnist-t10k/t10k-{images-idx3,labels-idx1}-ubyte.gz`` are decompressed into
``<data_dir>/MNIST/raw/`` (temp file + rename; files already there are kept), where
``MNISTDataModule(data_dir=<data_dir>, official_split=False)`` reads them.

    advlab-data --shared ../shared --data data
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from advlab.data._io import copy_atomic, gunzip_atomic
from advlab.errors import ConfigError

log = logging.getLogger(__name__)

T10K_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def install_shared_mnist(shared_dir: str | Path, data_dir: str | Path) -> Path:
    """Decompress the shared MNIST t10k files into ``<data_dir>/MNIST/raw``; returns that folder. Idempotent."""
    src_dir = Path(shared_dir) / "data" / "mnist-t10k"
    raw = Path(data_dir) / "MNIST" / "raw"
    for name in T10K_FILES:
        dst = raw / name
        if dst.is_file() and dst.stat().st_size > 0:
            continue
        packed, plain = src_dir / f"{name}.gz", src_dir / name
        if packed.is_file():
            gunzip_atomic(packed, dst)
        elif plain.is_file():
            copy_atomic(plain, dst)
        else:
            raise ConfigError(
                "shared_dir",
                f"no {name}.gz under {src_dir}; pass the shared folder that holds data/mnist-t10k (e.g. --shared ../shared)",
            )
        log.info("installed %s", dst)
    return raw


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared", help="the shared folder (holds data/mnist-t10k)")
    parser.add_argument("--data", default="data", help="the data folder (paths.data_dir)")
    args = parser.parse_args(argv)
    try:
        raw = install_shared_mnist(args.shared, args.data)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"MNIST t10k files in {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
