"""Goodfellow et al. (2015) on MNIST (issue 21): loss-weighted FGSM adversarial training, softmax
regression, the `adversarial_error` analysis and the `goodfellow_mnist` preset. The oracles are closed
forms of softmax regression: ∇x CE = Wᵀ(softmax(Wx + b) − onehot(y)), ∇W CE = (P − Y)ᵀX / N."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from advlab.analysis.adversarial_error import AdversarialError
from advlab.analysis.protocol import Points
from advlab.attacks import FGSM
from advlab.errors import ConfigError
from advlab.methods import AdversarialTraining
from advlab.models.linear import SoftmaxRegression
from conftest import REPO, run_advlab

OPT = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05})


def _linear(d: int = 6, classes: int = 3, seed: int = 0) -> SoftmaxRegression:
    """Softmax regression on raw pixels (normalize none) with N(0, 1) weights and biases."""
    gen = torch.Generator().manual_seed(seed)
    model = SoftmaxRegression((d,), classes, normalize="none")
    with torch.no_grad():
        model.linear.weight.copy_(torch.randn(classes, d, generator=gen))
        model.linear.bias.copy_(torch.randn(classes, generator=gen))
    return model


def _data(n: int = 24, d: int = 6, classes: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _fgsm_by_hand(model, x, y, eps):
    """x + ε·sign(Wᵀ(p − onehot y)), clipped to [0, 1]; for two classes the sign is sign(w_other − w_y)."""
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    p = torch.softmax(x @ w.T + b, dim=1)
    grad = (p - F.one_hot(y, w.shape[0])) @ w
    if w.shape[0] == 2:  # (p_other)(w_other − w_y): the sign does not depend on x
        assert torch.equal(grad.sign(), (w[1 - y] - w[y]).sign())
    return (x + eps * grad.sign()).clamp(0, 1)


def _ce_and_grad(model, x, y):
    """Mean cross-entropy of softmax regression and its gradient in W, by hand."""
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    z = x @ w.T + b
    ce = (torch.logsumexp(z, dim=1) - z.gather(1, y[:, None]).squeeze(1)).mean()
    return ce, (torch.softmax(z, dim=1) - F.one_hot(y, w.shape[0])).T @ x / len(x)


# -- loss-weighted adversarial training -------------------------------------------------------------------
@pytest.mark.parametrize("clean, adv", [(0.5, 0.5), (1.0, 0.3), (0.0, 1.0), (1.0, 0.0), (2.0, 6.0)])
def test_weighted_loss_and_its_gradient_match_the_closed_form(clean, adv):
    """(c·CE(x) + a·CE(x_adv)) / (c + a) on every point, x_adv the FGSM point (a constant for the weights)."""
    model, (x, y) = _linear(), _data()
    module = AdversarialTraining(model, OPT, attack=FGSM(eps=0.25), clean_weight=clean, adv_weight=adv)
    loss, _ = module.training_loss(x, y)
    loss.backward()
    ce_clean, grad_clean = _ce_and_grad(model, x, y)
    x_adv = _fgsm_by_hand(model, x, y, 0.25)
    assert ((x_adv == 0) | (x_adv == 1)).any()  # the clipping is part of what is checked
    ce_adv, grad_adv = _ce_and_grad(model, x_adv, y)
    assert float(loss.detach()) == pytest.approx(float((clean * ce_clean + adv * ce_adv) / (clean + adv)), rel=1e-5)
    want = (clean * grad_clean + adv * grad_adv) / (clean + adv)
    assert torch.allclose(model.linear.weight.grad, want, atol=1e-6)


def test_weights_0_1_are_the_default_full_batch_adversarial_training():
    model, (x, y) = _linear(), _data()
    weighted = AdversarialTraining(model, OPT, attack=FGSM(eps=0.25), clean_weight=0.0, adv_weight=1.0)
    default = AdversarialTraining(model, OPT, attack=FGSM(eps=0.25))
    assert default.loss_weights is None and default.adv_ratio == 1.0
    (a, logits_a), (b, logits_b) = weighted.training_loss(x, y), default.training_loss(x, y)
    assert float(a) == float(b) and torch.equal(logits_a, logits_b)


def test_the_two_weights_differ_from_the_batch_fraction():
    """adv_ratio 0.5 trains half the batch on x_adv only; weights 1/1 train every point on both."""
    model, (x, y) = _linear(), _data()
    ratio = AdversarialTraining(model, OPT, attack=FGSM(eps=0.25), adv_ratio=0.5)
    loss, _ = ratio.training_loss(x, y)
    half = len(x) // 2
    x_mixed = torch.cat([_fgsm_by_hand(model, x[:half], y[:half], 0.25), x[half:]])
    assert float(loss) == pytest.approx(float(_ce_and_grad(model, x_mixed, y)[0]), rel=1e-5)
    weighted, _ = AdversarialTraining(model, OPT, attack=FGSM(eps=0.25), clean_weight=1.0, adv_weight=1.0).training_loss(x, y)
    assert abs(float(weighted) - float(loss)) > 1e-3


@pytest.mark.parametrize("kwargs, key, words", [
    ({"adv_ratio": 0.3, "clean_weight": 1.0, "adv_weight": 0.3}, "adv_ratio", "use one of the two"),
    ({"clean_weight": 0.5}, "adv_weight", "set both or neither"),
    ({"adv_weight": 0.5}, "clean_weight", "set both or neither"),
    ({"clean_weight": -1.0, "adv_weight": 1.0}, "clean_weight", "must be a finite number >= 0, got -1.0"),
    ({"clean_weight": 0.0, "adv_weight": 0.0}, "adv_weight", "must be > 0")])
def test_bad_weights_are_one_error_naming_the_key(kwargs, key, words):
    with pytest.raises(ConfigError) as err:
        AdversarialTraining(_linear(), OPT, attack=FGSM(eps=0.25), **kwargs)
    assert err.value.key == key and words in str(err.value) and "\n" not in str(err.value)


def test_the_preflight_refuses_ratio_and_weights_together(tmp_path, monkeypatch):
    from advlab.preflight.jobs import precheck

    monkeypatch.setenv("ADVLAB_ROOT", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        precheck(["method=adversarial", "attack=fgsm", "method.adv_ratio=0.3", "method.clean_weight=1", "method.adv_weight=0.3"], "train")
    assert err.value.key == "method.adv_ratio"


# A default FGSM-AT spec's key before clean_weight/adv_weight existed (computed at 731a0ba): the cache
# entries, and the seeds derived from keys, of every adversarial model trained so far stay valid.
DEFAULT_KEY = "0098547a10623a4b"


def _spec_key(root, *overrides):
    from advlab.artifacts.cache import ArtifactCache, spec_key
    from advlab.artifacts.models import Artifacts
    from advlab.data import DigitsDataModule
    from test_fit import ARCH, _compose

    dm = DigitsDataModule(seed=0, max_train=64, batch_size=32)
    dm.setup()
    cfg = _compose("spec@source=adversarial", "attack@source.attack=fgsm", "eps=digits_linf", *overrides)
    spec = OmegaConf.create({**OmegaConf.to_container(cfg.source, resolve=True), "arch": ARCH, "seed": 0})
    key = Artifacts(ArtifactCache(root)).model_spec(spec, dm)
    return key, spec_key(key)


def test_a_default_adversarial_specs_cache_key_is_unchanged(tmp_path):
    key, digest = _spec_key(tmp_path)
    assert "clean_weight" not in key["method"] and "adv_weight" not in key["method"]
    assert digest == DEFAULT_KEY
    weighted, other = _spec_key(tmp_path, "source.method.clean_weight=0.5", "source.method.adv_weight=0.5")
    assert (weighted["method"]["clean_weight"], weighted["method"]["adv_weight"]) == (0.5, 0.5) and other != digest


# -- softmax regression ------------------------------------------------------------------------------------
def test_softmax_regression_is_one_linear_map_of_the_normalised_pixels():
    from hydra.utils import instantiate

    mean, std = torch.tensor([0.13]), torch.tensor([0.31])
    model = instantiate(OmegaConf.load(REPO / "conf" / "arch" / "softmax.yaml"))(input_shape=(1, 28, 28), num_classes=10, mean=mean, std=std)
    assert isinstance(model, SoftmaxRegression)
    assert [tuple(p.shape) for p in model.parameters()] == [(10, 784), (10,)]
    x = torch.rand(5, 1, 28, 28)
    want = ((x - 0.13) / 0.31).flatten(1) @ model.linear.weight.T + model.linear.bias
    assert torch.allclose(model(x), want, atol=1e-5)
    assert torch.allclose(model.representation(x), ((x - 0.13) / 0.31).flatten(1), atol=1e-6)


# -- the adversarial_error analysis ------------------------------------------------------------------------
def _points(x, y, batch_size=5):
    return Points(x=x, y=y, index=torch.arange(len(y)), predictions={}, summary={"n": len(y)}, datamodule=None,
                  device=torch.device("cpu"), batch_size=batch_size, title="t", where=f"all test points (n={len(y)})")


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_adversarial_error_matches_the_hand_computed_fgsm_points(classes):
    model, (x, y) = _linear(classes=classes), _data(n=40, classes=classes)
    analysis = AdversarialError(eps=0.2, bounds=[0.0, 1.0])
    res = analysis.run(SimpleNamespace(name="lin", member="seed=0", model=model), _points(x, y))
    w, b = model.linear.weight.detach(), model.linear.bias.detach()
    conf, pred = torch.softmax(x @ w.T + b, 1).max(1)
    conf_adv, pred_adv = torch.softmax(_fgsm_by_hand(model, x, y, 0.2) @ w.T + b, 1).max(1)
    wrong = pred_adv != y
    assert res["clean_error"] == pytest.approx(float((pred != y).float().mean()))
    assert res["clean_confidence"] == pytest.approx(float(conf.mean()), rel=1e-5)
    assert res["adv_error"] == pytest.approx(float(wrong.float().mean()))
    assert res["adv_confidence"] == pytest.approx(float(conf_adv.mean()), rel=1e-5)
    assert res["adv_wrong_confidence"] == pytest.approx(float(conf_adv[wrong].mean()), rel=1e-5)
    assert res["adv_error"] >= res["clean_error"]  # CE is convex in x: FGSM never lowers a point's loss


def test_adversarial_error_summary_csv_and_headline(tmp_path):
    x, y = _data(n=12)
    analysis = AdversarialError(eps=0.0, bounds=[0.0, 1.0])
    points = _points(x, y)
    results = [{"name": "lin", "member": f"seed={s}", analysis.key: analysis.run(SimpleNamespace(name="lin", member=f"seed={s}",
                                                                                               model=_linear(seed=s)), points)}
               for s in (0, 1)]
    summary = analysis.summarise(results, points)[analysis.key]
    assert summary["eps"] == 0.0 and summary["n"] == 12
    # ε = 0: the FGSM points are the clean ones
    assert summary["adv_error"]["values"] == summary["clean_error"]["values"]
    assert summary["adv_error"]["mean"] == pytest.approx(sum(summary["adv_error"]["values"]) / 2)
    analysis.write(tmp_path, {"lin": results}, {"lin": {analysis.key: summary}}, points, [])
    lines = (tmp_path / "adversarial_error.csv").read_text().splitlines()
    assert lines[0] == "model,member,eps,clean_error,clean_confidence,adv_error,adv_confidence,adv_wrong_confidence" and len(lines) == 3
    assert analysis.headline({analysis.key: summary})[0].startswith("FGSM@0 error ")


def test_adversarial_error_with_no_fooled_point_has_no_wrong_confidence():
    model = _linear(classes=2)
    with torch.no_grad():  # class 0 always wins by far
        model.linear.bias.copy_(torch.tensor([100.0, 0.0]))
    x, _ = _data(n=8, classes=2)
    res = AdversarialError(eps=0.25, bounds=[0.0, 1.0]).run(SimpleNamespace(model=model), _points(x, torch.zeros(8, dtype=torch.long)))
    assert res["adv_error"] == 0.0 and math.isnan(res["adv_wrong_confidence"]) and res["adv_confidence"] == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, message", [({"eps": -1}, "adversarial_error.eps: must be a finite number >= 0, got -1"),
                                             ({"eps": 0.1, "loss": "hinge"}, "adversarial_error.loss: unknown value 'hinge'")])
def test_adversarial_error_settings_are_checked_by_its_constructor(kwargs, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        AdversarialError(**kwargs)


# -- the preset ----------------------------------------------------------------------------------------------
def test_the_preset_is_the_papers_table():
    from test_analysis_protocol import _eval_cfg

    cfg = _eval_cfg("experiment=goodfellow_mnist")
    models = cfg.models
    assert list(models) == ["softmax_standard", "softmax_fgsm_at", "mlp_standard", "mlp_fgsm_at"]
    for name, m in models.items():
        assert m.arch._target_.endswith("SoftmaxRegression" if name.startswith("softmax") else "MLP")
        if name.endswith("fgsm_at"):
            assert m.method._target_ == "advlab.methods.AdversarialTraining" and m.attack._target_ == "advlab.attacks.FGSM"
            assert (m.attack.eps, m.method.clean_weight, m.method.adv_weight, m.method.adv_ratio) == (0.25, 0.5, 0.5, 1.0)
        else:
            assert m.method._target_ == "advlab.methods.StandardTraining" and "attack" not in m
    assert models.mlp_standard.arch == models.mlp_fgsm_at.arch
    assert list(cfg.analyses) == ["adversarial_error", "linearity"] and cfg.adversarial_error.eps == 0.25 and cfg.points == "all"
    assert cfg.dataset._target_ == "advlab.data.MNISTDataModule" and not cfg.dataset.official_split
    text = (REPO / "conf" / "experiment" / "goodfellow_mnist.yaml").read_text()
    assert "docs/results.md#goodfellow-mnist" in text and "{ #goodfellow-mnist }" in (REPO / "docs" / "results.md").read_text()


DIGITS = ["experiment=goodfellow_mnist", "dataset=digits", "~dataset.official_split", "model_defaults.max_epochs=2",
          "models.mlp_standard.arch.width=32", "models.mlp_fgsm_at.arch.width=32", "adversarial_error.eps=0.1", "linearity.n=8",
          "logger=csv"]


def test_the_preset_runs_end_to_end_on_digits(tmp_path):
    """The preset's models and analyses on digits for 2 epochs: metrics.json holds the table per model."""
    run = run_advlab(tmp_path, *DIGITS, module="advlab.apps.evaluate", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    models = run.metrics["models"]
    assert set(models) == {"softmax_standard", "softmax_fgsm_at", "mlp_standard", "mlp_fgsm_at"}
    for s in models.values():
        table = s["adversarial_error"]
        assert table["eps"] == 0.1 and table["n"] == run.metrics["points"]["n"] == 360
        assert table["clean_error"]["mean"] == pytest.approx(1 - s["clean_acc"]["mean"], abs=1e-6)  # points=all: the test set
        assert table["adv_error"]["mean"] >= table["clean_error"]["mean"]
        assert 0.1 <= table["adv_confidence"]["mean"] <= 1.0 and "r2_mean" in s["linearity"]
    assert (run.run_dir / "adversarial_error.csv").is_file() and (run.run_dir / "plots" / "linearity_mlp_fgsm_at.png").is_file()


@pytest.mark.slow
def test_the_preset_on_the_shared_mnist_files(tmp_path, shared_dir):
    """The measured pattern (docs/results.md#goodfellow-mnist): FGSM error far above the clean error, cut by FGSM-AT."""
    from advlab.data.mnist_t10k import install_shared_mnist

    install_shared_mnist(shared_dir, tmp_path / "data")
    run = run_advlab(tmp_path, "experiment=goodfellow_mnist", "logger=csv", module="advlab.apps.evaluate", timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    table = {name: {k: v["mean"] for k, v in s["adversarial_error"].items() if isinstance(v, dict)}
             for name, s in run.metrics["models"].items()}
    for arch in ("softmax", "mlp"):
        std, at = table[f"{arch}_standard"], table[f"{arch}_fgsm_at"]
        assert std["adv_error"] > 0.9 and std["adv_error"] > std["clean_error"] + 0.5 and std["adv_wrong_confidence"] > 0.8
        assert at["adv_error"] < std["adv_error"]
    assert table["mlp_standard"]["clean_error"] < 0.06 and table["mlp_fgsm_at"]["adv_error"] < 0.5 * table["mlp_standard"]["adv_error"]
