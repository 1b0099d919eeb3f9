"""Kumano et al. as the authors ran it: the identity loss (NeurIPS'24), the plateau schedule, and the
closed forms the two-layer network's gradients and perturbations must match.

The authors' code read: s-kumano/perturbation-learning (train.py `identity`, `gen_perturbations`;
utils/classifier.py `TwoLayerNet`)."""
from __future__ import annotations

import functools

import pytest
import torch

from advlab.attacks.pgd import OneStepL2
from advlab.errors import ConfigError
from advlab.methods import StandardTraining
from advlab.models import WideMLP


def _two_layer(d=6, m=32, seed=0):
    torch.manual_seed(seed)
    return WideMLP((d,), 2, width=m, kumano=True, init_seed=seed, normalize="none")


def _closed_form(model, x):
    """f(x) = Σ_k a_k relu(w_k·x + b_k), its pre-activations and its input gradient Σ_k a_k 1[w_k·x + b_k > 0] w_k."""
    w, b, a = model.hidden.weight.detach(), model.hidden.bias.detach(), model.readout_weight.detach()[:, 0]
    pre = x @ w.T + b
    f = torch.relu(pre) @ a
    grad_x = ((pre > 0).to(x.dtype) * a) @ w
    return f, pre, grad_x


def _module(model, **kw):
    return StandardTraining(model, optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9), **kw)


def test_identity_loss_is_minus_y_f_and_its_gradient_the_closed_form():
    model = _two_layer()
    x, y = torch.randn(20, 6, dtype=torch.float64), torch.randint(0, 2, (20,))
    model = model.double()
    module = _module(model, loss="identity")
    f, pre, _ = _closed_form(model, x)
    s = 2.0 * y.double() - 1.0  # class index 1 → +1, 0 → −1
    loss = module.loss(module.model(x), y)
    assert float(loss.detach()) == pytest.approx(float((-s * f).mean()), rel=1e-12)
    loss.backward()
    # ∂/∂w_k mean_i(−s_i f(x_i)) = −(1/N) Σ_i s_i a_k 1[w_k·x_i + b_k > 0] x_i; ∂/∂b_k the same without x_i
    a = model.readout_weight.detach()[:, 0]
    active = (pre > 0).double()
    grad_w = -(active * s[:, None] * a).T @ x / len(x)
    grad_b = -(active * s[:, None] * a).sum(0) / len(x)
    assert torch.allclose(model.hidden.weight.grad, grad_w, atol=1e-12)
    assert torch.allclose(model.hidden.bias.grad, grad_b, atol=1e-12)
    assert model.readout_weight.requires_grad is False  # the readout stays frozen (a buffer)


def test_identity_loss_gradient_in_f_ignores_f_unlike_the_logistic_loss():
    """dL/df = −y/N whatever f (identity); the logistic loss's −y·σ(−y f)/N vanishes on confident points."""
    f = torch.tensor([-30.0, -1.0, 0.0, 2.0, 40.0], requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1])
    logits = torch.stack([-f / 2, f / 2], dim=1)
    module = _module(_two_layer(), loss="identity")
    (g_identity,) = torch.autograd.grad(module.loss(logits, y), f)
    s = 2.0 * y.float() - 1.0
    assert torch.allclose(g_identity, -s / 5)
    logits = torch.stack([-f / 2, f / 2], dim=1)
    (g_ce,) = torch.autograd.grad(_module(_two_layer()).loss(logits, y), f)
    assert torch.allclose(g_ce, -s * torch.sigmoid(-s * f) / 5, atol=1e-7)


def test_identity_loss_is_checked_where_it_is_set():
    with pytest.raises(ConfigError, match="^loss: identity .* needs a binary task, the model has 10 classes"):
        _module(WideMLP((6,), 10, width=8, kumano=True), loss="identity")
    with pytest.raises(ConfigError, match="^label_smoothing: smooths cross-entropy only"):
        _module(_two_layer(), loss="identity", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="^loss: unknown loss 'hinge'; allowed: ce, identity"):
        _module(_two_layer(), loss="hinge")


def test_one_step_perturbation_is_the_authors_closed_form():
    """gen_perturbations: δ = −ε·normalize(∇x Σ identity(f(x), t)) = ε·t·∇f/‖∇f‖, for the margin (identity) loss."""
    model = _two_layer().double()
    x = torch.randn(16, 6, dtype=torch.float64)
    t = torch.randint(0, 2, (16,))
    attack = OneStepL2(eps=0.14, targeted=True, bounds=None, loss="margin")
    delta = attack(model, x, t) - x
    _, _, grad_f = _closed_form(model, x)
    s = (2.0 * t.double() - 1.0)[:, None]
    expected = 0.14 * s * grad_f / grad_f.norm(dim=1, keepdim=True)
    assert torch.allclose(delta, expected, atol=1e-12)


def test_plateau_schedule_steps_on_the_epoch_training_loss():
    """conf/scheduler/plateau.yaml: torch ReduceLROnPlateau with its defaults, monitored on train/loss_epoch."""
    from omegaconf import OmegaConf

    from advlab.runtime.resolvers import CONF_DIR

    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "scheduler" / "plateau.yaml"))
    module = StandardTraining(_two_layer(), optimizer=functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9), scheduler=cfg)
    out = module.configure_optimizers()
    sched = out["lr_scheduler"]
    assert sched["monitor"] == "train/loss_epoch" and sched["interval"] == "epoch"
    plateau = sched["scheduler"]
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    default = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0))
    for key in ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown"):
        assert getattr(plateau, key) == getattr(default, key), key
    # 1 improving epoch, then 11 flat ones: the lr falls ×0.1 on the 11th flat epoch (patience 10), once
    plateau.step(1.0)
    lrs = []
    for _ in range(11):
        plateau.step(1.0)
        lrs.append(out["optimizer"].param_groups[0]["lr"])
    assert lrs[:10] == [0.01] * 10 and lrs[10] == pytest.approx(0.001)


