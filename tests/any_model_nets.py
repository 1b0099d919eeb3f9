"""Helpers of tests/test_any_model.py: plain torch modules (not advlab Classifiers) that a spec builds
by `_target_`, CIFAR-10-format batch files, and a stand-in of RobustBench's model zoo (the documented
layout of `robustbench.model_zoo.models.model_dicts`) for machines without the robustbench package."""
from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import numpy as np
import torch
from torch import nn

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class TinyNet(nn.Module):
    """A researcher's own module: pixel-space images -> logits, with BatchNorm statistics and a linear readout."""

    def __init__(self, width: int = 8, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def tiny_net(width: int = 8) -> TinyNet:
    """A builder function (like pyautoattack's ResNet18()): no num_classes key."""
    return TinyNet(width=width)


def not_a_module(width: int = 8):
    """A `_target_` that builds something other than an nn.Module."""
    return {"width": width}


def random_state(net: nn.Module, seed: int) -> nn.Module:
    """`net` in eval mode with seeded random weights and BatchNorm statistics (so that a wrong load
    shows); other buffers (a zoo model's normalisation constants) keep their values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if "running_var" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif "running_mean" in name or name in dict(net.named_parameters()):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3)
    return net.eval()


def write_cifar_batches(root: Path, x_test: torch.Tensor, y_test: list[int], per_batch: int = 4) -> None:
    """<root>/cifar-10-batches-py with the given test images (uint8-exact floats in [0, 1]) and five tiny
    training batches, in the pickled layout torchvision's CIFAR10 reads."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def dump(name, rows, labels):
        entry = {"batch_label": name, "labels": [int(v) for v in labels], "data": rows,
                 "filenames": [f"{name}_{i}.png" for i in range(len(labels))]}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)

    for b in range(5):
        dump(f"data_batch_{b + 1}", rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), [(b + i) % 10 for i in range(per_batch)])
    rows = (x_test * 255).round().to(torch.uint8).reshape(len(x_test), 3072).numpy()
    dump("test_batch", rows, y_test)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)


def class_images(net: nn.Module, n: int, seed: int = 0, steps: int = 4) -> tuple[torch.Tensor, list[int]]:
    """`n` smooth images in [0, 1] (multiples of 1/255, as a CIFAR file stores them) pushed towards the
    classes 0, 1, ..., 9, 0, ... by a few signed-gradient steps of 0.01 on `net` (not further: an attack
    of ε = 0.03 must still be able to move them); returns (images, net's labels)."""
    gen = torch.Generator().manual_seed(seed)
    x = nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=gen), size=32, mode="bilinear", align_corners=False)
    target = torch.arange(n) % 10
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(net(x), target)
        (grad,) = torch.autograd.grad(loss, x)
        x = (x - 0.01 * grad.sign()).clamp(0, 1)
    x = (x.detach() * 255).round() / 255
    with torch.no_grad():
        labels = net(x).argmax(1).tolist()
    return x, labels


ZOO_SOURCE = '''
"""A stand-in of RobustBench's zoo (tests only): model_dicts[BenchmarkDataset][ThreatModel][name] ->
{"model": a constructor, "gdrive_id": one id, or a list for an ensemble}, as robustbench 1.1 lays it out."""
from collections import OrderedDict
from enum import Enum

import torch
from torch import nn


class BenchmarkDataset(Enum):
    cifar_10 = "cifar10"
    cifar_100 = "cifar100"


class ThreatModel(Enum):
    Linf = "Linf"
    L2 = "L2"
    corruptions = "corruptions"


class Normalized(nn.Module):
    """A zoo architecture with its own normalisation buffers (which zoo files often lack)."""

    def __init__(self, width=6, num_classes=10):
        super().__init__()
        self.register_buffer("mu", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv((x - self.mu) / self.sigma)))
        return self.fc(x.mean((2, 3)))


linf = OrderedDict([("Standard", {"model": lambda: Normalized(), "gdrive_id": "one-file"}),
                    ("Wide2021Made", {"model": lambda: Normalized(width=12), "gdrive_id": "one-file"}),
                    ("Pair2020Ensemble", {"model": lambda: Normalized(), "gdrive_id": ["first", "second"]})])
model_dicts = OrderedDict([
    (BenchmarkDataset.cifar_10, OrderedDict([(ThreatModel.Linf, linf),
                                             (ThreatModel.L2, OrderedDict([("Standard", {"model": lambda: Normalized(), "gdrive_id": "x"})]))])),
    (BenchmarkDataset.cifar_100, OrderedDict([(ThreatModel.Linf, OrderedDict([("Standard", {"model": lambda: Normalized(num_classes=100),
                                                                                             "gdrive_id": "x"})]))])),
])
'''


def write_zoo_stand_in(root: Path) -> Path:
    """<root>/robustbench/: a package importable as `robustbench` (put `root` first on sys.path)."""
    package = root / "robustbench"
    (package / "model_zoo").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model_zoo" / "__init__.py").write_text("from .models import model_dicts  # noqa: F401\n")
    (package / "model_zoo" / "models.py").write_text(textwrap.dedent(ZOO_SOURCE))
    return root
