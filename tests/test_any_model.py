"""Any model as an external model: a researcher's own nn.Module built by `_target_` (tests/any_model_nets.py),
pyautoattack's ResNet-18 with its shipped CIFAR-10 weights through advlab-eval and advlab-transfer, and
RobustBench's zoo by name (the real package where it is installed; a stand-in with its documented layout
otherwise, so that the zoo's bad inputs are always tested); each bad input: one line, exit code 2."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import any_model_nets as nets
from advlab.errors import ConfigError
from advlab.models.external import ModuleClassifier, external_key, load_external, sha256, weights_source
from conftest import run_advlab

TESTS = Path(__file__).resolve().parent
TINY = "any_model_nets.TinyNet"
RESNET18 = "pyautoattack.examples.resnet.ResNet18"
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]


def _env(*paths) -> dict:
    """The apps import the tests' modules (and the zoo stand-in) from these folders."""
    return {"OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([*map(str, paths), str(TESTS), os.environ.get("PYTHONPATH", "")])}


def _spec(weights, arch: dict, normalize=None):
    return OmegaConf.create({"method": "external", "weights": str(weights), "arch": arch, "normalize": normalize})


def _data(x, y=None, num_classes: int = 10):
    """What the loading path needs of a datamodule: shape, classes and a test split."""
    return SimpleNamespace(input_shape=tuple(x.shape[1:]), num_classes=num_classes, x_test=x, y_test=y, setup=lambda: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """TinyNet (width 8) with random weights saved as a plain state dict; (file, module, inputs)."""
    net = nets.random_state(nets.TinyNet(width=8), seed=0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    torch.save(net.state_dict(), path)
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return path, net, x


def test_plain_module_gives_its_own_logits(tiny, tmp_path, one_torch_thread):
    from advlab.artifacts.models import Artifacts
    from advlab.artifacts.cache import ArtifactCache

    path, net, x = tiny
    with torch.no_grad():
        logits = net(x)
    artifacts = Artifacts(ArtifactCache(tmp_path / "cache"), accelerator="cpu", progress=False)
    model, metrics, key = artifacts.model(_spec(path, {"_target_": TINY, "width": 8}), _data(x, logits.argmax(1)), where="models.m")
    assert isinstance(model, ModuleClassifier) and isinstance(model.net, nets.TinyNet)
    with torch.no_grad():
        assert torch.equal(model(x), logits)  # the data's 10 classes went to TinyNet's num_classes
        assert torch.equal(model.representation(x), net.body(x))  # the input of the last nn.Linear
    assert metrics["test/acc"] == 1.0 and not list((tmp_path / "cache").rglob("*.pt"))  # loaded, not trained
    assert key["weights_sha256"] == sha256(path) and key["arch"] == {"_target_": TINY, "width": 8}
    assert external_key(_spec(path, {"_target_": TINY, "width": 9}), _data(x), "m")["arch"]["width"] == 9  # the kwargs are in the key

    normalized = load_external(_spec(path, {"_target_": TINY}, {"mean": MEAN, "std": STD}), _data(x), "models.m")
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(normalized(x), net((x - mean) / std)) and not torch.equal(normalized(x), logits)


def test_builder_function_checkpoint_wrappers_and_advlab_classifiers(tiny, tmp_path, one_torch_thread):
    """A function without num_classes (like pyautoattack's ResNet18()), a DataParallel checkpoint, and a
    `_target_` whose signature takes input_shape: an advlab Classifier, built for the data, not wrapped."""
    from advlab.models import MLP

    path, net, x = tiny
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 7}, wrapped)
    model = load_external(_spec(wrapped, {"_target_": "any_model_nets.tiny_net", "width": 8}), _data(x), "models.m")
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    mlp = MLP((3, 8, 8), 10, depth=1, width=16)
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    loaded = load_external(_spec(tmp_path / "mlp.pt", {"_target_": "advlab.models.MLP", "depth": 1, "width": 16}), _data(x), "models.m")
    assert type(loaded) is MLP and loaded.input_shape == (3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), mlp.eval()(x))


