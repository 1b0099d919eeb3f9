"""Every option of every config group composes, and what it describes instantiates."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advlab.attacks import APGD, FAB, Attack, AutoAttack, MinimalNormAttack, Square
from advlab.preflight.app_keys import validate
from advlab.runtime.resolvers import CONF_DIR, group_options
from advlab.data import DigitsDataModule
from advlab.derived import split_method
from advlab.errors import ConfigError
from advlab.methods import ClassifierModule
from advlab.models import Classifier, build_model
from advlab.preflight.objects import check_objects


@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(seed=0)
    dm.setup()
    return dm


def _compose(*overrides, app="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(app, overrides=list(overrides), return_hydra_config=False)


def test_groups_have_the_designed_options():
    assert set(group_options("arch")) >= {"wide_mlp", "mlp", "cnn", "resnet18"}
    assert set(group_options("method")) == {"standard", "adversarial", "perturbation", "sparsity", "robust_dataset", "trades", "mart", "fast_adversarial"}
    assert set(group_options("dataset")) >= {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar10_jpeg"}
    assert set(group_options("attack")) >= {"fgsm", "pgd_linf", "pgd_l2", "one_step_l2"}
    assert set(group_options("logger")) >= {"wandb", "csv", "none"}
    assert "kumano_two_layer" in group_options("experiment") and "ilyas_cifar10" in group_options("experiment")


@pytest.mark.parametrize("arch", group_options("arch"))
def test_every_arch_instantiates_and_maps_pixels_to_logits(arch, digits):
    cfg = _compose(f"arch={arch}", "arch.width=16" if arch in ("resnet18", "resnet50") else "seed=0")
    if arch == "kumano_convnet":  # Kumano ICLR'24's MNIST ConvNet (unpadded convolutions): digits' 8×8 is too small
        with pytest.raises(ConfigError, match=r"^arch: kumano_convnet needs inputs of at least 11×11"):
            build_model(cfg.arch, digits)
        return
    model = build_model(cfg.arch, digits)
    assert isinstance(model, Classifier)
    x = digits.x_test[:4]
    assert model(x).shape == (4, 10)


@pytest.mark.parametrize("attack", group_options("attack"))
def test_every_attack_instantiates_with_eps_from_its_group(attack, digits):
    cfg = _compose(f"attack={attack}", "eps.value=0.25")
    atk = instantiate(cfg.attack, bounds=[0.0, 1.0])
    assert isinstance(atk, Attack) and atk.eps == pytest.approx(0.25)
    model = build_model(cfg.arch, digits)
    x, y = digits.x_test[:8], digits.y_test[:8]
    x_adv = atk(model, x, y)
    moved = float((x_adv - x).abs().max()) > 0
    if isinstance(atk, (AutoAttack, FAB, APGD, Square, MinimalNormAttack)):  # as the reference: x itself where x is misclassified already
        with torch.no_grad():
            moved = moved or bool((model(x).argmax(1) != y).all())
    assert x_adv.shape == x.shape and moved


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_instantiates(method, digits):
    cfg = _compose(f"method={method}")
    atk = instantiate(cfg.attack, bounds=[0.0, 1.0])
    training, derived, _ = split_method(cfg.method, cfg.get("derived"))  # perturbation, robust_dataset: StandardTraining + a dataset
    module = instantiate(training, model=build_model(cfg.arch, digits), optimizer=instantiate(cfg.optimizer), attack=atk,
                         eval_attack=None, _recursive_=False)
    assert isinstance(module, ClassifierModule)
    assert (derived is not None) == (method in ("perturbation", "robust_dataset"))
    opt = module.configure_optimizers()
    assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("dataset", group_options("dataset"))
def test_every_dataset_config_instantiates(dataset, tmp_path):
    cfg = _compose(f"dataset={dataset}", f"paths.data_dir={tmp_path}", f"paths.shared_dir={tmp_path}")
    dm = instantiate(cfg.dataset)
    if dataset in ("digits", "synthetic"):
        dm.check()
        dm.setup()
        assert dm.num_classes >= 2 and len(dm.x_train) > 0
    else:  # files are absent from an empty data dir: a one-line error naming the key
        with pytest.raises(ConfigError, match=r"^dataset\."):
            dm.check()


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_preset_composes_and_validates(experiment):
    from advlab.preflight.jobs import precheck

    try:
        precheck([f"experiment={experiment}"], "train")
        cfg = _compose(f"experiment={experiment}")
        validate(cfg)
    except ConfigError as err:  # a preset comparing models is advlab-eval's or advlab-probe's, and advlab-train says so
        app = "probe" if "advlab-probe" in str(err) else "eval"
        assert err.key == "experiment" and f"advlab-{app}" in str(err)
        precheck([f"experiment={experiment}"], app)
        cfg = _compose(f"experiment={experiment}", app=app)
        validate(cfg)
        assert cfg.experiment_name not in ("eval-${hydra:runtime.choices.dataset}", "texture-shape-${hydra:runtime.choices.dataset}")
        assert len(cfg.models) >= 2
        return
    assert cfg.experiment_name != "${hydra:runtime.choices.method}-${hydra:runtime.choices.dataset}"


# the literature's named budgets (conf/eps/); n px: n/255
NAMED_EPS = {"mnist_linf": 0.3, "mnist_l2": 2.0, "cifar_linf": 8 / 255, "cifar_l2": 0.5, "cifar_l1": 12.0, "digits_linf": 0.1, "digits_l2": 2.0}


@pytest.mark.parametrize("option", group_options("eps"))
def test_eps_options_and_free_values(option):
    cfg = _compose(f"eps={option}")
    value = cfg.eps.value
    assert value >= 0
    if option.endswith("px"):
        assert value == pytest.approx(int(option[:-2]) / 255)
    else:
        assert value == pytest.approx(NAMED_EPS[option])
    assert _compose(f"eps={option}", "eps.value=0.3713").eps.value == pytest.approx(0.3713)  # a free value, no file needed
    assert _compose("eps.value=0.3713").attack.eps == pytest.approx(0.3713)


def test_the_command_line_is_hydras_own():
    """Groups composed at another node are chosen with Hydra's package syntax; nothing is rewritten."""
    cfg = _compose("arch@source.arch=cnn", "attack@eval_attack=fgsm", "spec@source=adversarial", "attack@source.attack=pgd_l2",
                   "scheduler=one_cycle", "optimizer=adam")
    assert cfg.source.arch._target_ == "advlab.models.CNN" and cfg.arch._target_ == "advlab.models.WideMLP"
    assert cfg.eval_attack._target_ == "advlab.attacks.FGSM"
    assert "width" not in cfg.source.arch  # composed fresh, not merged onto the trained arch
    assert cfg.source.method._target_ == "advlab.methods.AdversarialTraining" and cfg.source.attack.norm == "l2"
    assert cfg.scheduler._target_.endswith("one_cycle") and cfg.optimizer._target_ == "torch.optim.Adam"
    transfer = _compose("arch@source.arch=cnn", "arch@target.arch=mlp", "eps=mnist_linf", app="transfer")
    assert transfer.source.arch._target_ == "advlab.models.CNN" and transfer.target.arch._target_ == "advlab.models.MLP"
    assert transfer.attack.eps == pytest.approx(0.3)


