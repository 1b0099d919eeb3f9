"""TRADES, MART and fast adversarial training (issue 23): each objective against a hand computation on a
tiny linear model with fixed weights, fast-AT's FGSM step against Wong et al.'s rule, the ε warm-up per
epoch in real fits, the YAML / spec entries, and bad input as one line from a real advlab-train."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn

from advlab.attacks import PGD
from advlab.attacks.base import per_sample_loss
from advlab.data import DigitsDataModule
from advlab.errors import ConfigError
from advlab.methods import MART, TRADES, AdversarialTraining, FastAdversarialTraining
from advlab.methods.adversarial import warmup_eps
from advlab.methods.fast_adversarial import grad_align_penalty
from advlab.methods.mart import mart_weighted_kl
from advlab.models import MLP
from conftest import attack_from_conf, run_advlab

OPT = OmegaConf.create({"_target_": "torch.optim.SGD", "lr": 0.05, "momentum": 0.9})
# a 2-feature, 3-class linear model with fixed weights, and two points in [0, 1]
W = [[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]]
B = [0.1, -0.2, 0.3]
X = [[0.2, 0.7], [0.9, 0.4]]
Y = [1, 0]


def _linear() -> nn.Linear:
    model = nn.Linear(2, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(W, dtype=torch.float64))
        model.bias.copy_(torch.tensor(B, dtype=torch.float64))
    model.num_classes, model.input_shape = 3, (2,)
    return model


# -- the hand computations: plain Python floats ------------------------------------------------------------
def _logits(x):
    return [sum(w * xi for w, xi in zip(row, x)) + b for row, b in zip(W, B)]


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q, floor=0.0):
    """Σ_c p_c (log p_c − log(q_c + floor))."""
    return sum(pc * (math.log(pc) - math.log(qc + floor)) for pc, qc in zip(p, q) if pc > 0)


def _ce(z, y):
    return -math.log(_softmax(z)[y])


def _trades_by_hand(x_adv, beta):
    ce = sum(_ce(_logits(x), y) for x, y in zip(X, Y)) / len(X)
    kl = sum(_kl(_softmax(_logits(x)), _softmax(_logits(xa))) for x, xa in zip(X, x_adv)) / len(X)
    return ce + beta * kl, kl


def _mart_by_hand(x_adv, lam):
    bce = robust = 0.0
    for x, xa, y in zip(X, x_adv, Y):
        p, q = _softmax(_logits(x)), _softmax(_logits(xa))
        other = max((c for c in range(3) if c != y), key=lambda c: q[c])
        bce += _ce(_logits(xa), y) - math.log(1.0001 - q[other] + 1e-12)
        robust += _kl(p, q, floor=1e-12) * (1.0000001 - p[y])
    return bce / len(X) + lam * robust / len(X), robust / len(X)


def _craft(module, x, *args):
    """x' as the module's training step crafts it, the attack's random stream then rewound."""
    x_adv = module.adversarial_inputs(x) if isinstance(module, TRADES) else module.attack(module.model, x, *args)
    module.attack.reset_rng()
    return x_adv


# -- the objectives ---------------------------------------------------------------------------------------
def test_trades_loss_is_the_natural_ce_plus_beta_times_the_batch_mean_kl():
    x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y)
    attack = PGD(eps=0.3, norm="linf", steps=5, rel_step_size=0.25, keep_best=False, loss="ce", seed=3)
    module = TRADES(_linear(), OPT, attack=attack, beta=6.0)
    x_adv = _craft(module, x)
    loss, logits_adv = module.training_loss(x, y)
    want, kl = _trades_by_hand(x_adv.tolist(), 6.0)
    assert loss.item() == pytest.approx(want, rel=1e-12) and kl > 1e-3  # a KL the attack made, not a zero
    assert torch.allclose(logits_adv, module.model(x_adv))  # train/acc counts x'
    assert attack.loss == "ce"  # TRADES crafted on the KL term and left the attack as configured
    # x' maximises the KL: above the KL of the attack's own start (its uniform draw, same stream)
    start = PGD(eps=0.3, norm="linf", steps=1, step_size=1e-9, keep_best=False, seed=3)
    kl_start = _trades_by_hand(start(module.model, x, y).tolist(), 6.0)[1]
    assert kl > 2 * kl_start


