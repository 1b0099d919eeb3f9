"""Perturbation-learning datasets: target rules, crafting, success rate, δ-only inputs; the cache."""
from __future__ import annotations

import threading

import pytest
import torch

from advlab.attacks import PGD, OneStepL2
from advlab.artifacts.cache import ArtifactCache, spec_key
from advlab.derived.perturbation import craft_dataset, make_targets
from advlab.errors import ConfigError
from advlab.models import MLP


def test_target_rules():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (20000,), generator=g)
    assert torch.equal(make_targets(y, 10, "det", g), (y + 1) % 10)
    rand = make_targets(y, 10, "rand", g)
    assert not (rand == y).any()
    offsets = torch.bincount((rand - y) % 10, minlength=10).float() / len(y)
    assert offsets[0] == 0 and torch.allclose(offsets[1:], torch.full((9,), 1 / 9), atol=0.01)
    uni = torch.bincount(make_targets(y, 10, "uniform", g), minlength=10).float() / len(y)
    assert torch.allclose(uni, torch.full((10,), 0.1), atol=0.01)
    assert (make_targets(y, 10, "uniform", g) == y).float().mean().item() == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ConfigError, match="derived.target_rule"):
        make_targets(y, 10, "nope", g)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    x = torch.rand(600, 1, 6, 6)
    w = torch.randn(3, 36)
    y = (x.flatten(1) @ w.T).argmax(1)
    model = MLP((1, 6, 6), 3, depth=1, width=64, normalize="none")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_craft_dataset_success_rate_matches_source_predictions(trained):
    model, x, y = trained
    attack = PGD(eps=1.0, norm="l2", steps=20, rel_step_size=0.2, random_start=False)
    out = craft_dataset(model, attack, x, y, 3, target_rule="det", batch_size=128, progress=False)
    assert attack.targeted
    assert torch.equal(out["y"], (y + 1) % 3)
    with torch.no_grad():
        hit = (model(out["x"]).argmax(1) == out["y"]).float().mean().item()
    assert out["success_rate"] == pytest.approx(hit)
    assert out["success_rate"] > 0.9
    delta = (out["x"] - x).flatten(1).norm(dim=1)
    assert delta.max() <= 1.0 + 1e-5 and out["delta_l2_mean"] == pytest.approx(delta.mean().item(), rel=1e-4)
    assert out["x"].min() >= 0 and out["x"].max() <= 1


def test_craft_delta_only_and_noise_base(trained):
    _, x, y = trained
    model = MLP((1, 6, 6), 3, depth=1, width=64, normalize="none").eval()  # untrained: no vanishing input gradients
    attack = OneStepL2(eps=0.5, bounds=None)
    out = craft_dataset(model, attack, x, y, 3, target_rule="uniform", base="natural", train_on="delta", seed=3, bounds=None, progress=False)
    norms = out["x"].flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, 0.5), atol=1e-4)  # δ alone, exactly ε long (no clipping)
    noise = craft_dataset(model, PGD(eps=1.0, norm="l2", steps=5), x, y, 3, base="uniform", seed=3, progress=False)
    assert not torch.allclose(noise["preview_base"], x[: len(noise["preview_base"])])
    again = craft_dataset(model, PGD(eps=1.0, norm="l2", steps=5), x, y, 3, base="uniform", seed=3, progress=False)
    assert torch.equal(noise["x"], again["x"])  # seeded: reproducible


def test_crafted_dataset_key_covers_the_attack_settings():
    from advlab.artifacts.keys import describe_object

    a, b = PGD(eps=0.5, norm="l2"), PGD(eps=0.5, norm="l2")
    assert describe_object(a) == describe_object(b)
    for changed in (PGD(eps=0.6, norm="l2"), PGD(eps=0.5, norm="linf"), PGD(eps=0.5, norm="l2", steps=11), PGD(eps=0.5, norm="l2", seed=1)):
        assert spec_key(describe_object(changed)) != spec_key(describe_object(a))
    b.targeted = True
    assert describe_object(b)["targeted"] is True and describe_object(a)["targeted"] is False


