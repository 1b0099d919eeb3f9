"""Published and external models: a weight file plus an architecture and its input normalisation.

A model spec with ``method: external`` (conf/spec/external.yaml) is not trained::

    method: external
    weights: path/to/model.pt           # a state dict, or a checkpoint holding one (RobustBench style)
    arch: {_target_: advlab.models.external.TorchvisionClassifier, builder: resnet18}   # or an advlab arch
    normalize: {mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26]}   # null: the inputs as they are

The normalisation is the model's first layer (``Classifier``), so attacks stay in pixel space. The
file is read with ``weights_only=True``; ``{state_dict | model_state_dict: ...}`` wrappers and
``module.`` prefixes (DataParallel) are removed. The cache key names the file by its sha256.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from advlab.errors import ConfigError
from advlab.models.base import Classifier

TORCHVISION = "advlab.models.external.TorchvisionClassifier"
_WRAPPERS = ("state_dict", "model_state_dict")


def torchvision_builders() -> list[str]:
    """torchvision's classification builders (torchvision.models.<name>)."""
    from torchvision import models

    return sorted(models.list_models(module=models))


class TorchvisionClassifier(Classifier):
    """``torchvision.models.<builder>(weights=None, num_classes=...)`` behind advlab's normalisation
    layer; one-channel images are repeated to the channels the first convolution takes."""

    def __init__(self, input_shape, num_classes: int, builder: str = "resnet18", normalize: str = "standardize",
                 mean=None, std=None, **kwargs):
        super().__init__(input_shape, num_classes, normalize, mean, std)
        if len(self.input_shape) != 3:
            raise ConfigError("arch", f"torchvision.models.{builder} takes image inputs (C, H, W), the data has "
                                      f"{self.input_shape}; allowed: image datasets")
        builders = torchvision_builders()
        if builder not in builders:
            raise ConfigError("arch.builder", f"unknown builder {builder!r}; allowed: {', '.join(builders)}")
        from torchvision import models

        self.builder = builder
        self.net = models.get_model(builder, weights=None, num_classes=self.num_classes, **kwargs)
        convs = [m for m in self.net.modules() if isinstance(m, nn.Conv2d)]
        self.channels = convs[0].in_channels if convs else self.input_shape[0]
        self.readout = [m for m in self.net.modules() if isinstance(m, nn.Linear)][-1]

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 and self.channels != 1 else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self._channels(x))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last linear layer (the readout)."""
        seen = []
        hook = self.readout.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            self.net(self._channels(x))
        finally:
            hook.remove()
        return seen[-1].flatten(1)


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


def read_state_dict(path: Path, key: str) -> dict:
    """{name: tensor} of a state-dict file or of a checkpoint wrapping one, without `module.` prefixes."""
    from advlab.utils.safe_io import UnsafeFileError, load_torch

    data = load_torch(path, key=key)
    if isinstance(data, dict):
        wrapped = next((data[k] for k in _WRAPPERS if isinstance(data.get(k), dict)), None)
        data = wrapped if wrapped is not None else data
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UnsafeFileError(path, f"not a state dict (name -> tensor) nor a checkpoint with {' / '.join(_WRAPPERS)}", key)
    out = {}
    for name, value in data.items():
        while name.startswith("module."):
            name = name[len("module."):]
        out[name] = value
    return out


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


def check_spec(spec, where: str) -> Path:
    """Pre-flight of an external spec: the file exists, a torchvision builder is known, normalize is sound."""
    path = weights_file(spec.get("weights"), f"{where}.weights")
    arch = spec.get("arch") or {}
    if arch.get("_target_") == TORCHVISION:
        builder = arch.get("builder", "resnet18")
        builders = torchvision_builders()
        if builder not in builders:
            raise ConfigError(f"{where}.arch.builder", f"unknown builder {builder!r}; allowed: {', '.join(builders)}")
    check_normalize(spec.get("normalize"), f"{where}.normalize")
    return path


def external_key(spec, datamodule, where: str) -> dict:
    """What identifies an external model: the file's content, architecture, normalisation, data shape."""
    from advlab.cache import plain

    path = check_spec(spec, where)
    return {"method": "external", "weights_sha256": sha256(path), "arch": plain(spec.get("arch")),
            "normalize": plain(spec.get("normalize")), "input_shape": list(datamodule.input_shape),
            "num_classes": int(datamodule.num_classes)}


def load_external(spec, datamodule, where: str) -> Classifier:
    """The spec's model with the file's weights (eval mode, CPU)."""
    from hydra.utils import instantiate

    path = check_spec(spec, where)
    stats = check_normalize(spec.get("normalize"), f"{where}.normalize")
    mean, std = stats if stats is not None else (None, None)
    factory = instantiate(spec.arch, _partial_=True)
    model = factory(input_shape=datamodule.input_shape, num_classes=datamodule.num_classes, mean=mean, std=std)
    state = read_state_dict(path, f"{where}.weights")
    if isinstance(model, TorchvisionClassifier):
        target = model.net
    else:  # advlab's own classifier: the spec's normalisation, else the file's, else none
        target = model
        for buffer in ("mean", "std"):
            if stats is not None or buffer not in state:
                state[buffer] = getattr(model, buffer)
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensor shapes that differ
        detail = " ".join(str(err).split("\n\t")[1:2]).strip() or str(err).splitlines()[0]
        raise ConfigError(f"{where}.weights", f"{path} does not fit the architecture: {detail[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        missing, unexpected = result.missing_keys, result.unexpected_keys
        raise ConfigError(f"{where}.weights", f"{path} does not fit the architecture: {len(missing)} missing "
                          f"(e.g. {', '.join(missing[:3]) or '-'}), {len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'})")
    return model.eval()
