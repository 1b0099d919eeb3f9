"""Loading files that hold pickles without running their code.

A pickle can name any importable callable, so loading one from a shared directory or someone else's
run would execute whatever it names. Torch files are read with ``weights_only=True`` (tensors and
plain containers only); CIFAR-10 batches with an unpickler that admits numpy arrays and nothing else.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from advlab.errors import ConfigError

try:  # numpy >= 2 pickles name numpy._core, older ones numpy.core; both are this function
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


class UnsafeFileError(ConfigError):
    """A file refused because loading it would run code, or unreadable (truncated, not that format)."""

    def __init__(self, path: str | os.PathLike, message: str, key: str | None = None):
        self.path, self.reason = Path(path), message
        super().__init__(key or str(path), message if key is None else f"{path}: {message}")


def _one_line(err: BaseException) -> str:
    """The gist of an error; torch's weights_only refusal is a paragraph of advice around one name."""
    text = str(err)
    found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if found:
        return f"it names {found.group(1).rstrip('.')}"
    paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.startswith("Weights only load failed")]
    return " ".join((paragraphs[0] if paragraphs else text).split())[:200] or type(err).__name__


def load_torch(path: str | os.PathLike, key: str | None = None, mmap: bool = False) -> Any:
    """torch.load(path, weights_only=True) on CPU; a refused or unreadable file raises one
    UnsafeFileError (a ConfigError) naming the file."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # garbage read as a legacy pickle: damaged, not dangerous
            raise UnsafeFileError(path, f"cannot be read: damaged or not a PyTorch file ({_one_line(err)})", key) from None
        raise UnsafeFileError(path, "refused: it holds objects other than tensors and plain containers, "
                                    f"which could run code when loaded ({_one_line(err)})", key) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as err:
        raise UnsafeFileError(path, f"cannot be read: truncated or not a PyTorch file ({_one_line(err)})", key) from None


class Refused(pickle.UnpicklingError):
    """The pickle names something the unpickler does not admit (as opposed to being damaged)."""


def _latin1_bytes(text: str, encoding: str) -> bytes:
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(<str>, "latin1"); nothing else is allowed
    if encoding != "latin1" or not isinstance(text, str):
        raise Refused(f"it calls _codecs.encode with {encoding!r}")
    return text.encode("latin1")


class ArrayUnpickler(pickle.Unpickler):
    """Admits only numpy array reconstruction (what CIFAR-10 batches hold besides builtins)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"it names {module}.{name}") from None


def load_array_pickle(path: str | os.PathLike, key: str | None = None) -> Any:
    """A pickle of builtins and numpy arrays (CIFAR-10's batches), read as torchvision does
    (encoding latin1); anything else raises one UnsafeFileError naming the file."""
    try:
        data = Path(path).read_bytes()
        return ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Refused as err:
        raise UnsafeFileError(path, f"refused: the pickle holds more than numpy arrays and builtins, "
                                    f"which could run code when loaded ({_one_line(err)})", key) from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise UnsafeFileError(path, f"cannot be read: truncated or not a pickle ({_one_line(err)})", key) from None
