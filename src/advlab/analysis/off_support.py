"""Softmax behaviour off the data support (Paknezhad et al.): far from the data a model has no
evidence, and the data-sparsity hypothesis says a robust model should say so with a flat softmax
(low max-softmax, high entropy) instead of a confident guess.

Inputs: ``uniform`` noise over the pixel box, ``gaussian`` noise with the data's per-channel mean
and std (clipped to the box), or another ``dataset``'s test images resized to this input shape.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from advlab.analysis.protocol import Analysis, Points, stat, write_csv
from advlab.errors import ConfigError

NOISE_KINDS = ("uniform", "gaussian")  # what `kinds` may list; a dataset's inputs come from `dataset`
KINDS = NOISE_KINDS + ("dataset",)


def noise_inputs(kind: str, n: int, like: torch.Tensor, bounds, generator: torch.Generator) -> torch.Tensor:
    """``n`` noise inputs shaped like the rows of ``like`` (the training inputs)."""
    shape = (n,) + tuple(like.shape[1:])
    if kind == "uniform":
        lo, hi = bounds if bounds is not None else (float(like.min()), float(like.max()))
        return lo + (hi - lo) * torch.rand(shape, generator=generator)
    if kind == "gaussian":
        dims = (0, 2, 3) if like.dim() == 4 else tuple(range(like.dim()))
        view = (1, -1, 1, 1) if like.dim() == 4 else (1,) * like.dim()
        mean, std = like.mean(dim=dims).reshape(view), like.std(dim=dims).reshape(view)
        out = mean + std * torch.randn(shape, generator=generator)
        return out.clamp(*bounds) if bounds is not None else out
    raise ConfigError("off_support.kinds", f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")


def match_shape(x: torch.Tensor, shape: tuple[int, ...], key: str = "off_support.dataset") -> torch.Tensor:
    """Bring another dataset's inputs to ``shape``: images are converted to the channel count (grey
    = mean of RGB; grey repeated for RGB) and area-resized; vectors must have as many entries."""
    shape = tuple(shape)
    if tuple(x.shape[1:]) == shape:
        return x
    if len(shape) == 3 and x.dim() == 4:
        c = shape[0]
        if x.shape[1] != c:
            if c == 1:
                x = x.mean(dim=1, keepdim=True)
            elif x.shape[1] == 1:
                x = x.repeat(1, c, 1, 1)
            else:
                raise ConfigError(key, f"cannot map {x.shape[1]} channels to {c}")
        return F.interpolate(x, size=shape[1:], mode="area") if tuple(x.shape[2:]) != shape[1:] else x
    if x[0].numel() == math.prod(shape):
        return x.reshape((len(x),) + shape)
    raise ConfigError(key, f"its inputs {tuple(x.shape[1:])} cannot be brought to this dataset's input shape {shape}")


@torch.no_grad()
def softmax_statistics(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device=None) -> dict:
    """Mean max-softmax, mean entropy (nats), entropy / log C (1 = uniform) and the mean softmax per
    class over ``x`` (the paper's bar chart)."""
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        probs = torch.cat([model(x[i:i + batch_size].to(device)).softmax(dim=1).cpu() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=1)
    c = probs.shape[1]
    return {
        "max_softmax": float(probs.max(dim=1).values.mean()),
        "entropy": float(entropy.mean()),
        "entropy_ratio": float(entropy.mean() / math.log(c)),
        "mean_softmax": probs.mean(dim=0).tolist(),
    }


STATISTICS = ("max_softmax", "entropy", "entropy_ratio")


class OffSupport(Analysis):
    """advlab-eval's `off_support` analysis (conf/analysis/off_support.yaml): softmax statistics on the
    evaluated points (`test`), on `n` noise inputs of each kind and on another dataset's test images."""

    key = "off_support"

    def __init__(self, kinds, n: int, dataset=None, seed: int = 0, bounds=None):
        from advlab.errors import check_number

        bad = [k for k in kinds if k not in NOISE_KINDS]
        if bad:
            raise ConfigError("kinds", f"unknown value {bad[0]!r}; allowed: {', '.join(NOISE_KINDS)}")
        self.kinds, self.n, self.dataset, self.seed = list(kinds), check_number("n", n, 1, integer=True), dataset, int(seed)
        self.inputs: dict[str, torch.Tensor] = {}

    def prepare(self, datamodule) -> None:
        """The off-support inputs; another dataset is loaded (and its files checked) here, before any model."""
        foreign = None
        if self.dataset is not None:
            from hydra.utils import instantiate

            foreign_dm = instantiate(self.dataset)
            foreign_dm.check()
            foreign_dm.setup()
            foreign = (foreign_dm.name, match_shape(foreign_dm.x_test, datamodule.input_shape))
        gen = torch.Generator().manual_seed(self.seed)
        self.inputs = {kind: noise_inputs(kind, self.n, datamodule.x_train, datamodule.bounds, gen) for kind in self.kinds}
        if foreign is not None:
            self.inputs[foreign[0]] = foreign[1][: self.n]

    def run(self, member, points: Points) -> dict:
        out = {"test": softmax_statistics(member.model, points.x, device=points.device)}
        for kind, inputs in self.inputs.items():
            out[kind] = softmax_statistics(member.model, inputs, device=points.device)
        return out

    def summarise(self, results: list[dict], points: Points) -> dict:
        return {"off_support": {kind: {k: stat([r["off_support"][kind][k] for r in results]) for k in STATISTICS}
                                for kind in results[0]["off_support"]}}

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        from advlab.report import analysis_plots

        rows = [[name, r["member"], kind, st["max_softmax"], st["entropy"], st["entropy_ratio"], *st["mean_softmax"]]
                for name, results in per_member.items() for r in results for kind, st in r["off_support"].items()]
        classes = points.datamodule.class_names
        write_csv(out_dir / "off_support.csv", ["model", "member", "inputs", *STATISTICS, *[f"p_{c}" for c in classes]], rows)
        stats = {name: {kind: {k: (v["mean"], v["sem"]) for k, v in st.items()} for kind, st in s["off_support"].items()}
                 for name, s in summary.items()}
        path = out_dir / "plots" / "off_support.png"
        return {"off_support": analysis_plots.off_support_bars(stats, path, title=f"{points.title}: softmax on and off the data")}
