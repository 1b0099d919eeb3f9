"""Published and external models: a weight file plus an architecture and its input normalisation.

A model spec with ``method: external`` (conf/spec/external.yaml) is not trained::

    method: external
    weights: path/to/model.pt           # a state dict, or a checkpoint holding one (RobustBench style)
    arch: {_target_: advlab.models.external.TorchvisionClassifier, builder: resnet18}   # or an advlab arch
    normalize: {mean: [0.49, 0.48, 0.45], std: [0.25, 0.24, 0.26]}   # null: the inputs as they are

``arch`` may be any ``_target_`` building a ``torch.nn.Module`` that maps pixel-space inputs to logits
(a researcher's own class, a timm builder, ...): advlab.models.loading decides by its signature how
to build it and wraps a plain module in ``ModuleClassifier``. RobustBench's zoo by name is the
`robustbench` spec (advlab.models.zoo). The normalisation is the model's first layer
(``Classifier``), so attacks stay in pixel space. The file is read with ``weights_only=True``;
``{state_dict | model_state_dict: ...}`` wrappers and ``module.`` prefixes (DataParallel) are
removed. The cache key names the file by its sha256, the architecture by its node.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from advlab.errors import ConfigError
from advlab.models.base import Classifier
from advlab.models.loading import (ModuleClassifier, build_classifier, check_logits, check_normalize, fit_state_dict, locate,
                                   read_state_dict, readout_input, sha256, weights_file)
from advlab.models.zoo import is_zoo, load_zoo, zoo_entry, zoo_identity

__all__ = ["ModuleClassifier", "TorchvisionClassifier", "check_normalize", "check_spec", "external_key", "load_external",
           "preflight_load", "read_state_dict", "sha256", "torchvision_builders", "weights_file", "weights_source"]

TORCHVISION = "advlab.models.external.TorchvisionClassifier"


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
            raise ConfigError("builder", f"unknown builder {builder!r}; allowed: {', '.join(builders)}")
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
        return readout_input(self.net, self.readout, self._channels(x))


def check_spec(spec, where: str) -> Path:
    """Pre-flight of an external spec without the data: its file exists (a zoo entry: the zoo knows it),
    its architecture can be imported (a torchvision builder is known), normalize is sound."""
    check_normalize(spec.get("normalize"), f"{where}.normalize")
    if is_zoo(spec):
        return zoo_entry(spec, where)[2]
    path = weights_file(spec.get("weights"), f"{where}.weights")
    arch = spec.get("arch")
    if arch is not None:  # none: advlab-eval gives the spec the app's `arch`
        locate(arch, f"{where}.arch")
    if hasattr(arch, "get") and arch.get("_target_") == TORCHVISION:
        builder = arch.get("builder", "resnet18")
        builders = torchvision_builders()
        if builder not in builders:
            raise ConfigError(f"{where}.arch.builder", f"unknown builder {builder!r}; allowed: {', '.join(builders)}")
    return path


def weights_source(spec, where: str) -> str:
    """The weight file of an external spec, as the run records it."""
    return str(zoo_entry(spec, where)[2]) if is_zoo(spec) else str(spec.get("weights"))


def external_key(spec, datamodule, where: str) -> dict:
    """What identifies an external model: the file's content, architecture (a zoo entry: its name,
    dataset and threat model), normalisation, data shape."""
    from advlab.artifacts.cache import plain

    path = check_spec(spec, where)
    return {"method": "external", "weights_sha256": sha256(path),
            "arch": zoo_identity(spec, where) if is_zoo(spec) else plain(spec.get("arch")),
            "normalize": plain(spec.get("normalize")), "input_shape": list(datamodule.input_shape),
            "num_classes": int(datamodule.num_classes)}


def load_external(spec, datamodule, where: str) -> Classifier:
    """The spec's model with the file's weights (eval mode, CPU). `datamodule`: anything with the
    data's input_shape and num_classes."""
    path = check_spec(spec, where)
    stats = check_normalize(spec.get("normalize"), f"{where}.normalize")
    mean, std = stats if stats is not None else (None, None)
    if is_zoo(spec):
        model = load_zoo(spec, datamodule, where, mean, std)
        check_logits(model, datamodule, f"{where}.robustbench.dataset")  # the entry's data and this run's differ
        return model.eval()
    model = build_classifier(spec.arch, datamodule, mean, std, f"{where}.arch")
    state = read_state_dict(path, f"{where}.weights")
    if isinstance(model, (TorchvisionClassifier, ModuleClassifier)):
        target = model.net  # the file holds the wrapped module's weights
    else:  # advlab's own classifier: the spec's normalisation, else the file's, else none
        target = model
        for buffer in ("mean", "std"):
            if stats is not None or buffer not in state:
                state[buffer] = getattr(model, buffer)
    fit_state_dict(target, state, path, f"{where}.weights")
    check_logits(model, datamodule, f"{where}.arch")
    return model.eval()


def preflight_load(spec, where: str, datamodule) -> None:
    """The pre-flight of an external spec where the data's shape is known before loading: the model is
    built and its file loaded, so that a file that does not fit is refused before any work."""
    planned = datamodule.planned_shape() if hasattr(datamodule, "planned_shape") else None
    if planned is None or (spec.get("arch") is None and not is_zoo(spec)):
        return  # checked when loaded (advlab-eval gives an external spec without `arch` the app's)
    load_external(spec, SimpleNamespace(input_shape=planned[0], num_classes=planned[1]), where)
