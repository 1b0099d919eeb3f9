"""Any architecture behind advlab's model interface, and the weight-file handling that external models
(advlab.models.external) and RobustBench's zoo (advlab.models.zoo) share.

An architecture is any ``_target_`` that builds a ``torch.nn.Module``. Its signature decides how it
is called (no list of names): one that takes ``input_shape`` is an advlab ``Classifier`` and gets
the data's shape, classes and normalisation; any other module is called with its own keys (plus
``num_classes``, the data's, where it takes one the node does not set) and is wrapped in
``ModuleClassifier``, whose first layer is the optional normalisation. Either must map pixel-space
inputs ([0, 1] images) to logits.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
from pathlib import Path

import torch
from torch import nn

from advlab.errors import ConfigError
from advlab.models.base import Classifier

_WRAPPERS = ("state_dict", "model_state_dict")
BUILDS = "allowed: an importable class or function that returns a torch.nn.Module mapping [0, 1] inputs to logits"


def _one_line(err: BaseException, limit: int = 240) -> str:
    return " ".join(str(err).split())[:limit] or type(err).__name__


def readout_input(net: nn.Module, readout: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `readout` (the last linear layer) receives when `net` runs on `x`: the penultimate layer."""
    seen = []
    hook = readout.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        net(x)
    finally:
        hook.remove()
    return seen[-1].flatten(1)


class ModuleClassifier(Classifier):
    """A plain ``nn.Module`` (pixel-space inputs -> logits) behind advlab's normalisation layer. Its
    weights are ``net``'s: a weight file names the module's own keys."""

    def __init__(self, net: nn.Module, input_shape, num_classes: int, mean=None, std=None):
        super().__init__(input_shape, num_classes, "standardize", mean, std)  # no mean/std: the identity
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the module's last ``nn.Linear`` (taken as its readout)."""
        linears = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise NotImplementedError(f"{type(self.net).__name__} has no nn.Linear readout: no penultimate layer to read")
        return readout_input(self.net, linears[-1], x)


def _import(path: str):
    """The object at a dotted path, as Hydra's instantiate finds a `_target_` (hydra.utils.get_object
    would also log the failure: the error must stay one line)."""
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, part)
        except AttributeError:  # a submodule not imported by its package
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError as err:
                if err.name != ".".join(parts[:i]):  # the submodule's own import failed
                    raise
                raise AttributeError(f"{'.'.join(parts[:i - 1])} has no attribute {part!r}") from None
    return obj


def locate(arch, key: str):
    """The class or function an architecture node names (one-line error when it cannot be imported)."""
    path = arch.get("_target_") if hasattr(arch, "get") else None
    if not path:
        raise ConfigError(key, f"expected an architecture node with a `_target_`, got {arch!r}; {BUILDS}")
    try:
        target = _import(str(path))
    except Exception as err:  # ImportError, AttributeError, an error of the imported module, ...
        raise ConfigError(f"{key}._target_", f"cannot import {path!r} ({_one_line(err, 160)}); {BUILDS}") from None
    if not callable(target) or (inspect.isclass(target) and not issubclass(target, nn.Module)):
        raise ConfigError(f"{key}._target_", f"{path} is not a torch.nn.Module class nor a function building one; {BUILDS}")
    return target