def test_cache_key_is_the_spec_and_writes_are_atomic(tmp_path):
    assert spec_key({"a": 1, "b": [1, 2]}) == spec_key({"b": [1, 2], "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})
    cache = ArtifactCache(tmp_path)
    calls = []

    def build():
        calls.append(1)
        return {"t": torch.arange(3)}

    threads = [threading.Thread(target=cache.get_or_create, args=("models", {"k": 1}, build)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    payload, hit = cache.get_or_create("models", {"k": 1}, build)
    assert hit and len(calls) == 1 and torch.equal(payload["t"], torch.arange(3))
    assert payload["spec"] == {"k": 1}

    def broken():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get_or_create("models", {"k": 2}, broken)
    assert not cache.path("models", {"k": 2}).exists() and not list(tmp_path.rglob("*.tmp"))


def test_unwritable_cache_dir_is_a_config_error():
    with pytest.raises(ConfigError, match="paths.cache_dir"):
        ArtifactCache("/proc/advlab-cache")


def test_source_and_trained_model_do_not_share_initial_weights(tmp_path):
    """The model trained on the perturbation dataset must start from its own random init."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from advlab.artifacts.models import Artifacts
    from advlab.data import DigitsDataModule
    from advlab.models import build_model

    dm = DigitsDataModule(seed=0, max_train=64)
    dm.setup()
    arch = OmegaConf.create({"_target_": "advlab.models.MLP", "_partial_": True, "depth": 1, "width": 16})
    spec = OmegaConf.create({"arch": arch, "method": {"_target_": "advlab.methods.StandardTraining"}, "max_epochs": 1, "seed": 0, "scheduler": None,
                             "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.0}})  # lr 0: weights stay at init
    source, _, _ = Artifacts(ArtifactCache(tmp_path), accelerator="cpu", progress=False).model(spec, dm)
    pl.seed_everything(0, verbose=False)  # what advlab-train does before building the trained model
    trained = build_model(arch, dm)
    assert not torch.equal(source.net[1].weight.cpu(), trained.net[1].weight)


def test_weak_attack_check_tells_budget_from_optimiser_bound():
    from advlab.derived.perturbation import weak_attack_check

    attack = PGD(eps=0.5, norm="l2", steps=1, step_size=0.01)
    assert weak_attack_check(attack, 0.96, 0.1) == (False, False, "")
    weak, budget, msg = weak_attack_check(attack, 0.40, 0.495)
    assert weak and budget and "budget-bound" in msg and "ε=0.5" in msg and "steps=1" in msg and "step size=0.01" in msg
    weak, budget, msg = weak_attack_check(attack, 0.40, 0.3)
    assert weak and not budget and "optimiser-bound" in msg and "attack.steps" in msg


def test_weak_crafting_attack_is_flagged_in_metrics_and_the_log(tmp_path, caplog):
    """Digits, a small source MLP: a 1-step, tiny-ε attack is flagged, a strong one is not."""
    from omegaconf import OmegaConf

    from advlab.artifacts.models import Artifacts
    from advlab.data import DigitsDataModule
    from advlab.derived import PerturbationDataset, SourceModel

    dm = DigitsDataModule(seed=0, max_train=300)
    dm.setup()
    arch = OmegaConf.create({"_target_": "advlab.models.MLP", "_partial_": True, "depth": 1, "width": 64})
    spec = OmegaConf.create({"arch": arch, "method": {"_target_": "advlab.methods.StandardTraining"}, "max_epochs": 8, "seed": 0, "scheduler": None,
                             "optimizer": {"_target_": "torch.optim.Adam", "lr": 0.01}})
    artifacts = Artifacts(ArtifactCache(tmp_path), accelerator="cpu", progress=False)
    source = SourceModel(*artifacts.model(spec, dm))
    # weak: L∞ (the box clips some pixels, never all, so max |δ| = ε): budget-bound
    runs = {"weak": PGD(eps=0.01, norm="linf", steps=1, random_start=False),
            "strong": PGD(eps=4.0, norm="l2", steps=40, rel_step_size=0.1, random_start=False),
            "short": PGD(eps=4.0, norm="l2", steps=1, step_size=0.05, random_start=False)}
    metrics = {}
    for name, attack in runs.items():
        caplog.clear()
        with caplog.at_level("WARNING", logger="advlab.derived.perturbation"):
            derived = PerturbationDataset().build(source, dm, artifacts, attack=attack)
        metrics[name] = derived.metrics
        warned = [r.getMessage() for r in caplog.records if "Weak crafting attack" in r.getMessage()]
        assert bool(warned) == (metrics[name]["perturb/weak_attack"] == 1.0), (name, warned)
    assert metrics["strong"]["perturb/success_rate"] >= 0.95 and metrics["strong"]["perturb/weak_attack"] == 0.0
    assert metrics["weak"]["perturb/success_rate"] < 0.5 and metrics["weak"]["perturb/weak_attack"] == 1.0
    assert metrics["weak"]["perturb/budget_bound"] == 1.0 and metrics["weak"]["perturb/delta_linf_mean"] == pytest.approx(0.01)
    assert metrics["short"]["perturb/weak_attack"] == 1.0 and metrics["short"]["perturb/budget_bound"] == 0.0
    assert metrics["short"]["perturb/delta_l2_mean"] <= 0.05 + 1e-6


def _split(*overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from advlab.derived import split_method
    from advlab.runtime.resolvers import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "method.label_smoothing=0.2"])
    training, derived, notes = split_method(cfg.method, cfg.get("derived"))
    return cfg, training, instantiate(derived) if derived is not None else None, notes


@pytest.mark.parametrize("overrides,builder_class,options", [
    (["method=perturbation", "derived.target_rule=rand", "derived.batch_size=64", "seed=3"], "PerturbationDataset",
     {"target_rule": "rand", "batch_size": 64, "seed": 3, "base": "natural"}),
    (["method=robust_dataset", "derived.steps=7", "seed=2"], "RobustDataset", {"steps": 7, "seed": 2, "step_size": 0.1}),
    (["method=standard", "+derived=robust_dataset", "derived.steps=7"], "RobustDataset", {"steps": 7, "seed": 0}),
])
def test_a_derived_dataset_is_its_own_config_group(overrides, builder_class, options):
    """The derived dataset is the `derived` node (one object); the method node is the training's
    alone (StandardTraining and its own keys). method=perturbation / robust_dataset choose theirs."""
    cfg, training, builder, notes = _split(*overrides)
    assert training["_target_"] == "advlab.methods.StandardTraining" and training.label_smoothing == 0.2
    assert not {k for k in training if cfg.method[k] is not None} - {"_target_", "label_smoothing", "loss", "channels_last", "compile"}
    assert type(builder).__name__ == builder_class and notes == []
    assert {k: getattr(builder, k) for k in options} == options


def test_the_old_method_keys_work_one_release_with_a_line_naming_the_new_form():
    _, training, builder, notes = _split("method=perturbation", "method.target_rule=rand", "method.craft_batch_size=64")
    assert (builder.target_rule, builder.batch_size) == ("rand", 64) and "target_rule" not in training
    assert notes == ["method.target_rule is deprecated: use derived.target_rule=rand",
                     "method.craft_batch_size is deprecated: use derived.batch_size=64"]
    _, _, builder, notes = _split("method=robust_dataset", "method.steps=7", "method.construct_batch_size=32")
    assert (builder.steps, builder.batch_size) == (7, 32) and len(notes) == 2 and notes[0].endswith("use derived.steps=7")
    with pytest.raises(ConfigError, match="method.target_rule: a derived dataset's option, and no dataset is chosen: choose one with derived="):
        _split("method=standard", "+method.target_rule=rand")


def test_builder_options_are_checked_when_built():
    from advlab.derived import PerturbationDataset, RobustDataset

    with pytest.raises(ConfigError, match="^batch_size: "):
        PerturbationDataset(batch_size=0)
    with pytest.raises(ConfigError, match="^target_rule: unknown value 'nope'; allowed: det, rand, uniform"):
        PerturbationDataset(target_rule="nope")
    with pytest.raises(ConfigError, match="^step_size: "):
        RobustDataset(step_size=0)


def test_source_agreement_callback_is_the_fraction_of_equal_predictions(one_torch_thread):
    import pytorch_lightning as pl

    from advlab.data import DigitsDataModule
    from advlab.derived import SourceAgreement
    from advlab.methods import StandardTraining

    dm = DigitsDataModule(seed=0, max_train=64, eval_batch_size=50)  # several test batches, the last one short
    dm.setup()
    torch.manual_seed(0)
    source, other = (MLP(dm.input_shape, 10, depth=1, width=16, mean=dm.mean, std=dm.std).eval() for _ in range(2))
    with torch.no_grad():
        expected = float((source(dm.x_test).argmax(1) == other(dm.x_test).argmax(1)).float().mean())
    assert 0.0 < expected < 1.0
    for model, agreement in ((source, 1.0), (other, expected)):
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             accelerator="cpu", callbacks=[SourceAgreement(source)])
        result = trainer.test(StandardTraining(model, {"_target_": "torch.optim.SGD", "lr": 0.1}), datamodule=dm, verbose=False)[0]
        assert result["test/agreement"] == pytest.approx(agreement, abs=1e-6)