def test_unfitting_plain_modules_name_the_keys(tiny, tmp_path):
    path, net, x = tiny
    with pytest.raises(ConfigError, match=r"^models\.m\.weights: .* does not fit the architecture: 2 tensor\(s\) of another shape "
                                          r"\(file vs model, e\.g\. head\.weight \[10, 32\] vs \[7, 32\], head\.bias \[10\] vs \[7\]\)$"):
        load_external(_spec(path, {"_target_": TINY}), _data(x, num_classes=7), "models.m")  # 7 classes: a 7-way head
    partial = {k: v for k, v in net.state_dict().items() if k != "head.bias"} | {"extra.w": torch.zeros(1)}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(ConfigError, match=r"does not fit the architecture: 1 missing \(e\.g\. head\.bias\), 1 unexpected \(e\.g\. extra\.w\)$"):
        load_external(_spec(tmp_path / "partial.pt", {"_target_": TINY}), _data(x), "models.m")
    with pytest.raises(ConfigError, match=r"^models\.m\.arch: the model returns \(1, 10\) .*allowed: logits of shape \(N, 7\)"):
        load_external(_spec(path, {"_target_": TINY, "num_classes": 10}), _data(x, num_classes=7), "models.m")
    with pytest.raises(ConfigError, match=r"^models\.m\.arch\._target_: collections\.OrderedDict is not a torch\.nn\.Module class"):
        load_external(_spec(path, {"_target_": "collections.OrderedDict"}), _data(x), "models.m")
    with pytest.raises(ConfigError, match=r"^models\.m\.arch: building any_model_nets\.TinyNet failed: .*'widht'"):
        load_external(_spec(path, {"_target_": TINY, "widht": 8}), _data(x), "models.m")


# -- pyautoattack's ResNet-18 (fra31/auto-attack's examples/) ----------------------------------------
@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    """The AutoAttack authors' CIFAR-10 ResNet-18 with its shipped weights, and 16 CIFAR-10-format test
    images labelled with its own predictions (pushed towards every class), written under <root>/data."""
    pytest.importorskip("pyautoattack")
    from importlib.resources import files

    from pyautoattack.examples.resnet import ResNet18

    weights = Path(str(files("pyautoattack") / "examples" / "model_test.pt"))
    net = ResNet18()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with torch.random.fork_rng(devices=[]):
        x, labels = nets.class_images(net.eval(), 16)
    root = tmp_path_factory.mktemp("resnet18_root")
    nets.write_cifar_batches(root / "data", x, labels)
    return SimpleNamespace(root=root, weights=weights, net=net, x=x, labels=labels)


def test_resnet18_loads_through_a_plain_target(resnet18, one_torch_thread):
    model = load_external(_spec(resnet18.weights, {"_target_": RESNET18}), _data(resnet18.x), "models.rn")
    assert isinstance(model, ModuleClassifier) and len(set(resnet18.labels)) >= 5  # labels of several classes
    with torch.no_grad():
        assert torch.equal(model(resnet18.x), resnet18.net(resnet18.x))


CIFAR = ["dataset=cifar10", "dataset.val_fraction=0", "logger=csv"]


def test_resnet18_in_advlab_eval(resnet18, tmp_path):
    run = run_advlab(resnet18.root, *CIFAR, "~models.standard", "~models.adversarial", "+spec@models.rn=external",
                     f"models.rn.weights={resnet18.weights}", f"+models.rn.arch._target_={RESNET18}", "analyses=[robustness]",
                     "robustness.run=[pgd_linf]", "robustness.eps.linf=[0,0.03]", "robustness.attacks.pgd_linf.steps=3", "max_points=16",
                     run_dir=tmp_path / "eval", module="advlab.apps.evaluate", env=_env())
    assert run.returncode == 0, run.stderr[-3000:]
    rn = run.metrics["models"]["rn"]
    assert rn["clean_acc"]["mean"] == 1.0  # its own predictions: the weights were loaded as the module's own
    assert rn["sources"][0]["weights"] == str(resnet18.weights) and rn["sources"][0]["sha256"] == sha256(resnet18.weights)
    pgd = rn["robustness"]["pgd_linf"]["mean"]
    assert pgd[0] == 1.0 and pgd[1] < 0.5  # a standard CIFAR-10 ResNet falls at ε = 0.03


