"""The pre-flight (advlab.preflight.jobs.precheck) refuses bad input of every app before Hydra starts: typos of
keys at every level (checked against the constructor each node is given to), wrong types and
out-of-range values (checked by the constructors themselves, built cheaply). In-process, many cases
per test; tests/test_bad_input.py runs the apps for the exit code, the one line and nothing written."""
from __future__ import annotations

import pytest

from advlab.preflight.jobs import precheck
from advlab.errors import ConfigError

ADV_SOURCE = ["spec@source=adversarial"]
NT_MODEL = ["+spec@models.NT=standard"]

CASES = {
    "train": [
        (["+arch.widht=3"], "arch.widht", "allowed: width, kumano"),
        (["+attack.stepz=3"], "attack.stepz", "allowed: eps, norm, steps"),
        (["attack.steps=0"], "attack.steps", ">= 1, got 0"),
        (["attack.restarts=0"], "attack.restarts", ">= 1, got 0"),
        (["attack.loss=hinge"], "attack.loss", "allowed: ce, margin"),
        (["attack.eps=-1"], "attack.eps", ">= 0, got -1"),
        (["attack=autoattack", "attack.version=fast"], "attack.version", "allowed: standard, plus, rand"),
        (["attack@eval_attack=pgd_linf", "eval_attack.steps=0"], "eval_attack.steps", ">= 1, got 0"),
        (["+trainer.max_epoch=3"], "trainer.max_epoch", "allowed: accelerator, strategy, devices"),
        (["trainer.devices=[]"], "trainer.devices", "got []"),
        (["+dataset.batchsize=3"], "dataset.batchsize", "allowed:"),
        (["dataset.batch_size=0"], "dataset.batch_size", "got 0"),
        (["dataset.classes=[3,3]"], "dataset.classes", "twice"),
        (["+method.label_smoothin=0.1"], "method.label_smoothin", "allowed: label_smoothing, channels_last"),
        (["method=perturbation", "derived.base=gray"], "derived.base", "allowed: natural, uniform"),
        (["method=robust_dataset", "derived.steps=0"], "derived.steps", ">= 1, got 0"),
        (["method=sparsity", "method.sigma_n=0"], "method.sigma_n", "> 0"),
        (["+optimizer.momentun=0.9"], "optimizer.momentun", "momentum"),
        (["+source.foo=1"], "source.foo", "allowed: method, optimizer, scheduler, attack, arch"),
        (["+source.method.foo=1"], "source.method.foo", "allowed: label_smoothing"),
        (["+source.trainer.precison=16"], "source.trainer.precison", "precision"),
        ([*ADV_SOURCE, "+source.attack.stepz=1"], "source.attack.stepz", "allowed: eps, norm, steps"),
        ([*ADV_SOURCE, "source.attack.steps=0"], "source.attack.steps", ">= 1, got 0"),
        (["seed=-1"], "seed", ">= 0"),
        (["trainer.precision=bf32"], "trainer.precision", "allowed: auto, 64, 32, 16, transformer-engine"),  # Lightning's list
        (["+source.trainer.precision=fp8"], "source.trainer.precision", "bf16-mixed"),
    ],
    "eval": [
        (["+deepfool.stepz=3"], "deepfool.stepz", "allowed: norms, steps, overshoot"),
        (["deepfool.steps=0"], "deepfool.steps", ">= 1, got 0"),
        (["deepfool.norms=[l3]"], "deepfool.norms", "allowed: l2, linf"),
        (["linearity.points=2"], "linearity.points", ">= 3, got 2"),
        (["masking.norm=l3"], "masking.norm", "allowed: linf, l2"),
        (["off_support.kinds=[pink]"], "off_support.kinds", "allowed: uniform, gaussian"),
        (["+robustness.attacks.pgd_linf.stepz=1"], "robustness.attacks.pgd_linf.stepz", "allowed: eps, norm, steps"),
        (["robustness.attacks.pgd_linf.steps=0"], "robustness.attacks.pgd_linf.steps", ">= 1, got 0"),
        (["batch_size=0"], "batch_size", ">= 1, got 0"),  # the old form of eval.batch_size (one release)
        (["eval.batch_size=0"], "eval.batch_size", ">= 1, got 0"),
        ([*NT_MODEL, "+models.NT.method.foo=1"], "models.NT.method.foo", "allowed: label_smoothing"),
        ([*NT_MODEL, "+models.NT.foo=1"], "models.NT.foo", "allowed: method, optimizer"),
        (["+bar=1"], "bar", "unknown top-level key"),
    ],
    "transfer": [
        (["batch_size=0"], "batch_size", ">= 1, got 0"),  # the old form of transfer.batch_size (one release)
        (["transfer.batch_size=0"], "transfer.batch_size", ">= 1, got 0"),
        # a datamodule names its parameter; the pre-flight, the node it was set at (not `dataset.batch_size`)
        (["dataset@source.dataset=digits", "source.dataset.batch_size=0"], "source.dataset.batch_size", ">= 1, got 0"),
        (["+target.arch.widht=2"], "target.arch.widht", "allowed: width"),
        (["+source.method.target_rule=rand"], "source.method.target_rule", "allowed: label_smoothing"),
        (["+target.trainer.devics=1"], "target.trainer.devics", "devices"),
        (["trainer.accelerator=tpu"], "trainer.accelerator", "allowed: auto, cpu"),
    ],
    "probe": [
        (["+models.AT.foo=1"], "models.AT.foo", "allowed: method, optimizer"),
        (["+attack.stepz=1"], "attack.stepz", "allowed: eps, norm, steps"),  # also the AT model's (models.AT.attack: ${attack})
        (["probe.batch_size=0"], "probe.batch_size", ">= 1"),
    ],
}


