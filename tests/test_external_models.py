"""External models (advlab.models.external): a torchvision resnet18 state dict saved here, loaded by
advlab-eval and advlab-transfer in real subprocesses, its normalisation a first layer; the pre-flight
checks; the AutoAttack presets."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from advlab.preflight.jobs import precheck
from advlab.errors import ConfigError
from conftest import run_advlab

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
MEAN, STD = 0.3, 0.4  # the normalisation the weights expect (one grey channel, repeated to RGB)
TV = "advlab.models.external.TorchvisionClassifier"


def _digits():
    from advlab.data import DigitsDataModule

    dm = DigitsDataModule(seed=0)  # the digits option's split at seed 0
    dm.setup()
    return dm


def _prep(x):
    return ((x - MEAN) / STD).expand(-1, 3, -1, -1)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """torchvision resnet18 (10 classes) on digits: random backbone (BN statistics of the training
    images), trained readout; saved RobustBench style ({model_state_dict}, `module.` prefixes).
    Returns (file, the test-set predictions of the plain torchvision model)."""
    from torchvision.models import resnet18

    dm = _digits()
    x, y = dm.x_train[:600], dm.y_train[:600]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = resnet18(num_classes=10)
        fc, net.fc = net.fc, nn.Identity()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = 1.0  # one pass gives the training images' statistics
            net.train()(_prep(x))
            feats = net.eval()(_prep(x))
        opt = torch.optim.Adam(fc.parameters(), 1e-2)
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(fc(feats), y).backward()
            opt.step()
        net.fc = fc
    with torch.no_grad():
        pred = net(_prep(dm.x_test)).argmax(1)
    path = tmp_path_factory.mktemp("weights") / "resnet18_digits.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
    return path, pred, dm.y_test


def _spec(path) -> dict:
    return {"method": "external", "weights": str(path), "arch": {"_target_": TV, "builder": "resnet18"},
            "normalize": {"mean": [MEAN], "std": [STD]}}


def _override(node: str, spec: dict) -> str:
    """A spec as one Hydra command-line dict value."""
    return f"{node}={_flow(spec)}"


def _flow(value) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_flow(v) for v in value) + "]"
    return str(value)


def test_checkpoint_is_converted_and_normalisation_is_the_first_layer(resnet):
    from advlab.artifacts.models import Artifacts
    from advlab.artifacts.cache import ArtifactCache
    from advlab.models.external import TorchvisionClassifier, load_external, read_state_dict

    path, pred, y = resnet
    state = read_state_dict(path, "weights")
    assert "conv1.weight" in state and not any(k.startswith("module.") for k in state)
    dm = _digits()
    model = load_external(OmegaConf.create(_spec(path)), dm, "models.r")
    assert isinstance(model, TorchvisionClassifier) and float(model.mean) == pytest.approx(MEAN) and float(model.std) == pytest.approx(STD)
    with torch.no_grad():
        assert torch.equal(model(dm.x_test).argmax(1), pred)  # pixel-space inputs: the layer normalises
        assert model.representation(dm.x_test[:5]).shape == (5, 512)
    no_norm = load_external(OmegaConf.create({**_spec(path), "normalize": None}), dm, "models.r")
    with torch.no_grad():
        assert not torch.equal(no_norm(dm.x_test).argmax(1), pred)
    artifacts = Artifacts(ArtifactCache(path.parent / "cache"), accelerator="cpu", progress=False)
    _, metrics, key = artifacts.model(OmegaConf.create(_spec(path)), dm, where="models.r")
    assert metrics["test/acc"] == pytest.approx(float((pred == y).float().mean())) and metrics["test/acc"] > 0.4
    assert len(key["weights_sha256"]) == 64 and not list((path.parent / "cache").rglob("*.pt"))  # not trained: nothing cached


def test_external_model_in_advlab_eval_with_a_robustbench_line(advlab_root, resnet):
    """Acceptance 4 (eval): the saved torchvision state dict next to a trained advlab model, PGD and
    AutoAttack (short) on 40 points; a RobustBench-style line per model, recorded in metrics.json."""
    path, pred, y = resnet
    run = run_advlab(advlab_root, "~models.adversarial", _override("+models.resnet", _spec(path)), "seeds=[0,1]", "model_defaults.max_epochs=2",
                     "arch.width=64", "analyses=[robustness]", "max_points=40", "robustness.eps.linf=[0,0.1]",
                     "robustness.run=[pgd_linf,autoattack]", "+attack@robustness.attacks.autoattack=autoattack",
                     "robustness.attacks.pgd_linf.steps=5", "robustness.attacks.autoattack.apgd_steps=5",
                     "robustness.attacks.autoattack.fab_steps=5", "robustness.attacks.autoattack.square_queries=50",
                     "robustness.attacks.autoattack.n_target_classes=3", "logger=csv", module="advlab.apps.evaluate", env=ONE_THREAD)
    assert run.returncode == 0, run.stderr[-3000:]
    models = run.metrics["models"]
    r = models["resnet"]
    assert r["clean_acc"]["mean"] == pytest.approx(float((pred == y).float().mean()))
    assert r["sources"][0]["sha256"] and r["sources"][0]["weights"] == str(path)
    assert r["members"] == ["seed=0"] and models["standard"]["members"] == ["seed=0", "seed=1"]  # a file: one member
    entries = json.loads((run.run_dir / "robustbench.json").read_text())
    for name in ("standard", "resnet"):
        rb, aa = models[name]["robustbench"], models[name]["robustness"]["autoattack"]
        assert rb["n"] == 40 and rb["eps"] == 0.1 and rb["norm"] == "linf" and rb["standalone"] and rb["version"] == "standard"
        assert rb["members"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        # standalone: the clean-correct points, the members in order; the curve's point is a worst case over
        # losses and earlier attacks of its norm, so it never lies above the standalone figure by more than chance
        assert rb["clean"] == pytest.approx(aa["mean"][0]) and aa["mean"][1] <= rb["autoattack"] + 0.1 and rb["autoattack"] <= rb["clean"]
        line = f"model {name}: clean {rb['clean']:.3f}, AutoAttack robust {rb['autoattack']:.3f} (Linf eps=0.1, n=40; standalone standard AutoAttack)"
        assert line in run.log
        entry = entries[name]
        assert entry["clean_acc"] == f"{100 * rb['clean']:.2f}" and entry["autoattack_acc"] == f"{100 * rb['autoattack']:.2f}"
        assert entry["threat_model"] == "Linf" and entry["eps"] == "0.1" and entry["n_examples"] == 40 and entry["version"] == "standard"


TRANSFER = ["attack.steps=5", "logger=csv", "source.max_epochs=2", "source.arch.width=64"]


def _external_role(role: str, path) -> list[str]:
    return [f"spec@{role}=external", f"{role}.weights={path}", f"arch@{role}.arch=torchvision", f"{role}.normalize={{mean:[{MEAN}],std:[{STD}]}}"]


def test_external_model_as_transfer_target(advlab_root, resnet):
    """Acceptance 4 (transfer): PGD examples of a trained wide MLP evaluated on the saved resnet18."""
    path, pred, y = resnet
    run = run_advlab(advlab_root, *TRANSFER, *_external_role("target", path), module="advlab.apps.transfer", env=ONE_THREAD)
    assert run.returncode == 0, run.stderr[-3000:]
    m = run.metrics
    assert m["target/clean_acc"] == pytest.approx(float((pred == y).float().mean()))
    assert m["transfer/same_model"] == 0.0 and m["transfer/target_acc"] < m["target/clean_acc"]


@pytest.mark.slow  # ~30 s: PGD on the resnet18 over the whole test split
def test_external_model_as_transfer_source_and_target(advlab_root, resnet):
    path, _, _ = resnet
    run = run_advlab(advlab_root, "attack.steps=5", "logger=csv", *_external_role("source", path), *_external_role("target", path),
                     module="advlab.apps.transfer", env=ONE_THREAD)
    assert run.returncode == 0, run.stderr[-3000:]
    m = run.metrics
    assert m["transfer/same_model"] == 1.0 and m["transfer/target_acc"] == pytest.approx(m["source/adv_acc"])
    assert m["source/adv_acc"] < 0.5 * m["source/clean_acc"]


@pytest.mark.slow  # ~8 s: the same check as the in-process one below, through the real app
def test_preflight_missing_file_is_one_line_exit_2(advlab_root, tmp_path):
    missing = tmp_path / "nope.pt"
    run = run_advlab(advlab_root, *TRANSFER, *_external_role("target", missing), module="advlab.apps.transfer")
    assert run.returncode == 2 and "Traceback" not in run.log
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines == [f"advlab-transfer: error: target.weights: {missing} does not exist; give the path of a state-dict file (.pt / .pth)"]
    assert not (advlab_root / "cache").exists()


def test_preflight_unknown_builder_bad_normalize_and_unfitting_weights(resnet, tmp_path):
    path, _, _ = resnet
    spec = _spec(path)
    with pytest.raises(ConfigError, match=r"^models\.r\.arch\.builder: unknown builder 'resnet19'; allowed: .*resnet18"):
        precheck([_override("+models.r", {**spec, "arch": {"_target_": TV, "builder": "resnet19"}})], "eval")
    with pytest.raises(ConfigError, match=r"^models\.r\.normalize: .*std > 0"):
        precheck([_override("+models.r", {**spec, "normalize": {"mean": [0.0], "std": [0.0]}})], "eval")
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=rf"^target\.weights: {missing} does not exist; give the path of a state-dict file"):
        precheck(_external_role("target", missing), "transfer")
    with pytest.raises(ConfigError, match=r"^derived\.measure_transfer: needs a trained source spec"):
        precheck([*_external_role("source", path), "derived.measure_transfer=true"], "train")
    with pytest.raises(ConfigError, match=r"^target\.weights: is required"):
        precheck(["spec@target=external"], "transfer")
    from advlab.models.external import load_external

    wrong = {**spec, "arch": {"_target_": TV, "builder": "resnet34"}}
    with pytest.raises(ConfigError, match=r"^models\.r\.weights: .* does not fit the architecture: \d+ missing"):
        load_external(OmegaConf.create(wrong), _digits(), "models.r")
    junk = tmp_path / "junk.pt"
    torch.save({"epoch": 3}, junk)
    with pytest.raises(ConfigError, match=r"not a state dict"):
        load_external(OmegaConf.create({**spec, "weights": str(junk)}), _digits(), "models.r")


@pytest.mark.parametrize("preset", ["autoattack_digits", "autoattack_mnist"])
def test_autoattack_presets_compose_and_pass_the_preflight(preset):
    precheck([f"experiment={preset}"], "eval")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.runtime.resolvers import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"experiment={preset}"])
    assert set(cfg.models) == {"standard", "adversarial", "sparsity_1e4", "sparsity_100"}
    assert cfg.models.sparsity_1e4.method.lam == 1e4 and cfg.models.sparsity_100.method.lam == 100
    assert list(cfg.robustness.run) == ["pgd_linf", "autoattack"] and list(cfg.robustness.losses) == ["ce"]
    assert "masking" in cfg.analyses and cfg.robustness.attacks.autoattack._target_.endswith("AutoAttack")
    assert cfg.dataset._target_.endswith("MNISTDataModule" if preset.endswith("mnist") else "DigitsDataModule")
    precheck([f"experiment={preset}", "robustbench_eps=0.3"], "eval")  # standalone: any ε, not only the curve's grid
    with pytest.raises(ConfigError, match=r"^robustbench_eps: "):
        precheck([f"experiment={preset}", "robustbench_eps=-1"], "eval")


@pytest.mark.slow  # ~40 s: crafts the training set's targeted examples on the resnet18
def test_external_model_as_perturbation_learning_source(advlab_root, resnet):
    """advlab-train method=perturbation with the saved resnet18 as its source: crafted on it, not trained."""
    path, pred, y = resnet
    run = run_advlab(advlab_root, *_external_role("source", path), "attack.steps=5", "trainer.max_epochs=1", "arch.width=64",
                     "callbacks=none", "logger=csv", env=ONE_THREAD)
    assert run.returncode == 0, run.stderr[-3000:]
    m = run.metrics
    assert m["source/test/acc"] == pytest.approx(float((pred == y).float().mean()))
    assert m["perturb/success_rate"] > 0.5
