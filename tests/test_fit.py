"""One training path (advlab.methods.fit): model specs are trained like the run, with the run's trainer
settings unless the spec overrides them, and the optimizer group serves both."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from advlab.artifacts.models import Artifacts, source_model
from advlab.artifacts.cache import ArtifactCache
from advlab.runtime.resolvers import CONF_DIR
from advlab.data import DigitsDataModule
from advlab.errors import ConfigError
from advlab.methods.fit import build_classifier

ARCH = {"_target_": "advlab.models.MLP", "_partial_": True, "width": 16, "depth": 1}


def _compose(*overrides, app="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(app, overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(seed=0, max_train=200)
    dm.setup()
    return dm


def _spec(**extra):
    """The composed conf/spec/standard.yaml, small: what advlab-train's `source` node holds."""
    cfg = _compose("source.max_epochs=2")
    spec = {**OmegaConf.to_container(cfg.source, resolve=True), "arch": ARCH, "seed": 0}  # the arch replaced, not merged
    return OmegaConf.merge(spec, extra)


def test_a_spec_follows_the_run_trainer_settings_unless_it_overrides_them(digits, tmp_path, one_torch_thread):
    run_trainer = OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed", "default_root_dir": "${paths.output_dir}"})
    artifacts = Artifacts(ArtifactCache(tmp_path), trainer=run_trainer, progress=False)
    assert artifacts.device.type == "cpu"
    bf16, _, bf16_key = source_model(_spec(), digits, artifacts)
    assert artifacts.trained["source"]["trainer"] == {"precision": "bf16-mixed", "accelerator": "cpu"}
    assert bf16_key["trainer"] == {"precision": "bf16-mixed"}  # it changes the weights: in the cache key
    own = Artifacts(ArtifactCache(tmp_path), trainer=run_trainer, progress=False)
    fp32, _, fp32_key = source_model(_spec(trainer={"precision": "32-true"}), digits, own)
    assert own.trained["source"]["trainer"]["precision"] == "32-true"
    assert "trainer" not in fp32_key and fp32_key != bf16_key  # the default training keeps the key it had
    assert not torch.equal(bf16.net[1].weight, fp32.net[1].weight)
    again, _, key = source_model(_spec(trainer={"precision": "32-true"}), digits, Artifacts(ArtifactCache(tmp_path), progress=False))
    assert key == fp32_key and torch.equal(again.net[1].weight, fp32.net[1].weight)  # the run's default trainer: a cache hit


def test_the_optimizer_group_serves_the_run_and_the_source(digits):
    cfg = _compose("optimizer=adam", "optimizer.lr=0.003", "optimizer@source.optimizer=sgd_nesterov", "method=standard")
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer._partial_ is True
    assert cfg.source.optimizer.nesterov is True and cfg.source.optimizer.lr == 0.05
    module = build_classifier(cfg.method, cfg.arch, digits, optimizer=cfg.optimizer)
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 0.003
    source = build_classifier(cfg.source.method, ARCH, digits, optimizer=cfg.source.optimizer)
    sgd = source.configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"] is True and sgd.param_groups[0]["momentum"] == 0.9
    assert module.hparams["optimizer"] == {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.003, "weight_decay": 0.0}


def test_specs_are_composed_by_hydra(digits, tmp_path):
    cfg = _compose("spec@source=adversarial", "attack@source.attack=fgsm", "scheduler@source.scheduler=step", "source.method.adv_ratio=0.5")
    assert cfg.source.method._target_ == "advlab.methods.AdversarialTraining" and cfg.source.method.adv_ratio == 0.5
    assert cfg.source.attack._target_ == "advlab.attacks.FGSM" and cfg.source.scheduler.step_size == 50
    spec = OmegaConf.merge(OmegaConf.to_container(cfg.source, resolve=True), {"arch": ARCH})
    key = Artifacts(ArtifactCache(tmp_path), trainer=OmegaConf.create({"accelerator": "cpu"})).model_spec(spec, digits)
    assert key["method"]["adv_ratio"] == 0.5 and key["attack"]["_target_"] == "advlab.attacks.FGSM"
    assert key["scheduler"]["_target_"] == "torch.optim.lr_scheduler.StepLR"
    with pytest.raises(ConfigError, match=r"^source.method.adv_ration: unknown key\(s\) adv_ration for advlab.methods.AdversarialTraining"):
        Artifacts(ArtifactCache(tmp_path)).model_spec(OmegaConf.merge(spec, {"method": {"adv_ration": 1}}), digits)
    evaluation = _compose("+spec@models.s=sparsity", "models.s.method.lam=300", "model_defaults.max_epochs=4", app="eval")
    assert evaluation.models.s.method.lam == 300 and evaluation.models.s.max_epochs == 4 and evaluation.models.standard.max_epochs == 4


def test_what_is_typed_is_what_hydra_records_and_the_source_trains_with(advlab_root):
    """advlab-train in a subprocess: `.hydra/overrides.yaml` is the command line as typed, and the
    source model (trained through the same path) follows the run's precision and its own optimiser."""
    import json

    import yaml

    from conftest import run_advlab

    typed = ["method=perturbation", "arch@source.arch=mlp", "optimizer@source.optimizer=adam", "source.optimizer.lr=0.01",
             "eps.value=1.5", "trainer.precision=bf16-mixed", "trainer.max_epochs=2", "source.max_epochs=2", "attack.steps=5",
             "callbacks=none", "logger=csv", "arch.width=64"]
    run = run_advlab(advlab_root, *typed)
    assert run.returncode == 0, run.stderr[-3000:]
    assert yaml.safe_load((run.run_dir / ".hydra" / "overrides.yaml").read_text()) == typed
    records = [json.loads(p.read_text()) for p in (advlab_root / "cache" / "models").glob("*.json")]
    assert len(records) == 1
    spec = records[0]["spec"]
    assert spec["trainer"] == {"precision": "bf16-mixed"} and spec["arch"]["_target_"] == "advlab.models.MLP"
    assert spec["optimizer"]["_target_"] == "torch.optim.Adam" and spec["optimizer"]["lr"] == 0.01
    resolved = yaml.safe_load((run.run_dir / "config_resolved.yaml").read_text())
    assert resolved["attack"]["eps"] == 1.5 and resolved["source"]["arch"]["_target_"] == "advlab.models.MLP"
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["source/test/acc"] > 0.3 and metrics["perturb/delta_l2_mean"] <= 1.5 + 1e-4
