"""The layout's rules (issue 24): utils/ holds leaf helpers only, the cache-key defaults are the trainer
YAML's, a method's kind is a class attribute, one number checker, errors re-rooted by the pre-flight."""
from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from advlab.errors import ConfigError, check_number
from conftest import REPO
from test_imports import import_graph


def test_utils_imports_nothing_above_it():
    graph = import_graph(REPO / "src", "advlab")
    upward = {m: sorted(t for t in targets if not t.startswith("advlab.utils") and t != "advlab.errors")
              for m, targets in graph.items() if m.startswith("advlab.utils")}
    assert {m: t for m, t in upward.items() if t} == {}
    # data/ no longer reaches the cache or the analyses (derived datasets are their own package)
    data = {t for m, targets in graph.items() if m.startswith("advlab.data") for t in targets}
    assert not any(t.startswith(("advlab.artifacts", "advlab.analysis", "advlab.derived")) for t in data)


def test_cache_key_defaults_are_read_from_the_trainer_yaml():
    from advlab.artifacts.keys import default_training, training_settings
    from advlab.runtime.resolvers import CONF_DIR

    yaml = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    assert default_training() == {"precision": yaml.precision, "deterministic": yaml.deterministic}
    assert training_settings({"precision": yaml.precision, "deterministic": yaml.deterministic, "accelerator": "gpu"}) == {}
    assert training_settings({"precision": "bf16-mixed", "gradient_clip_val": 1.0}) == {"gradient_clip_val": 1.0, "precision": "bf16-mixed"}


def test_a_methods_kind_is_a_class_attribute():
    from advlab.methods import AdversarialTraining, SparsityTraining, StandardTraining
    from advlab.methods.base import is_adversarial

    assert (AdversarialTraining.adversarial, StandardTraining.adversarial, SparsityTraining.adversarial) == (True, False, False)
    assert is_adversarial({"_target_": "advlab.methods.AdversarialTraining"}) and not is_adversarial({"_target_": "advlab.methods.StandardTraining"})

    class Renamed(AdversarialTraining):  # the kind follows the class, not its name
        pass

    assert is_adversarial(Renamed)


@pytest.mark.parametrize("value, kwargs, result", [(3, {"minimum": 1, "integer": True}, 3), (64.0, {"minimum": 1, "integer": True}, 64),
                                                   (0.5, {"minimum": 0, "strict": True}, 0.5), (None, {"allow_none": True}, None)])
def test_the_number_checker_accepts(value, kwargs, result):
    out = check_number("k", value, **kwargs)
    assert out == result and type(out) is type(result)


@pytest.mark.parametrize("value, kwargs, message", [
    (0, {"minimum": 1, "integer": True}, "k: must be an integer >= 1, got 0"),
    (2.5, {"minimum": 1, "integer": True}, "k: must be an integer >= 1, got 2.5"),
    (True, {"minimum": 0}, "k: must be a finite number >= 0, got True"),
    (math.nan, {"minimum": 0}, "k: must be a finite number >= 0, got nan"),
    (0, {"minimum": 0, "strict": True, "allow_none": True}, "k: must be null or a finite number > 0, got 0"),
    ("abc", {}, "k: must be a finite number, got 'abc'")])
def test_the_number_checker_refuses_naming_the_key(value, kwargs, message):
    with pytest.raises(ConfigError) as err:
        check_number("k", value, **kwargs)
    assert str(err.value) == message and err.value.key == "k"


def test_an_error_is_re_rooted_at_its_node_without_parsing_its_text():
    err = ConfigError("attack.steps", "must be an integer >= 1, got 0")
    assert str(err.under("eval_attack", "attack")) == "eval_attack.steps: must be an integer >= 1, got 0"
    assert str(err.under("source.attack", "attack")) == "source.attack.steps: must be an integer >= 1, got 0"
    assert str(ConfigError("steps", "bad").under("robustness.attacks.pgd")) == "robustness.attacks.pgd.steps: bad"
    assert str(ConfigError("other.key", "bad").under("eval_attack", "attack")) == "other.key: bad"


def test_an_interpolated_value_is_named_by_the_key_the_user_sets():
    from advlab.preflight.objects import at_origin

    node = OmegaConf.create({"eps": "${eps.value}", "steps": 0})
    assert at_origin(ConfigError("attack.eps", "bad"), node, "attack").key == "eps.value"
    assert at_origin(ConfigError("attack.steps", "bad"), node, "attack").key == "attack.steps"
    # a constructor names its bare parameter; the pre-flight puts it under the node it was set at
    assert str(ConfigError("steps", "bad").under("eval_attack", "attack")) == "eval_attack.steps: bad"
    assert str(ConfigError("steps", "bad").under("source.attack", "attack")) == "source.attack.steps: bad"


# the node path a constructor of each package would hard-code if it named its own node
OWN_NODES = {"attacks": ("attack.", "deepfool."), "methods": ("method.",), "derived": ("derived.",), "models": ("arch.",),
             "data": ("dataset.",), "callbacks": ("callbacks.",),
             "analysis": ("deepfool.", "linearity.", "masking.", "off_support.", "robustness.")}


def test_constructors_name_their_bare_parameters():
    """No `__init__` / `__post_init__` raises (or checks a number) under a node path of its own: the
    pre-flight re-roots a bare parameter at the node the user set (ConfigError.under)."""
    import ast

    found = []
    for package, prefixes in OWN_NODES.items():
        for path in sorted((REPO / "src" / "advlab" / package).glob("*.py")):
            for fn in ast.walk(ast.parse(path.read_text())):
                if not isinstance(fn, ast.FunctionDef) or fn.name not in ("__init__", "__post_init__"):
                    continue
                for call in ast.walk(fn):
                    if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], (ast.Constant, ast.JoinedStr)):
                        first = call.args[0].value if isinstance(call.args[0], ast.Constant) else getattr(call.args[0].values[0], "value", "")
                        if isinstance(first, str) and first.startswith(prefixes):
                            found.append(f"{path.name}:{call.lineno} {first}")
    assert found == ["torchvision_data.py:197 dataset.data_dir"]  # a CIFAR reader's labels, read at run time (not a config node's constructor)
