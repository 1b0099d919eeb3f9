"""advlab-data: install the shared real MNIST test files (t10k) into torchvision's layout.

    advlab-data --shared ../shared --data data
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from advlab.data.mnist_t10k import install_shared_mnist
from advlab.errors import ConfigError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="advlab-data", description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default="../shared", help="the shared folder (holds data/mnist-t10k)")
    parser.add_argument("--data", default="data", help="the data folder (paths.data_dir)")
    args = parser.parse_args(argv)
    try:
        raw = install_shared_mnist(args.shared, args.data)
    except ConfigError as exc:
        print(f"advlab-data: error: {exc}", file=sys.stderr)
        return 2
    print(f"MNIST t10k files in {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
