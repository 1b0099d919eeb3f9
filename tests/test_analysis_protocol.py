"""advlab-eval's analyses as objects: found through conf/analysis/<name>.yaml, built by Hydra, and
run / summarised through their protocol on a model whose answers are known."""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch import nn

from advlab.analysis.protocol import Points, analysis_names
from advlab.runtime.resolvers import CONF_DIR
from advlab.errors import ConfigError
from advlab.apps.evaluate import _build


def _eval_cfg(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def test_the_analyses_are_the_yaml_files_and_each_builds_its_class():
    cfg = _eval_cfg()
    names = analysis_names(cfg, CONF_DIR)
    assert names == ["robustness", "deepfool", "off_support", "adversarial_error", "linearity", "masking"]
    assert sorted(names) == sorted(p.stem for p in (CONF_DIR / "analysis").glob("*.yaml"))
    built = {name: _build(cfg, name, [0.0, 1.0]) for name in names}
    assert {name: a.key for name, a in built.items()} == {name: name for name in names}
    robustness = built["robustness"]
    assert list(robustness.attacks) == ["fgsm_linf", "pgd_linf", "fgsm_l2", "pgd_l2"]
    assert robustness.attacks["pgd_linf"].steps == 20 and robustness.attacks["pgd_linf"].bounds == (0.0, 1.0)
    assert robustness.losses == ["ce", "margin"] and robustness.robustbench_eps == 0.1
    assert list(built["deepfool"].attacks) == ["l2", "linf"] and built["deepfool"].attacks["l2"].steps == 50
    assert built["masking"].seed == cfg.seed and built["off_support"].n == 1000


def test_a_setting_an_analysis_does_not_take_is_one_line_naming_it():
    cfg = _eval_cfg("+deepfool.stepz=3")
    with pytest.raises(ConfigError) as err:
        _build(cfg, "deepfool", None)
    assert str(err.value).startswith("deepfool: ") and "'stepz'" in str(err.value) and "\n" not in str(err.value)


class _Member:
    def __init__(self, name, member, model):
        self.name, self.member, self.model = name, member, model


def test_linearity_and_off_support_through_the_protocol_on_an_affine_model():
    """An affine model's logits along any direction are straight lines: R² = 1 for every member, so
    the summary is mean 1, SEM 0; its softmax on the test points has the statistics computed here."""
    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 4, 4), torch.randint(0, 3, (12,))
    members = [_Member("affine", f"seed={s}", nn.Sequential(nn.Flatten(), nn.Linear(16, 3))) for s in (0, 1)]
    points = Points(x=x, y=y, index=torch.arange(12), predictions={}, summary={"n": 12}, datamodule=None,
                    device=torch.device("cpu"), batch_size=5, title="t", where="all test points (n=12)")
    cfg = _eval_cfg("linearity.n=8", "linearity.points=5", "off_support.kinds=[uniform]", "off_support.n=7")
    linearity, off_support = _build(cfg, "linearity", [0.0, 1.0]), _build(cfg, "off_support", [0.0, 1.0])

    class _Data:  # what prepare reads of a datamodule
        x_train, bounds, input_shape = torch.rand(20, 1, 4, 4), (0.0, 1.0), (1, 4, 4)

    off_support.prepare(_Data())
    assert list(off_support.inputs) == ["uniform"] and off_support.inputs["uniform"].shape == (7, 1, 4, 4)
    results = [{"member": m.member, "linearity": linearity.run(m, points), "off_support": off_support.run(m, points)} for m in members]
    s = linearity.summarise(results, points)["linearity"]
    assert s["r2_mean"]["mean"] == pytest.approx(1.0, abs=1e-5) and s["r2_min"]["sem"] == pytest.approx(0.0, abs=1e-5)
    assert s["zero_direction"]["values"] == [0.0, 0.0]
    assert linearity.headline({"linearity": s}) == ["linearity R² 1.000"]
    with torch.no_grad():
        probs = [m.model(x).softmax(1) for m in members]
    expected = [float(p.max(1).values.mean()) for p in probs]
    o = off_support.summarise(results, points)["off_support"]
    assert set(o) == {"test", "uniform"}
    assert o["test"]["max_softmax"]["values"] == pytest.approx(expected, abs=1e-6)
    assert o["test"]["max_softmax"]["mean"] == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert o["test"]["max_softmax"]["sem"] == pytest.approx(abs(expected[0] - expected[1]) / 2, abs=1e-6)  # n = 2