def test_the_kl_attack_loss_is_kl_for_soft_targets_and_ce_for_labels():
    z = torch.tensor([_logits(X[0]), _logits(X[1])], dtype=torch.float64)
    p = torch.tensor([[0.7, 0.3, 0.0], [0.2, 0.2, 0.6]], dtype=torch.float64)
    got = per_sample_loss("kl", z, p)
    assert got.tolist() == pytest.approx([_kl(p[i].tolist(), _softmax(z[i].tolist())) for i in range(2)], rel=1e-12)
    assert per_sample_loss("kl", z, torch.tensor(Y)).tolist() == pytest.approx([_ce(z[i].tolist(), Y[i]) for i in range(2)], rel=1e-12)


def test_mart_loss_is_the_boosted_ce_plus_lambda_times_the_kl_weighted_by_one_minus_p_y():
    x, y = torch.tensor(X, dtype=torch.float64), torch.tensor(Y)
    attack = PGD(eps=0.3, norm="linf", steps=5, rel_step_size=0.25, keep_best=False, seed=1)
    module = MART(_linear(), OPT, attack=attack, lam=5.0)
    x_adv = _craft(module, x, y)
    loss, _ = module.training_loss(x, y)
    want, robust = _mart_by_hand(x_adv.tolist(), 5.0)
    assert loss.item() == pytest.approx(want, rel=1e-12) and robust > 1e-3
    with torch.no_grad():
        got = mart_weighted_kl(module.model(x), module.model(x_adv), y).item()
    unweighted = sum(_kl(_softmax(_logits(a)), _softmax(_logits(b)), floor=1e-12) for a, b in zip(X, x_adv.tolist())) / 2
    assert got == pytest.approx(robust, rel=1e-12) and abs(got - unweighted) > 0.05 * unweighted  # the 1 − p_y weights count


@pytest.mark.parametrize("cls,key,value", [(TRADES, "beta", -1.0), (MART, "lam", -0.5), (TRADES, "beta", float("nan")),
                                           (FastAdversarialTraining, "grad_align", -1.0), (AdversarialTraining, "eps_warmup_epochs", 1.5)])
def test_out_of_range_weights_name_their_key(cls, key, value):
    with pytest.raises(ConfigError, match=rf"^{key}: must be"):
        cls(_linear(), OPT, attack=object(), **{key: value})


# -- fast adversarial training --------------------------------------------------------------------------------
def test_fgsm_rs_is_wongs_step_of_one_and_a_quarter_eps_from_a_uniform_start():
    torch.manual_seed(0)
    model = MLP((1, 8, 8), 10, width=32)
    x, y, eps = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)), 0.1
    attack = attack_from_conf("fgsm_rs", eps=eps)
    x_adv = attack(model, x, y)
    delta = x_adv - x
    assert delta.abs().max() <= eps + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    # Wong et al.: δ0 ~ U[−ε, ε] (clipped to the box), δ = clip(δ0 + 1.25ε·sign ∇, [−ε, ε] ∩ box − x)
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 * eps - eps
    start = (x + noise).clamp(0, 1).requires_grad_(True)
    model.eval()
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(start), y, reduction="sum"), start)
    want = torch.minimum(torch.maximum(start.detach() + 1.25 * eps * grad.sign(), (x - eps).clamp(min=0)), (x + eps).clamp(max=1))
    assert torch.allclose(x_adv, want, atol=1e-6)
    free = (want - start.detach()).abs() < 1.25 * eps - 1e-6  # coordinates the projection shortened
    step = (x_adv - start.detach())[~free].abs()
    assert step.numel() > 100 and torch.allclose(step, torch.full_like(step, 1.25 * eps), atol=1e-6)