@pytest.mark.parametrize("typed,message", [
    ("eps=0.37", "eps: unknown option '0.37'; allowed: 16px, 2px, 45px, 4px, 8px, cifar_l1, cifar_l2, cifar_linf, digits_l2, digits_linf, "
                 "mnist_l2, mnist_linf; any other ε: eps.value=0.37"),
    ("source.arch=cnn", "source.arch: is a config node: choose its arch option with Hydra's package syntax, arch@source.arch=cnn"),
    ("attack@eval_attack=pgd", "attack@eval_attack: unknown option 'pgd'; allowed: "),
    ("source=external", "source: is a config node: choose its spec option with Hydra's package syntax, spec@source=external"),
    ("eval_attack=fgsm", "eval_attack: is a config node: choose its attack option with Hydra's package syntax, attack@eval_attack=fgsm"),
])
def test_old_shorthands_are_refused_with_the_hydra_form(typed, message):
    from advlab.preflight.jobs import precheck

    with pytest.raises(ConfigError) as err:
        precheck([typed], "train")
    assert str(err.value).startswith(message)


def test_wandb_offline_unless_opted_in(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert _compose().logger.offline is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert _compose().logger.offline is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _compose("logger.offline=false").logger.wandb.offline is False


def test_validate_rejects_wrong_types():
    for overrides, key in ((["seed=abc"], "seed"), (["attack.steps=0"], "attack.steps"), (["dataset.batch_size=1.5"], "dataset.batch_size"),
                           (["optimizer.lr=0"], "optimizer.lr")):
        with pytest.raises(ConfigError, match=f"^{key}:"):
            cfg = _compose(*overrides)
            validate(cfg)
            check_objects(cfg)  # attacks and datamodules check their own values when the pre-flight builds them


@pytest.mark.parametrize("option", group_options("trainer"))
def test_trainer_options_compose_and_cpu_ones_instantiate(option, tmp_path):
    cfg = _compose(f"trainer={option}", f"paths.log_dir={tmp_path}")
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer" and cfg.trainer.inference_mode is False
    if option == "ddp":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices > 1
    if cfg.trainer.accelerator in ("cpu", "auto"):
        trainer = instantiate(cfg.trainer, default_root_dir=str(tmp_path), logger=False, accelerator="cpu")
        assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_logger_and_callback_options_instantiate(group, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for option in group_options(group):
        node = _compose(f"{group}={option}", "run_name=test", "experiment_name=test")[group] or {}
        for name, sub in node.items():
            if isinstance(sub, dict) or OmegaConf.is_dict(sub):
                sub = OmegaConf.merge(sub, {"save_dir": str(tmp_path)} if "save_dir" in sub else {},
                                      {"dirpath": str(tmp_path)} if "dirpath" in sub else {})
                assert instantiate(sub) is not None, (option, name)
