"""`hparams_search=` presets: Hydra's Optuna sweeper searching a run's keys for the best value of the
metric a preset names (`optimized_metric`), the value each trial returns (advlab.runtime.objective)."""
from __future__ import annotations

import json
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from advlab.errors import ConfigError
from advlab.runtime.objective import objective
from advlab.runtime.resolvers import CONF_DIR, group_options
from conftest import run_advlab

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the `search` extra (hydra-optuna-sweeper) is not installed")

SEARCHED = {"digits_det_eps_steps": {"eps.value", "attack.steps"}, "lr_weight_decay": {"optimizer.lr", "optimizer.weight_decay"}}
# the preset's run made small: a few epochs on 300 training images
TINY = ["trainer.max_epochs=2", "source.max_epochs=3", "dataset.max_train=300", "logger=csv", "callbacks=none"]


def test_objective_is_a_metric_or_a_metric_per_second_of_the_runs_own_work():
    metrics = {"test/acc": 0.8, "val/acc": 0.7, "time/total_s": 12.0, "time/source_s": 4.0}
    assert objective(metrics, "val/acc") == 0.7
    assert objective(metrics, "test/acc_per_s") == pytest.approx(0.8 / 8.0)  # the source model's 4 s are not the run's own
    assert objective({"test/acc": 0.8, "time/total_s": 12.0}, "test/acc_per_s") == pytest.approx(0.8 / 12.0)  # no source model
    assert objective(metrics, None) is None and objective(metrics, "") is None


def test_an_unknown_objective_names_the_runs_metrics():
    with pytest.raises(ConfigError, match=r"^optimized_metric: 'test/accuracy' is not a metric of this run; allowed: test/acc, "):
        objective({"test/acc": 0.8, "time/total_s": 1.0}, "test/accuracy")


def _compose(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("preset", sorted(SEARCHED))
def test_search_presets_choose_the_optuna_sweeper_a_direction_a_seeded_sampler_and_keys_the_run_has(preset):
    assert preset in group_options("hparams_search")
    cfg = _compose(f"hparams_search={preset}")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.n_trials >= 8 and sweeper.sampler.seed is not None and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert set(sweeper.params) == SEARCHED[preset]
    for key in sweeper.params:  # each searched key is one the composed run has
        assert OmegaConf.select(cfg, key, default=None) is not None, key
    assert cfg.optimized_metric in ("test/acc_per_s", "val/acc")
    if preset == "digits_det_eps_steps":
        assert cfg.derived.target_rule == "det" and cfg.hydra.runtime.choices.experiment == "digits_det"


@pytest.mark.parametrize("preset", sorted(SEARCHED))
def test_search_presets_pass_the_preflight(preset):
    from advlab.preflight.jobs import precheck

    precheck([f"hparams_search={preset}"], "train")
    with pytest.raises(ConfigError, match="^hparams_search: unknown option 'nope'; allowed: digits_det_eps_steps, lr_weight_decay"):
        precheck(["hparams_search=nope"], "train")


def _trials(sweep_dir) -> list[dict]:
    """Each job of the sweep: its searched values (from .hydra/overrides.yaml) and its metrics."""
    trials = []
    for job in sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        trials.append({"params": overrides, "metrics": json.loads((job / "metrics.json").read_text())})
    return trials


def _check_search(root, sweep_dir, n_trials: int, run) -> dict:
    """The search ran every trial, each trial's value is its accuracy per second of its own work, and
    optimization_results.yaml names the trial with the highest value."""
    assert run.returncode == 0, run.stderr[-3000:]
    trials = _trials(sweep_dir)
    assert len(trials) == n_trials
    from advlab.runtime.objective import loggable

    for job, t in zip(sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)), trials):
        m = t["metrics"]
        # what the trial wrote is listed for its app (advlab.runtime.objective.METRICS, what the pre-flight checks against)
        listed = set(loggable(OmegaConf.load(job / ".hydra" / "config.yaml"), "train"))
        assert {k for k, v in m.items() if isinstance(v, (int, float))} - {"test/acc_per_s"} <= listed
        assert m["test/acc_per_s"] == pytest.approx(m["test/acc"] / (m["time/total_s"] - m["time/source_s"]))
        assert 0.5 <= float(t["params"]["eps.value"]) <= 3.0 and int(t["params"]["attack.steps"]) in (5, 10, 20, 30, 50)
    # the first trial trains the source model, the others take it from the cache (not counted either way)
    assert trials[0]["metrics"]["time/source_s"] > max(t["metrics"]["time/source_s"] for t in trials[1:])
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))
    best = max(trials, key=lambda t: t["metrics"]["test/acc_per_s"])
    assert results["name"] == "optuna" and results["best_value"] == pytest.approx(best["metrics"]["test/acc_per_s"])
    assert results["best_params"] == {"eps.value": pytest.approx(float(best["params"]["eps.value"])),
                                      "attack.steps": int(best["params"]["attack.steps"])}
    return results