def test_grad_align_needs_an_linf_attack():
    with pytest.raises(ConfigError, match=r"^grad_align: GradAlign's random points fill the L∞ box; needs attack\.norm=linf, got 'l2'"):
        FastAdversarialTraining(_linear(), OPT, attack=PGD(eps=0.5, norm="l2"), grad_align=0.2)


def test_grad_align_is_zero_for_aligned_gradients_and_trains_the_weights_otherwise():
    torch.manual_seed(0)
    x, y = torch.rand(32, 4), torch.randint(0, 2, (32,))
    linear = nn.Linear(4, 2)  # two classes: ∇x CE ∝ (w1 − w0) everywhere, cos = 1
    assert grad_align_penalty(linear, x, y, eps=0.3).item() == pytest.approx(0.0, abs=1e-6)
    relu = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    penalty = grad_align_penalty(relu, x, y, eps=0.3)
    penalty.backward()
    assert 0 < penalty.item() < 2 and relu[0].weight.grad.abs().sum() > 0  # double backpropagation reaches the weights


# -- ε warm-up ----------------------------------------------------------------------------------------------
class _EpsPerEpoch(pl.Callback):
    def __init__(self):
        self.eps = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.eps.append(pl_module.attack.eps)


def test_warmup_eps_ramps_linearly_over_the_first_epochs():
    assert [warmup_eps(0.3, e, 3) for e in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert [warmup_eps(0.3, e, 0) for e in range(2)] == [0.3, 0.3]


@pytest.mark.parametrize("cls", [AdversarialTraining, TRADES, MART, FastAdversarialTraining])
def test_every_adversarial_method_trains_epoch_e_at_the_warmed_up_eps(cls, one_torch_thread):
    dm = DigitsDataModule(seed=0, max_train=64, batch_size=32)
    dm.setup()
    attack = PGD(eps=0.2, norm="linf", steps=2, keep_best=False)
    module = cls(MLP(dm.input_shape, 10, width=16, mean=dm.mean, std=dm.std), OPT, attack=attack, eps_warmup_epochs=4)
    assert cls.adversarial is True
    seen = _EpsPerEpoch()
    pl.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=0, accelerator="cpu", callbacks=[seen]).fit(module, dm)
    assert seen.eps == pytest.approx([0.05, 0.1, 0.15, 0.2, 0.2])
    assert attack.eps == 0.2  # the attack leaves the fit as configured


# -- configs: the methods, their attacks and specs ------------------------------------------------------------
@pytest.mark.parametrize("name,target,attack,defaults", [
    ("trades", "advlab.methods.TRADES", "trades_pgd", {"beta": 6.0}),
    ("mart", "advlab.methods.MART", "mart_pgd", {"lam": 5.0}),
    ("fast_adversarial", "advlab.methods.FastAdversarialTraining", "fgsm_rs", {"grad_align": 0.0})])
def test_each_method_has_its_papers_defaults_and_a_spec(name, target, attack, defaults):
    from test_fit import _compose

    cfg = _compose(f"method={name}", f"attack={attack}", "eps=digits_linf", f"spec@source={name}")
    assert cfg.method._target_ == target and cfg.source.method._target_ == target
    assert {k: cfg.method[k] for k in defaults} == defaults and cfg.method.eps_warmup_epochs == 0
    assert cfg.source.attack == cfg.attack  # the spec's training attack: the same YAML
    built = attack_from_conf(attack, eps=8 / 255)
    want = {"trades_pgd": (10, 0.007 / 0.031, "kl"), "mart_pgd": (10, 0.007 / 0.031, "ce"), "fgsm_rs": (1, 1.25, "ce")}[attack]
    assert (built.steps, built.rel_step_size, built.loss) == pytest.approx(want) and built.random_start and not built.keep_best


