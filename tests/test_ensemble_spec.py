"""The ensemble surrogate spec (conf/spec/ensemble.yaml): its logits are the mean of its members' logits,
each member is a spec trained once through the artifact cache, bad member lists are one-line errors, and
advlab-transfer crafts on it in a real run."""
from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from advlab.artifacts.model_sources import ensemble_members, spec_model
from advlab.data import DigitsDataModule
from advlab.errors import ConfigError
from advlab.models.ensemble import LogitEnsemble
from advlab.runtime.resolvers import CONF_DIR
from conftest import run_advlab

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _transfer_cfg(*overrides):
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("transfer", overrides=list(overrides))


def test_logits_are_the_mean_of_the_members_logits():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        members = [nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
                   nn.Sequential(nn.Flatten(), nn.Linear(64, 10))]
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ensemble = LogitEnsemble(members)
    with torch.no_grad():
        want = sum(m(x) for m in members) / 3
        assert torch.allclose(ensemble(x), want, atol=1e-6)
        # in logit space, not probability space: the softmax of the mean differs from the mean of the softmaxes
        probs = sum(m(x).softmax(1) for m in members) / 3
        assert not torch.allclose(ensemble(x).softmax(1), probs, atol=1e-3)
    with pytest.raises(ValueError, match="at least one member"):
        LogitEnsemble([])


def test_the_spec_composes_members_that_are_specs():
    cfg = _transfer_cfg("spec@source=ensemble", "arch@source.members.cnn.arch=mlp", "+spec@source.members.robust=adversarial",
                        "arch@source.arch=wide_mlp")
    assert cfg.source.method == "ensemble" and list(cfg.source.members) == ["wide_mlp", "cnn", "robust"]
    assert cfg.source.members.cnn.arch._target_ == "advlab.models.MLP"
    assert cfg.source.members.robust.method._target_ == "advlab.methods.AdversarialTraining" and "attack" in cfg.source.members.robust
    members = ensemble_members(cfg.source, "source")
    assert members["robust"].arch._target_ == "advlab.models.WideMLP"  # no arch of its own: the ensemble's
    for bad, message in (({"method": "ensemble", "members": {}}, "non-empty mapping"),
                         ({"method": "ensemble", "members": {"a": {"arch": None}}}, "expected a model spec")):
        with pytest.raises(ConfigError) as err:
            ensemble_members(OmegaConf.create(bad), "source")
        assert err.value.key.startswith("source.members") and message in str(err.value) and "\n" not in str(err.value)


def test_members_are_trained_once_through_the_cache_and_averaged(tmp_path):
    from advlab.artifacts.cache import ArtifactCache
    from advlab.artifacts.models import Artifacts

    dm = DigitsDataModule(seed=0, max_train=300)
    dm.setup()
    cfg = _transfer_cfg("spec@source=ensemble", "arch@source.members.wide_mlp.arch=mlp", "source.members.wide_mlp.arch.width=32",
                        "source.members.cnn.arch.channels=[4,8]", "source.members.cnn.arch.hidden=16",
                        "source.members.wide_mlp.max_epochs=1", "source.members.cnn.max_epochs=1")
    spec = OmegaConf.create({k: v for k, v in OmegaConf.to_container(cfg.source, resolve=True).items() if k != "dataset"})
    artifacts = Artifacts(ArtifactCache(tmp_path), trainer=OmegaConf.create({"accelerator": "cpu"}), progress=False)
    ensemble, metrics, key = spec_model(artifacts, spec, dm, name="source model", where="source")
    assert isinstance(ensemble, LogitEnsemble) and key["method"] == "ensemble" and list(key["members"]) == ["wide_mlp", "cnn"]
    assert len(list((tmp_path / "models").glob("*.pt"))) == 2  # each member a cached model, the ensemble nothing more
    singles = [artifacts.model(node, dm, where=f"source.members.{name}")[0] for name, node in ensemble_members(spec, "source").items()]
    x = dm.x_test[:64]
    with torch.no_grad():
        assert torch.allclose(ensemble(x), (singles[0](x) + singles[1](x)) / 2, atol=1e-5)
        acc = float((ensemble(dm.x_test).argmax(1) == dm.y_test).float().mean())
    assert metrics["test/acc"] == pytest.approx(acc) and set(metrics) == {"test/acc", "members/wide_mlp/test/acc", "members/cnn/test/acc"}
    again, _, same = spec_model(Artifacts(ArtifactCache(tmp_path), progress=False), spec, dm)
    assert same == key and len(list((tmp_path / "models").glob("*.pt"))) == 2  # taken from the cache


def test_advlab_transfer_crafts_on_an_ensemble(advlab_root):
    run = run_advlab(advlab_root, "spec@source=ensemble", "arch@source.members.wide_mlp.arch=mlp", "source.members.wide_mlp.arch.width=64",
                     "source.members.cnn.arch.channels=[8,16]", "source.members.cnn.arch.hidden=32", "source.members.wide_mlp.max_epochs=2",
                     "source.members.cnn.max_epochs=2", "arch@target.arch=mlp", "target.arch.width=128", "target.max_epochs=2",
                     "attack=tifgsm", "attack.len_kernel=3", "attack.steps=5", "eps.value=0.2", "logger=csv",
                     module="advlab.apps.transfer", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    m = run.metrics
    assert m["source/adv_acc"] < m["source/clean_acc"] - 0.3, m  # white box on the ensemble
    assert m["transfer/target_acc"] <= m["target/clean_acc"] and m["transfer/same_model"] == 0.0
    assert len(list((advlab_root / "cache" / "models").glob("*.pt"))) == 3  # two members and the target
    assert len(list((advlab_root / "cache" / "adversarial").glob("*.pt"))) == 1
    assert re.search(r"Ensemble source model of 2 members \(wide_mlp, cnn\): test/acc = 0\.\d+", run.log), run.log[-3000:]