# -- the preset, the learning-rate grid and its report ------------------------------------------------

def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.runtime.resolvers import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_two_layer_preset_is_the_authors_procedure():
    cfg = _compose(["experiment=kumano_two_layer"])
    assert cfg.method.loss == "identity" and cfg.source.method.loss == "identity"
    assert cfg.dataset.center is False and cfg.dataset.center_constant == 0.1307 and list(cfg.dataset.classes) == [2, 1]
    assert cfg.attack.loss == "margin" and cfg.eps.value == 0.14 and cfg.derived.train_on == "delta"
    for node in (cfg, cfg.source):
        assert node.scheduler._target_.endswith("ReduceLROnPlateau") and node.scheduler.monitor == "train/loss_epoch"
        assert node.optimizer.lr == 0.01 and node.optimizer.momentum == 0.9 and node.optimizer.weight_decay == 0.0
    assert cfg.derived.measure_train_acc is True


def test_fmnist_two_layer_preset_is_the_authors_fmnist_a():
    """Their select_data_and_labels for FMNIST: class 0 is +1, class 9 is −1, minus FMNIST's mean 0.2860;
    everything else as the MNIST preset."""
    cfg, mnist = _compose(["experiment=kumano_two_layer_fmnist"]), _compose(["experiment=kumano_two_layer"])
    assert cfg.dataset._target_.endswith("FashionMNISTDataModule") and cfg.dataset.official_split is True
    assert list(cfg.dataset.classes) == [9, 0] and cfg.dataset.center_constant == 0.2860 and cfg.dataset.center is False
    for key in ("method", "source", "attack", "eps", "arch", "derived", "optimizer", "scheduler", "trainer"):
        assert cfg[key] == mnist[key], key


@pytest.mark.parametrize("sweep", ["kumano_two_layer_lr_grid", "kumano_two_layer_fmnist_lr_grid"])
def test_lr_grid_sweep_is_the_four_pairs_and_passes_the_preflight(sweep):
    from advlab.preflight.jobs import precheck

    cfg = _compose([f"sweep={sweep}"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.method.loss == "identity"
    assert dict(cfg.hydra.sweeper.params) == {"source.optimizer.lr": "0.01,0.001", "optimizer.lr": "0.01,0.001"}
    assert list(cfg.report_best_of) == ["source.optimizer.lr", "optimizer.lr"]
    assert list(cfg.dataset.classes) == ([9, 0] if "fmnist" in sweep else [2, 1])
    precheck([f"sweep={sweep}"], "train")


def _grid_sweep(root, values):
    """A hand-made multirun of the lr grid × 2 seeds; values[(lr_f, lr_g)] = (natural_train_acc, agreement) per seed."""
    import json

    import yaml

    sweep = root / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"overrides": {"task": ["seed=0,1"]}, "sweeper": {"params": {"source.optimizer.lr": "0.01,0.001",
                                                                                  "optimizer.lr": "0.01,0.001"}}},
        "task_name": "train", "report_best_of": ["source.optimizer.lr", "optimizer.lr"]}, sort_keys=False))  # Hydra's order
    num = 0
    for lr_f in ("0.01", "0.001"):
        for lr_g in ("0.01", "0.001"):
            for seed in (0, 1):
                job = sweep / str(num)
                (job / ".hydra").mkdir(parents=True)
                (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
                    [f"source.optimizer.lr={lr_f}", f"optimizer.lr={lr_g}", f"seed={seed}"]))
                acc, agree = values[lr_f, lr_g][seed]
                (job / "metrics.json").write_text(json.dumps({"test/natural_train_acc": acc, "test/agreement": agree}))
                num += 1
    return sweep


def test_best_of_grid_takes_each_metrics_best_pair_separately(tmp_path):
    import csv

    from advlab.report.sweep_report import write_report

    values = {("0.01", "0.01"): [(0.90, 0.80), (0.92, 0.82)], ("0.01", "0.001"): [(0.95, 0.70), (0.97, 0.72)],
              ("0.001", "0.01"): [(0.60, 0.99), (0.62, 0.97)], ("0.001", "0.001"): [(0.50, 0.50), (0.52, 0.52)]}
    report = write_report(_grid_sweep(tmp_path, values), wandb_mode="off")
    rows = {r["metric"]: r for r in csv.DictReader(report.files["best_of"].open())}
    # accuracy: the pair (0.01, 0.001), mean 0.96; agreement: another pair, (0.001, 0.01), mean 0.98
    assert float(rows["test/natural_train_acc"]["best"]) == pytest.approx(0.96)
    assert rows["test/natural_train_acc"]["at"] == "source.optimizer.lr=0.01, optimizer.lr=0.001"
    assert float(rows["test/agreement"]["best"]) == pytest.approx(0.98)
    assert rows["test/agreement"]["at"] == "source.optimizer.lr=0.001, optimizer.lr=0.01"
    assert rows["test/agreement"]["seeds"] == "2" and rows["test/agreement"]["grid points"] == "4"
    assert "## Best of the grid over `source.optimizer.lr`, `optimizer.lr`" in (report.out_dir / "report.md").read_text()