@pytest.mark.slow  # a full transfer run (~20 s); advlab-eval of the same model stays in the default suite
def test_resnet18_as_advlab_transfer_source(resnet18, tmp_path):
    roles = [arg for role in ("source", "target") for arg in
             (f"spec@{role}=external", f"{role}.weights={resnet18.weights}", f"~arch@{role}.arch", f"+{role}.arch._target_={RESNET18}")]
    run = run_advlab(resnet18.root, *CIFAR, *roles, "eps.value=0.03", "attack.steps=3", run_dir=tmp_path / "transfer",
                     module="advlab.apps.transfer", env=_env())
    assert run.returncode == 0, run.stderr[-3000:]
    m = run.metrics
    assert m["source/clean_acc"] == 1.0 and m["transfer/same_model"] == 1.0
    assert m["source/adv_acc"] < 0.5 and m["transfer/target_acc"] == pytest.approx(m["source/adv_acc"])


# -- RobustBench's zoo ------------------------------------------------------------------------------
def _zoo_spec(model_dir, name="Standard", dataset="cifar10", threat_model="Linf"):
    return OmegaConf.create({"method": "external", "robustbench": {"name": name, "dataset": dataset, "threat_model": threat_model,
                                                                   "model_dir": str(model_dir)}, "normalize": None})


def test_real_zoo_entry_loads_through_its_own_architecture(tmp_path, one_torch_thread):
    """cifar10 Linf `Standard` (a WideResNet-28-10): random weights written as robustbench keeps them,
    loaded by advlab (weights_only) and by robustbench's own load_model: the same logits."""
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import load_model
    except Exception as err:  # absent, or without its dependencies (timm, ...)
        pytest.skip(f"robustbench is not importable: {err}")
    net = nets.random_state(model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]["model"](), seed=0)
    (tmp_path / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "cifar10" / "Linf" / "Standard.pt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = load_external(_zoo_spec(tmp_path), _data(x), "models.rb")
    reference = load_model("Standard", model_dir=str(tmp_path), dataset="cifar10", threat_model="Linf")
    with torch.no_grad():
        assert torch.equal(model(x), net(x)) and torch.equal(model(x), reference(x))


@pytest.fixture
def stand_in_zoo(tmp_path, monkeypatch):
    """`robustbench` importable as the stand-in (tests/any_model_nets.ZOO_SOURCE) for this test only."""
    root = nets.write_zoo_stand_in(tmp_path / "stand_in")
    for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m == "robustbench" or m.startswith("robustbench.")]:
        del sys.modules[name]  # the stand-in's modules; monkeypatch then restores any real ones


def _stand_in_weights(model_dir: Path, name="Standard") -> torch.nn.Module:
    """A stand-in entry with random weights saved as zoo files often are: {state_dict: ...}, `module.model.`
    prefixes, without the normalisation buffers its constructor sets."""
    from robustbench.model_zoo import model_dicts

    entry = next(iter(next(iter(model_dicts.values())).values()))[name]
    net = nets.random_state(entry["model"](), seed=2)
    state = {f"module.model.{k}": v for k, v in net.state_dict().items() if k not in ("mu", "sigma")}
    (model_dir / "cifar10" / "Linf").mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 99}, model_dir / "cifar10" / "Linf" / f"{name}.pt")
    return net


def test_zoo_entry_by_name(stand_in_zoo, tmp_path, one_torch_thread):
    net = _stand_in_weights(tmp_path / "models")
    spec = _zoo_spec(tmp_path / "models")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    spec.arch = {"_target_": "advlab.models.MLP"}  # what advlab-eval merges into a spec without one: not used
    model = load_external(spec, _data(x), "models.rb")
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    key = external_key(spec, _data(x), "models.rb")
    path = tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt"
    assert key["arch"] == {"robustbench": {"name": "Standard", "dataset": "cifar10", "threat_model": "Linf"}}
    assert key["weights_sha256"] == sha256(path) and weights_source(spec, "models.rb") == str(path.resolve())
    with pytest.raises(ConfigError, match=r"^models\.rb\.robustbench\.name: Pair2020Ensemble is an ensemble of 2 weight files"):
        load_external(_zoo_spec(tmp_path / "models", name="Pair2020Ensemble"), _data(x), "models.rb")