@pytest.mark.parametrize("name", ["trades", "mart", "fast_adversarial"])
def test_each_spec_trains_a_model_through_the_artifact_cache(name, tmp_path, one_torch_thread):
    from advlab.artifacts.cache import ArtifactCache
    from advlab.artifacts.models import Artifacts, source_model
    from test_fit import ARCH, _compose

    dm = DigitsDataModule(seed=0, max_train=400)
    dm.setup()
    cfg = _compose(f"spec@source={name}", "eps=digits_linf", "source.max_epochs=3", "source.attack.steps=1")
    spec = OmegaConf.create({**OmegaConf.to_container(cfg.source, resolve=True), "arch": ARCH, "seed": 0})  # the arch replaced
    artifacts = Artifacts(ArtifactCache(tmp_path), trainer=OmegaConf.create({"accelerator": "cpu"}), progress=False)
    model, _, key = source_model(spec, dm, artifacts)
    assert key["method"]["_target_"] == cfg.source.method._target_ and key["attack"]["eps"] == 0.1
    with torch.no_grad():
        accuracy = (model(dm.x_test).argmax(1) == dm.y_test).float().mean()
    assert accuracy > 0.3, accuracy  # trained (chance: 0.1)
    again, _, same = source_model(spec, dm, Artifacts(ArtifactCache(tmp_path), progress=False))
    assert same == key and torch.equal(next(again.parameters()), next(model.parameters()))  # a cache hit


def test_a_bad_beta_is_one_line_and_exit_2_before_any_work(tmp_path):
    run = run_advlab(tmp_path, "method=trades", "attack=trades_pgd", "eps=digits_linf", "method.beta=-1")
    assert run.returncode == 2 and run.stderr.strip() == "advlab-train: error: method.beta: must be a finite number >= 0, got -1", run.stderr
    assert not (tmp_path / "run").exists()  # refused by the pre-flight: nothing written


def test_a_bad_lambda_is_one_line_and_exit_2_before_any_work(tmp_path):
    run = run_advlab(tmp_path, "method=mart", "attack=mart_pgd", "eps=digits_linf", "method.lam=-5")
    assert run.returncode == 2 and run.stderr.strip() == "advlab-train: error: method.lam: must be a finite number >= 0, got -5", run.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides,key", [
    (["method=adversarial", "attack=pgd_linf", "method.eps_warmup_epochs=-2"], "method.eps_warmup_epochs"),
    (["method=fast_adversarial", "attack=fgsm_rs", "method.eps_warmup_epochs=1.5"], "method.eps_warmup_epochs"),
    (["method=fast_adversarial", "attack=fgsm_rs", "method.grad_align=-0.2"], "method.grad_align"),
    (["spec@source=trades", "source.method.beta=-6"], "source.method.beta")])
def test_the_preflight_names_each_bad_method_key(overrides, key):
    from advlab.preflight.jobs import precheck

    with pytest.raises(ConfigError) as err:
        precheck([*overrides, "eps=digits_linf"])
    assert str(err.value).startswith(f"{key}: ")


@pytest.mark.parametrize("rel_step_size", [2.0, 2.5])
def test_fgsm_rs_step_of_two_eps_or_more_lands_on_the_corner_whatever_the_start(rel_step_size):
    """A step ≥ 2ε from any start in the ε-box ends, after clipping, on ε·sign(∇): FGSM without a random
    start. On a 2-class linear model the input gradient's sign is sign(w_other − w_y) at every point, so
    the result is known exactly and equal for every seed and every such step (why the CO sweep's 2.0 and
    2.5 runs are identical)."""
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 1.5]], dtype=torch.float64))
        model.bias.zero_()
    x = torch.tensor([[0.4, 0.6], [0.5, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    eps = 0.05
    sign = torch.sign(model.weight[1 - y] - model.weight[y]).detach()
    for seed in (0, 1, 2):
        attack = PGD(eps=eps, steps=1, rel_step_size=rel_step_size, random_start=True, keep_best=False, seed=seed)
        assert torch.allclose(attack(model, x, y), x + eps * sign, atol=1e-12)
    start_matters = PGD(eps=eps, steps=1, rel_step_size=1.25, random_start=True, keep_best=False, seed=0)
    assert not torch.allclose(start_matters(model, x, y), x + eps * sign)  # below 2ε the start still shows