def test_digits_det_search_of_two_trials_reports_its_best_trial(advlab_root):
    sweep_dir = advlab_root / "search"
    run = run_advlab(advlab_root, "hparams_search=digits_det_eps_steps", "hydra.sweeper.n_trials=2", *TINY, f"hydra.sweep.dir={sweep_dir}")
    _check_search(advlab_root, sweep_dir, 2, run)


@pytest.mark.slow
def test_digits_det_search_of_eight_trials_reports_its_best_trial(advlab_root):
    """The preset as it is (experiment=digits_det: 30 epochs, the whole digits training set), 8 trials."""
    sweep_dir = advlab_root / "search"
    started = time.time()
    run = run_advlab(advlab_root, "hparams_search=digits_det_eps_steps", "hydra.sweeper.n_trials=8", "logger=csv",
                     f"hydra.sweep.dir={sweep_dir}", timeout=1800)
    results = _check_search(advlab_root, sweep_dir, 8, run)
    print(f"8-trial search: {time.time() - started:.0f} s; best {results['best_params']} -> {results['best_value']:.4f} test/acc per s")


def test_an_objective_the_app_never_logs_is_refused_before_any_trial(advlab_root):
    """A search whose `optimized_metric` no run of the app logs stops before its first trial: exit 2, one
    line naming the key, the value and the allowed metrics (advlab.runtime.objective.METRICS), no sweep dir."""
    sweep_dir = advlab_root / "search"
    run = run_advlab(advlab_root, "hparams_search=lr_weight_decay", "optimized_metric=val/accuracy", *TINY, f"hydra.sweep.dir={sweep_dir}")
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("advlab-train: error: optimized_metric: unknown value 'val/accuracy': advlab-train does not log it")
    assert "allowed: train/acc, val/acc, val/acc_best, test/acc, time/total_s," in lines[0] and "perturb/success_rate" in lines[0]
    assert not sweep_dir.exists() and not (advlab_root / "run").exists()


def test_the_objectives_allowed_follow_what_the_run_chooses():
    from advlab.preflight.jobs import precheck
    from advlab.runtime.objective import loggable

    precheck(["hparams_search=lr_weight_decay", "optimized_metric=perturb/success_rate_per_s"], "train")  # a valid one composes
    precheck(["hparams_search=lr_weight_decay", "callbacks=mi", "optimized_metric=mi/clean/kde_upper/fc1/I_XT"], "train")
    precheck(["optimized_metric=transfer/fool_rate"], "transfer")
    with pytest.raises(ConfigError, match=r"^optimized_metric: unknown value 'test/agreement': advlab-train does not log it with this config; "
                                          r"allowed: train/acc, val/acc, val/acc_best, test/acc, time/total_s, or any of them followed by _per_s$"):
        precheck(["hparams_search=lr_weight_decay", "method=standard", "optimized_metric=test/agreement"], "train")
    with pytest.raises(ConfigError, match=r"^optimized_metric: unknown value 'test/acc': advlab-transfer does not log it"):
        precheck(["optimized_metric=test/acc"], "transfer")
    assert "test/adv_acc" in loggable(_compose("method=standard", "attack@eval_attack=pgd_linf"), "train")
    assert "guard/collapsed" in loggable(_compose("method=fast_adversarial", "callbacks=overfitting_guard"), "train")

