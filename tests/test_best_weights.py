"""A cache-trained model that keeps its best validation epoch's weights (`weights: best_val`, Kumano
et al.'s best-validation source checkpoint), and train runs' `val/acc_best`."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from advlab.data import DigitsDataModule
from advlab.errors import ConfigError


def _spec(weights: str):
    return OmegaConf.create({
        "method": {"_target_": "advlab.methods.StandardTraining"},
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 1.0},  # large: val accuracy jumps about
        "arch": {"_target_": "advlab.models.MLP", "_partial_": True, "depth": 1, "width": 16},
        "max_epochs": 8, "seed": 0, "trainer": {}, "weights": weights})


def _acc(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_best_val_keeps_the_best_epochs_weights_and_tests_them(tmp_path):
    from advlab.artifacts.cache import ArtifactCache
    from advlab.artifacts.models import Artifacts

    dm = DigitsDataModule(seed=0, max_train=300, val_fraction=0.2)
    dm.setup()
    trained = {}
    for weights in ("best_val", "last"):
        artifacts = Artifacts(ArtifactCache(tmp_path), trainer=OmegaConf.create({"accelerator": "cpu"}), progress=False)
        model, metrics, key = artifacts.model(_spec(weights), dm, where="source")
        trained[weights] = model, metrics, key, [row["val/acc"] for row in artifacts.trained["source"]["history"]]
    (best, best_metrics, best_key, val), (last, _, last_key, last_val) = trained["best_val"], trained["last"]
    assert best_key["weights"] == "best_val" and "weights" not in last_key  # `last` keeps the keys models had before
    assert val.index(max(val)) < len(val) - 1 and max(val) > val[-1] + 0.01, val  # the best epoch is not the last: the test can fail
    assert _acc(best, dm.x_val, dm.y_val) == pytest.approx(max(val), abs=1e-6)  # the best epoch's weights
    assert _acc(last, dm.x_val, dm.y_val) == pytest.approx(last_val[-1], abs=1e-6)  # `last`: its last epoch's
    assert best_metrics["test/acc"] == pytest.approx(_acc(best, dm.x_test, dm.y_test), abs=1e-6)  # tested with them
    assert max(val) > 0.3  # a model that learns, not a collapsed one


def test_an_unknown_weights_choice_names_the_key_and_the_choices():
    from advlab.artifacts.keys import spec_weights

    with pytest.raises(ConfigError, match=r"^weights: 'best'; allowed: last, best_val$"):
        spec_weights(_spec("best"))
