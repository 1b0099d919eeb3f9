"""Training on Ilyas et al.'s robust / non-robust datasets (RECIPES.md §4).

The representation model g is the source model (the top-level `source` spec): adversarially
trained (`spec@source=adversarial attack@source.attack=...`) it gives D_R, standard it gives D_NR. Every
training image x gets a constructed counterpart x_r: start from another random training image and
minimise ‖g(x_r) − g(x)‖₂ / ‖g(x)‖₂ with normalised-gradient steps (no ε bound), label y(x). The
dataset is built once and cached (keyed by the source model's key and the construction
parameters) by `RobustDataset`; a fresh model is trained on it by plain standard training and
tested on the clean test set, and under `attack@eval_attack` (`test/adv_acc`). Paper (CIFAR-10, L2 ε=0.25): D_R 84 % clean / 48 % robust, D_NR 88 % / 0 %.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from advlab.analysis.representation import invert_batch, other_indices
from advlab.attacks import evaluate_attack
from advlab.artifacts.cache import spec_key
from advlab.derived.base import DerivedData, SourceModel
from advlab.derived.resume import CraftProgress
from advlab.errors import ConfigError, check_number
from advlab.methods.base import is_adversarial
from advlab.models.base import predict
from advlab.utils import signals
from advlab.utils.progress import progress_bar

log = logging.getLogger(__name__)
STARTS = ("image", "noise")
KEEPS = ("best", "last")


@dataclass
class RobustDataset:
    """D_R / D_NR constructed from the source model's penultimate representation.

    `steps`, `step_size`: the normalised-gradient descent (paper: 1000 steps of 0.1 on CIFAR-10);
    `seed` draws the start of each inversion; `batch_size` (images inverted at once) bounds memory.
    `start`: "image" (another training image) or "noise" (N(0.5, noise_std²) per pixel, as the authors'
    robust_representations code: `randn / NOISE_SCALE + 0.5`, NOISE_SCALE 20); `keep`: the "best" iterate
    per image or the "last" (theirs: `use_best=False`).
    """
    steps: int = 1000
    step_size: float = 0.1
    seed: int = 0
    batch_size: int = 512
    start: str = "image"
    noise_std: float = 0.05
    keep: str = "best"

    source_name = "representation model"  # in the log and the cache messages

    def __post_init__(self):
        self.steps = check_number("steps", self.steps, 1, integer=True)
        self.step_size = check_number("step_size", self.step_size, 0, strict=True)
        self.seed = int(self.seed)
        self.batch_size = check_number("batch_size", self.batch_size, 1, integer=True)
        self.noise_std = check_number("noise_std", self.noise_std, 0)
        for key, allowed in (("start", STARTS), ("keep", KEEPS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(key, f"{getattr(self, key)!r}; allowed: {', '.join(allowed)}")

    def _options(self) -> dict:
        """The construction's options beyond steps / step size / seed, where they differ from the
        defaults (so datasets cached before these options existed keep their keys)."""
        options = {"start": self.start, "noise_std": self.noise_std} if self.start == "noise" else {}
        return options | ({"keep": self.keep} if self.keep != "best" else {})

    def starts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the start of each image's inversion, the index of its start image; −1 for noise)."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.start == "noise":
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * self.noise_std + 0.5
            return noise, torch.full((len(x),), -1, dtype=torch.long)
        index = other_indices(len(x), generator)
        return x[index], index

    def build(self, source: SourceModel, datamodule, artifacts, *, attack=None, eval_attack=None, arch=None, source_spec=None) -> DerivedData:
        """Construct (or take from the cache) the dataset; `eval_attack` also measures the source's robustness."""
        method = source.key["method"]  # a method node, or "external"
        adversarial = isinstance(method, dict) and is_adversarial(method)
        name = "D_R" if adversarial else "D_NR"
        spec = {"construction": "representation_inversion", "source": source.key, "steps": self.steps,
                "step_size": self.step_size, "seed": self.seed, **self._options()}
        x, y = datamodule.x_train, datamodule.y_train

        def construct():
            x_start, index = self.starts(x)
            out = self._invert(source.model, x, x_start, datamodule.bounds, artifacts.device, artifacts.progress, name)
            agree = predict(source.model, out["x"], device=artifacts.device) == y
            return {"x": out["x"], "y": y.clone(), "start_index": index, "x_start_preview": x_start[:8].clone(),
                    "distance_initial": out["distance_initial"], "distance_final": out["distance_final"],
                    "source_agreement": float(agree.float().mean())}

        payload, _ = artifacts.constructed("datasets", spec, construct, what=f"{name} dataset")
        d0, d1 = payload["distance_initial"].mean().item(), payload["distance_final"].mean().item()
        metrics = {"source/test/acc": float(source.metrics["test/acc"]), "dataset/distance_initial": d0, "dataset/distance_final": d1,
                   "dataset/distance_reduction": d0 / max(d1, 1e-12), "dataset/source_agreement": float(payload["source_agreement"])}
        if eval_attack is not None:  # how robust the representation model itself is
            result = evaluate_attack(source.model, eval_attack, (datamodule.x_test, datamodule.y_test), device=artifacts.device)
            metrics["source/test/adv_acc"] = result["robust_acc"]
        log.info("%s: %d images, representation distance %.4f -> %.4f (x%.1f smaller); the source predicts their label on %.3f",
                 name, len(payload["y"]), d0, d1, d0 / max(d1, 1e-12), payload["source_agreement"])
        fit_datamodule = datamodule.with_train(payload["x"], payload["y"], tag=f"{name}-{spec_key(spec)}")
        return DerivedData(fit_datamodule, metrics, figures=lambda out_dir: construction_figure(name, x, y, payload, datamodule.class_names, out_dir))


    def _invert(self, model, x_target, x_start, bounds, device, progress, name) -> dict:
        """`analysis.representation.invert_representations`, resumable inside a cache build: the batches
        done are kept (`resume.CraftProgress`); each batch is deterministic, so a resumed construction
        makes what an uninterrupted one makes. A signal stops it after the batch under way."""
        model = model.to(device)
        out = {"x": torch.empty_like(x_start), "distance_initial": torch.empty(len(x_start)), "distance_final": torch.empty(len(x_start))}
        saved = CraftProgress(out, len(x_start), self.batch_size, f"{name} dataset")
        start, _ = saved.resume()
        size = self.batch_size
        with signals.deferred(f"constructing the {name} dataset"), \
                progress_bar(total=self.steps * -(-(len(x_start) - start) // size), desc="Inverting representations", disable=not progress) as bar:
            for i in range(start, len(x_start), size):
                xb, d0, d1 = invert_batch(model, x_target[i : i + size].to(device), x_start[i : i + size].to(device),
                                          self.steps, self.step_size, bounds, progress=bar, keep=self.keep)
                out["x"][i : i + size], out["distance_initial"][i : i + size], out["distance_final"][i : i + size] = xb.cpu(), d0.cpu(), d1.cpu()
                saved.done(i + len(xb), None)
                if signals.received() is not None:
                    break  # saved: the deferred region raises signals.Interrupted
        return out


def construction_figure(name: str, x, y, payload, class_names, out_dir) -> dict[str, Path]:
    """plots/robust_dataset.png: target images, start images and the constructed x_r."""
    from advlab.report.grids import image_rows

    k = min(8, len(y))
    rows = [
        ("target x", x[:k], [f"y={class_names[int(c)]}" for c in y[:k]]),
        ("start x0", payload["x_start_preview"][:k] if "x_start_preview" in payload else x[payload["start_index"][:k]], ["" for _ in y[:k]]),
        (f"{name} x_r", payload["x"][:k], [f"dist {float(d):.3f}" for d in payload["distance_final"][:k]]),
    ]
    path = image_rows(rows, Path(out_dir) / "plots" / "robust_dataset.png",
                      title=f"{name}: x_r starts at x0 and matches g(x) (labelled y); dist = ‖g(x_r)−g(x)‖/‖g(x)‖")
    return {"robust_dataset": path}
