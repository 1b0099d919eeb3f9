"""Synthetic vector data for the theory settings of Kumano et al. (perturbation learning).

kinds:
- ``gaussian``: x ~ N(0, I_d).
- ``uniform``: x ~ U[0, 1]^d (bounds (0, 1), like images).
- ``shifted_gaussian``: y uniform over the classes, x ~ N(shift · u_y, I_d) with seeded random unit
  vectors u_y (``class_means`` = shift · u_y).

Labels for ``gaussian`` / ``uniform``: ``teacher`` = argmax_k of a fixed seeded random linear teacher
w_k · (x − E[x]) (``teacher`` holds W, shape (num_classes, dim); centring at E[x] = 0.5 keeps the
classes balanced for uniform data), or ``random`` = uniform over the classes, independent of x. For
``shifted_gaussian`` the class defines the mean, so ``labels`` is ignored.

Train and test are drawn together from one seeded generator (``seed``): the first ``n_train`` samples
are the training split (of which ``val_fraction`` becomes the validation split), the next ``n_test``
the test split.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from advlab.data.base import ArrayDataModule
from advlab.errors import ConfigError, check_number

KINDS = ("gaussian", "shifted_gaussian", "uniform")
LABELS = ("teacher", "random")


class SyntheticDataModule(ArrayDataModule):
    name = "synthetic"

    def __init__(
        self,
        kind: str = "gaussian",
        dim: int = 100,
        n_train: int = 1000,
        n_test: int = 1000,
        num_classes: int = 2,
        shift: float = 1.0,
        labels: str = "teacher",
        **kwargs: Any,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError("kind", f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
        if labels not in LABELS:
            raise ConfigError("labels", f"unknown labels {labels!r}; allowed: {', '.join(LABELS)}")
        if kwargs.get("augment"):
            raise ConfigError("augment", "random crop/flip needs image data; synthetic data is vector data, set it to false")
        super().__init__(**kwargs)
        self.kind = kind
        self.labels = labels
        self.dim = check_number("dim", dim, 1, integer=True)
        self.planned_input_shape = (self.dim,)
        self.n_train = check_number("n_train", n_train, 1, integer=True)
        self.n_test = check_number("n_test", n_test, 1, integer=True)
        n_classes = check_number("num_classes", num_classes, 1, integer=True)
        if n_classes < 2:
            raise ConfigError("num_classes", f"must be at least 2, got {num_classes!r}")
        self.n_generated_classes = n_classes
        self.original_num_classes = n_classes
        try:
            self.shift = float(shift)
        except (TypeError, ValueError):
            raise ConfigError("shift", f"must be a number, got {shift!r}") from None
        if not math.isfinite(self.shift):
            raise ConfigError("shift", f"must be finite, got {shift!r}")
        self._bounds = (0.0, 1.0) if kind == "uniform" else None
        self.teacher: Optional[torch.Tensor] = None
        self.class_means: Optional[torch.Tensor] = None

    def _describe_extra(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "dim": self.dim,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "num_classes": self.n_generated_classes,
            "labels": self.labels,
        }
        if self.kind == "shifted_gaussian":
            d["shift"] = self.shift
        return d

    def _load(self):
        g = torch.Generator().manual_seed(self.seed)
        n, d, c = self.n_train + self.n_test, self.dim, self.n_generated_classes
        if self.kind == "shifted_gaussian":
            u = torch.randn(c, d, generator=g)
            u = u / u.norm(dim=1, keepdim=True)
            self.class_means = self.shift * u
            y = torch.randint(0, c, (n,), generator=g)
            x = torch.randn(n, d, generator=g) + self.class_means[y]
        else:
            teacher = torch.randn(c, d, generator=g) / math.sqrt(d)
            if self.kind == "gaussian":
                x, centre = torch.randn(n, d, generator=g), 0.0
            else:
                x, centre = torch.rand(n, d, generator=g), 0.5
            if self.labels == "teacher":
                self.teacher = teacher
                y = ((x - centre) @ teacher.T).argmax(dim=1)
            else:
                y = torch.randint(0, c, (n,), generator=g)
        names = [str(k) for k in range(c)]
        tr, te = slice(0, self.n_train), slice(self.n_train, n)
        return x[tr], y[tr], x[te], y[te], names
