"""Layer outputs captured with forward hooks (removed again afterwards), by module name.

Which layers an information-plane analysis watches when none are named (`hook_point`):

* `post_activation` (advlab's default): the outputs of pooling layers, residual blocks, hidden ReLUs
  after Linear layers and the logits (`default_layers`);
* `pre_activation` (Zhang et al. 2022): the output of every `Conv2d` and `Linear` module, before any
  activation or pooling (`pre_activation_layers`; their `modules_to_hook = (nn.Conv2d, nn.Linear)`).
  ReLU and max-pooling only shrink distances between representations, so the KDE I(X;T) measured
  after them can only be lower.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from advlab.attacks.base import eval_mode
from advlab.errors import ConfigError

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
HOOK_POINTS = ("post_activation", "pre_activation")


def check_hook_point(key: str, hook_point, layers) -> str:
    """`hook_point` must be one of HOOK_POINTS; it picks the layers when none are named, so naming
    layers and asking for `pre_activation` at once is a ConfigError (`key`: the config key)."""
    if hook_point not in HOOK_POINTS:
        raise ConfigError(key, f"unknown hook point {hook_point!r}; allowed: {', '.join(HOOK_POINTS)}")
    if layers and hook_point != "post_activation":
        raise ConfigError(key, f"{hook_point} picks the layers itself; set layers: null, or name the layers and drop hook_point")
    return hook_point


def default_layers(model: nn.Module) -> list[str]:
    """The layers an information-plane analysis watches when none are named: the output of every
    pooling layer and residual block (convolutional stages), every ReLU that follows a Linear layer
    (hidden fully connected layers) and the last Linear layer (the logits). A network without any
    of these (e.g. a two-layer net with a functional ReLU) gets every Linear layer."""
    from advlab.models.resnet import BasicBlock, Bottleneck

    picked, linears, previous = [], [], None
    for name, module in model.named_modules():
        if isinstance(module, _POOLS + (BasicBlock, Bottleneck)):
            picked.append(name)
        if isinstance(module, nn.Linear):
            linears.append(name)
        if next(module.children(), None) is None:  # leaf: forward order within Sequential containers
            if isinstance(module, nn.ReLU) and isinstance(previous, nn.Linear):
                picked.append(name)
            previous = module
    if not picked:
        return linears
    if linears and linears[-1] not in picked:
        picked.append(linears[-1])
    return picked


def pre_activation_layers(model: nn.Module) -> list[str]:
    """Every Conv2d and Linear module (in registration order, which is the forward order of advlab's
    architectures): the layers Zhang et al. hook."""
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def resolve_layers(model: nn.Module, names: Sequence[str] | None, hook_point: str = "post_activation") -> list[str]:
    """`names` checked against the model's modules (ConfigError naming the allowed ones), or the
    layers of `hook_point` (post_activation: `default_layers`, pre_activation: `pre_activation_layers`)."""
    if not names:
        return pre_activation_layers(model) if hook_point == "pre_activation" else default_layers(model)
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or name == "":
            allowed = ", ".join(n for n in modules if n)
            raise ConfigError("layers", f"unknown layer {name!r}; allowed: {allowed}")
    return list(names)


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, every forward pass appends each named module's output (detached) to
    `store[name]`; the hooks are removed on exit, also after an error."""
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {n: [] for n in resolve_layers(model, names)}
    handles = []
    try:
        for name, outputs in store.items():
            handles.append(modules[name].register_forward_hook(lambda _m, _i, out, outputs=outputs: outputs.append(out.detach())))
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def layer_outputs(model: nn.Module, x: torch.Tensor, names: Sequence[str], batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """{layer: its outputs (N, ...)} for inputs x, computed in eval mode in batches (mode restored)."""
    device = next(model.parameters()).device
    with eval_mode(model), capture(model, names) as store:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size].to(device))
    return {name: torch.cat(outs) for name, outs in store.items()}
