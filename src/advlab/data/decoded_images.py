"""Image files decoded into one uint8 tensor, and the tensor cache that keeps them between runs
(the CIFAR-10 JPEG copy, ImageNet-style folders).

Decoding: ``torchvision.io.decode_image`` (libjpeg, libpng, WebP, GIF) into RGB uint8 (3, H, W); a
file those decoders refuse (BMP, TIFF, ...) goes through PIL, the loader of torchvision's
``ImageFolder``. The cache is one torch file of plain tensors, lists and numbers: written to a temp
file and renamed, read back with ``weights_only=True``; its ``version`` and whatever its owner records
of the inputs (``is_current``) say whether it may be trusted; a file lock beside it makes concurrent
runs build it once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from filelock import FileLock
from torchvision.datasets.folder import default_loader
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2 import functional as TF

from advlab.data._io import torch_save_atomic
from advlab.utils.progress import progress_bar

log = logging.getLogger(__name__)

Decoder = Callable[[str], torch.Tensor]


def decode_rgb(path: str, pil_loader: Callable[[str], Any] = default_loader) -> torch.Tensor:
    """The image file at ``path`` as RGB uint8 (3, H, W) (grey, palette and CMYK files converted)."""
    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision.io does not decode: PIL reads it
        img = pil_loader(path).convert("RGB")
        return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3).permute(2, 0, 1)


def resize_center_crop(img: torch.Tensor, shorter_side: int, size: int) -> torch.Tensor:
    """``img`` (uint8, C×H×W) with its shorter side resized to ``shorter_side`` (antialiased, aspect
    kept) and the central ``size``×``size`` square cut out. An image already of that size is unchanged."""
    if min(img.shape[-2:]) != shorter_side:
        img = TF.resize(img, [shorter_side], antialias=True)
    return TF.center_crop(img, [size, size])


def decode_stack(paths: Sequence[str], decode: Decoder, desc: str) -> torch.Tensor:
    """Every file of ``paths`` decoded by ``decode`` into one uint8 tensor (N, C, H, W); all must have
    the first one's shape (a ValueError names the first that does not)."""
    n = len(paths)
    if n == 0:
        raise ValueError(f"{desc}: no images")
    first = decode(paths[0])
    x = torch.empty((n, *first.shape), dtype=torch.uint8)
    with progress_bar(total=n, desc=desc, unit="img", mininterval=1.0) as bar:
        for i in range(n):
            img = first if i == 0 else decode(paths[i])
            if img.shape != first.shape:
                raise ValueError(f"{paths[i]}: shape {tuple(img.shape)} != {tuple(first.shape)}")
            x[i] = img
            if i % 1000 == 999 or i == n - 1:
                bar.update(i + 1 - bar.n)
    return x


def read_cache(path: Path, version: int, mmap: bool = True) -> Optional[dict[str, Any]]:
    """The cache file's contents when it is there, readable as plain data and of ``version``; else
    None (a foreign or damaged file is rebuilt, with a warning). ``mmap``: tensors stay on disk until
    touched, so reading only the header is cheap."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # unreadable / foreign file: rebuild it
        log.warning("%s: unreadable cache (%s); rebuilding it", path, exc)
        return None
    if not isinstance(data, dict) or data.get("version") != version:
        return None
    return data


def build_cache_once(path: Path, is_current: Callable[[], bool], build: Callable[[], dict[str, Any]]) -> bool:
    """Write ``build()`` to ``path`` (temp file + rename) unless ``is_current()``; under a file lock, so
    that runs started together build it once. Returns whether this call built it."""
    if is_current():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        if is_current():  # another run built it while we waited
            return False
        torch_save_atomic(build(), path)
    log.info("wrote the tensor cache %s", path)
    return True