@pytest.mark.parametrize("app", list(CASES))
def test_preflight_names_the_key_and_the_allowed_values(app):
    wrong = []
    for overrides, key, allowed in CASES[app]:
        try:
            precheck(overrides, app)
            wrong.append(f"{overrides}: accepted")
        except ConfigError as err:
            if err.key != key or allowed not in str(err) or "\n" in str(err):
                wrong.append(f"{overrides}: {err}")
    assert not wrong, "\n".join(wrong)


def test_config_dir_presets_are_checked_too(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /method: perturbation\nmethod:\n  target_rul: rand\n")
    with pytest.raises(ConfigError, match="target_rul.*allowed: label_smoothing.*target_rule") as err:
        precheck(["--config-dir", str(tmp_path), "experiment=mine"], "train")
    assert err.value.key == "method.target_rul"
    precheck(["--config-dir", str(tmp_path), "experiment=mine", "~method.target_rul"], "train")  # the preset fixed: accepted


def test_good_trainer_devices_pass():
    for devices in ("auto", "-1", "1", "[0]", "'0,1'"):
        precheck([f"trainer.devices={devices}"], "train")


@pytest.mark.parametrize("app, default", [("eval", 256), ("transfer", 512)])
def test_the_apps_batch_is_at_its_node_and_the_old_top_level_key_works_one_release(app, default, caplog):
    """advlab-eval's and advlab-transfer's batch: `eval.batch_size` / `transfer.batch_size`; the top-level
    `batch_size` is its old form, for one release, named by one line (advlab.errors.moved_keys)."""
    import logging

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.runtime.lifecycle import app_batch_size
    from advlab.runtime.resolvers import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        configs = {o: compose(app, overrides=[o] if o else []) for o in ("", f"{app}.batch_size=64", "batch_size=32")}
    with caplog.at_level(logging.WARNING, logger="advlab.runtime.lifecycle"):
        assert [app_batch_size(cfg) for cfg in configs.values()] == [default, 64, 32]
    assert [r.getMessage() for r in caplog.records] == [f"batch_size is deprecated: use {app}.batch_size=32"]
    for overrides in ([f"{app}.batch_size=64"], ["batch_size=32"]):
        precheck(overrides, app)  # both forms pass the pre-flight