def signature_names(target) -> tuple[set[str], bool]:
    """(named parameters, whether it takes **kwargs) of a class's constructor or a function."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return set(), True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def build_classifier(arch, data, mean, std, key: str) -> Classifier:
    """The architecture node built for `data` (input_shape, num_classes): an advlab Classifier as it is,
    any other module wrapped in ModuleClassifier with the (mean, std) normalisation."""
    from hydra.utils import instantiate

    target = locate(arch, key)
    names, any_kwargs = signature_names(target)
    takes_shape = "input_shape" in names
    if takes_shape:  # an advlab Classifier: the data's shape, classes and the normalisation
        extra = {k: v for k, v in (("mean", mean), ("std", std)) if k in names or any_kwargs}
        extra.update(input_shape=data.input_shape, num_classes=data.num_classes)
    else:  # a plain module: its own keys, and the data's classes where it takes them and the node sets none
        extra = {"num_classes": int(data.num_classes)} if "num_classes" in names and "num_classes" not in arch else {}
    try:
        model = instantiate(arch, _partial_=True)(**extra)
    except ConfigError as err:  # an advlab Classifier names its parameter: here, at the node `key`
        raise err.under(key, "arch") from None
    except Exception as err:  # a constructor's TypeError (unknown keys), ValueError, ...
        raise ConfigError(key, f"building {arch['_target_']} failed: {_one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}._target_", f"{arch['_target_']} built a {type(model).__name__}, not a torch.nn.Module; {BUILDS}")
    if takes_shape and isinstance(model, Classifier):
        return model
    return ModuleClassifier(model, data.input_shape, data.num_classes, mean, std)


def check_logits(model: nn.Module, data, key: str) -> None:
    """One forward pass of a zero input of the data's shape: the model must return (1, classes) logits."""
    shape, n = tuple(data.input_shape), int(data.num_classes)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *shape))
    except Exception as err:
        raise ConfigError(key, f"the model cannot take the data's inputs {shape}: {_one_line(err, 200)}") from None
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (1, n):
        raise ConfigError(key, f"the model returns {got} for one input of shape {shape}; allowed: logits of shape (N, {n}), "
                               f"the data's {n} classes")


def weights_file(value, key: str) -> Path:
    """The weight file a spec names, which must exist (one-line error otherwise)."""
    if value is None or str(value).strip() in ("", "???"):
        raise ConfigError(key, "is required: the path of the model's state-dict file (.pt / .pth)")
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(key, f"{path} does not exist; give the path of a state-dict file (.pt / .pth)")
    return path.resolve()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, key: str, wrappers=_WRAPPERS) -> dict:
    """{name: tensor} of a state-dict file or of a checkpoint wrapping one (`wrappers`), without
    `module.` prefixes; read with weights_only=True."""
    from advlab.utils.safe_io import UnsafeFileError, load_torch

    data = load_torch(path, key=key)
    if isinstance(data, dict):
        wrapped = next((data[k] for k in wrappers if isinstance(data.get(k), dict)), None)
        data = wrapped if wrapped is not None else data
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UnsafeFileError(path, f"not a state dict (name -> tensor) nor a checkpoint with {' / '.join(wrappers)}", key)
    out = {}
    for name, value in data.items():
        while name.startswith("module."):
            name = name[len("module."):]
        out[name] = value
    return out


def _examples(names: list[str]) -> str:
    return ", ".join(names[:3]) or "-"


def fit_state_dict(target: nn.Module, state: dict, path: Path, key: str, optional=()) -> None:
    """Load `state` into `target`; a file that does not fit (tensor shapes, missing or unexpected keys,
    except the `optional` missing ones) is one ConfigError naming the first few keys."""
    own = target.state_dict()
    shapes = [f"{k} {list(v.shape)} vs {list(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shapes:
        raise ConfigError(key, f"{path} does not fit the architecture: {len(shapes)} tensor(s) of another shape "
                               f"(file vs model, e.g. {_examples(shapes)})")
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in optional]
    unexpected = result.unexpected_keys
    if missing or unexpected:
        raise ConfigError(key, f"{path} does not fit the architecture: {len(missing)} missing (e.g. {_examples(missing)}), "
                               f"{len(unexpected)} unexpected (e.g. {_examples(unexpected)})")


def check_normalize(node, key: str) -> tuple[list[float], list[float]] | None:
    """(mean, std) of a spec's `normalize` node, or None."""
    if node is None:
        return None
    try:
        mean, std = [float(v) for v in node["mean"]], [float(v) for v in node["std"]]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(key, f"expected null or {{mean: [numbers], std: [numbers]}}, got {node!r}") from None
    if len(mean) != len(std) or not mean or min(std) <= 0:
        raise ConfigError(key, f"mean and std need the same length (one value or one per channel) and std > 0, got {node!r}")
    return mean, std