def test_zoo_without_robustbench_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("robustbench.")]:
        monkeypatch.delitem(sys.modules, name)  # e.g. a model_zoo left by a failed import of a broken install
    monkeypatch.setitem(sys.modules, "robustbench", None)  # `import robustbench(.model_zoo)` raises ImportError
    with pytest.raises(ConfigError, match=r"^models\.rb\.robustbench: needs the robustbench package, .*pip install 'advlab\[robustbench\]'$"):
        load_external(_zoo_spec(tmp_path), _data(torch.zeros(1, 3, 32, 32)), "models.rb")


# -- bad input: one line naming the key and the allowed values, exit code 2, before Hydra starts ----------
ZOO = ["+spec@models.rb=robustbench", "models.rb.robustbench.model_dir={models}"]  # the stand-in zoo, no file there
BAD = [
    ("zoo_name", ZOO + ["models.rb.robustbench.name=Standrd"], "models.rb.robustbench.name",
     "unknown model 'Standrd' for cifar10 Linf; allowed: Standard, Wide2021Made, Pair2020Ensemble"),
    ("zoo_dataset", ZOO + ["models.rb.robustbench.dataset=svhn"], "models.rb.robustbench.dataset",
     "unknown value 'svhn'; allowed: cifar10, cifar100"),
    ("zoo_threat_model", ZOO + ["models.rb.robustbench.dataset=cifar100", "models.rb.robustbench.threat_model=L2"],
     "models.rb.robustbench.threat_model", "RobustBench has no cifar100 models for 'L2'; allowed: Linf"),
    ("zoo_file", ZOO + ["models.rb.robustbench.name=Wide2021Made"], "models.rb.robustbench.model_dir",
     "no weights for Wide2021Made at {models}/cifar10/Linf/Wide2021Made.pt: put its file there (on a machine with internet, "
     "robustbench.utils.load_model('Wide2021Made', model_dir='{models}', dataset='cifar10', threat_model='Linf') downloads it"),
    ("not_a_module", ["+spec@models.m=external", "models.m.weights={tiny}", "+models.m.arch._target_=any_model_nets.not_a_module"],
     "models.m.arch._target_", "any_model_nets.not_a_module built a dict, not a torch.nn.Module; allowed: an importable class"),
    ("unfitting_weights", ["+spec@models.m=external", "models.m.weights={tiny}", f"+models.m.arch._target_={TINY}", "+models.m.arch.width=16"],
     "models.m.weights", "does not fit the architecture: 7 tensor(s) of another shape (file vs model, e.g. body.0.weight [8, 3, 3, 3] vs [16, 3, 3, 3]"),
]
EVAL = ["dataset=cifar10", "~models.standard", "~models.adversarial", "logger=csv"]


def _args(overrides, tiny, tmp_path) -> tuple[list[str], dict]:
    values = {"tiny": tiny[0], "models": tmp_path / "models"}
    return [a.format(**values) for a in overrides], values


@pytest.mark.parametrize("overrides,key,allowed", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_refused_by_the_preflight(stand_in_zoo, tiny, tmp_path, overrides, key, allowed):
    """advlab-eval's pre-flight (advlab.preflight.jobs.precheck), in-process: the ConfigError that the app prints as
    its one line (`advlab-eval: error: <it>`) before exiting with code 2; the same through a real process below."""
    from advlab.preflight.jobs import precheck

    args, values = _args(overrides, tiny, tmp_path)
    with pytest.raises(ConfigError) as err:
        precheck([*EVAL, *args], "eval")
    assert err.value.key == key and str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)
    assert allowed.format(**values) in str(err.value)


@pytest.mark.parametrize("case", ["zoo_file", "unfitting_weights"])
def test_bad_input_is_one_line_and_exit_2(tiny, tmp_path, case):
    _, overrides, key, allowed = next(c for c in BAD if c[0] == case)
    args, values = _args(overrides, tiny, tmp_path)
    stand_in = nets.write_zoo_stand_in(tmp_path / "stand_in")
    run = run_advlab(tmp_path, *EVAL, *args, module="advlab.apps.evaluate", env=_env(stand_in))
    assert run.returncode == 2, run.log[-2000:]
    assert "Traceback" not in run.log
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"advlab-eval: error: {key}: ") and allowed.format(**values) in lines[0], lines[0]
    assert not run.run_dir.exists() and not (tmp_path / "cache").exists()  # refused before any work
