"""DI-FGSM, TI-FGSM and VMI-FGSM: in the ε-ball and the box, stronger than nothing, and equal to
torchattacks' DIFGSM / TIFGSM / VMIFGSM point by point where the randomness can be aligned (the same seed:
our generator and torchattacks' global RNG draw the same transforms), in distribution where it cannot."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlab.attacks import DIFGSM, MIFGSM, TIFGSM, VMIFGSM
from advlab.attacks.tifgsm import smoothing_kernel
from advlab.errors import ConfigError
from conftest import attack_from_conf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPS, ALPHA = 8 / 255, 2 / 255


@pytest.fixture(scope="module")
def rgb_model():
    """A small random CNN on 3×16×16 inputs (torchattacks' TI convolves exactly 3 channels), labels its predictions."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 5)).eval()
    x = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _in_ball_and_box(x_adv, x, eps, norm="linf"):
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps + 1e-6).all()) and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


@pytest.mark.parametrize("attack", [
    DIFGSM(eps=0.2, steps=10, decay=1.0, resize_rate=0.8),
    DIFGSM(eps=0.2, steps=10, resize_rate=1.25, random_start=True),  # the paper's enlarging transform
    DIFGSM(eps=2.0, norm="l2", steps=10, resize_rate=0.8),
    TIFGSM(eps=0.2, steps=10, len_kernel=3),
    TIFGSM(eps=2.0, norm="l2", steps=10, len_kernel=3, kernel_name="linear", decay=1.0),
    VMIFGSM(eps=0.2, steps=10, neighbors=5),
    VMIFGSM(eps=0.2, steps=5, neighbors=3, random_start=True, keep_best=True, restarts=2),
], ids=["di", "di-enlarge", "di-l2", "ti", "ti-l2", "vmi", "vmi-best"])
def test_stays_in_the_eps_ball_and_the_box_and_attacks(attack, digits_mlp):
    model, x, y = digits_mlp
    x, y = x[:100], y[:100]
    if getattr(attack, "resize_rate", 0) > 1:
        # a model that takes the larger transformed input too (the paper's setting): pool to 8×8 first
        model = nn.Sequential(nn.AdaptiveAvgPool2d(8), model)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and _in_ball_and_box(x_adv, x, attack.eps, attack.norm)
    with torch.no_grad():
        clean, adv = (model(x).argmax(1) == y).float().mean(), (model(x_adv).argmax(1) == y).float().mean()
    assert float(adv) < float(clean) - 0.3  # a real attack at this budget (clean accuracy about 0.95)
    again = type(attack)(**{**_args(attack)})(model, x, y)
    assert torch.equal(again, x_adv)  # its own seeded generator: reproducible, the global RNG untouched
    assert all(p.grad is None for p in model.parameters())


def _args(attack) -> dict:
    keys = ("eps", "norm", "steps", "decay", "random_start", "restarts", "keep_best", "seed")
    out = {k: getattr(attack, k) for k in keys}
    for k in ("resize_rate", "diversity_prob", "kernel_name", "len_kernel", "nsig", "neighbors", "beta"):
        if hasattr(attack, k):
            out[k] = getattr(attack, k)
    return out


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_difgsm_equals_torchattacks(decay, rgb_model):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = rgb_model
    ours = DIFGSM(eps=EPS, steps=10, step_size=ALPHA, decay=decay, resize_rate=0.7, diversity_prob=0.5, seed=5)(model, x, y)
    torch.manual_seed(5)
    ref = torchattacks.DIFGSM(model, eps=EPS, alpha=ALPHA, steps=10, decay=decay, resize_rate=0.7, diversity_prob=0.5)(x, y)
    assert float((ours - ref).abs().max()) < 1e-6
    plain = MIFGSM(eps=EPS, steps=10, step_size=ALPHA, decay=decay)(model, x, y)
    assert float((ours - plain).abs().max()) > ALPHA / 2  # the transforms did change the gradients


@pytest.mark.parametrize("kernel", ["gaussian", "linear", "uniform"])
def test_tifgsm_equals_torchattacks(kernel, rgb_model):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = rgb_model
    ours = TIFGSM(eps=EPS, steps=10, step_size=ALPHA, decay=1.0, kernel_name=kernel, len_kernel=5, nsig=3, resize_rate=0.7,
                  seed=7)(model, x, y)
    torch.manual_seed(7)
    ref = torchattacks.TIFGSM(model, eps=EPS, alpha=ALPHA, steps=10, decay=1.0, kernel_name=kernel, len_kernel=5, nsig=3,
                              resize_rate=0.7)(x, y)
    assert float((ours - ref).abs().max()) < 1e-6
    ta_kernel = torchattacks.TIFGSM(model, kernel_name=kernel, len_kernel=5, nsig=3).stacked_kernel[0, 0].double()
    assert torch.allclose(smoothing_kernel(kernel, 5, 3.0), ta_kernel, atol=1e-7)


def test_vmifgsm_equals_torchattacks_where_the_neighbours_do_not_matter(rgb_model):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = rgb_model
    # beta = 0: every neighbour is the iterate itself, so the draws do not matter and v = 0 after each step
    ours = VMIFGSM(eps=EPS, steps=10, step_size=ALPHA, neighbors=3, beta=0.0)(model, x, y)
    ref = torchattacks.VMIFGSM(model, eps=EPS, alpha=ALPHA, steps=10, N=3, beta=0.0)(x, y)
    assert float((ours - ref).abs().max()) < 1e-6
    # a two-class linear model: every gradient, a neighbour's too, is a positive multiple of ±(w₁ − w₀), so the
    # signed update does not depend on which neighbours are drawn, although they are drawn differently
    with torch.random.fork_rng():
        torch.manual_seed(3)
        linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)).eval()
    with torch.no_grad():
        y2 = linear(x).argmax(1)
    ours = VMIFGSM(eps=EPS, steps=10, step_size=ALPHA, neighbors=4, beta=1.5, seed=1)(linear, x, y2)
    torch.manual_seed(2)
    ref = torchattacks.VMIFGSM(linear, eps=EPS, alpha=ALPHA, steps=10, N=4, beta=1.5)(x, y2)
    assert float((ours - ref).abs().max()) < 1e-6


def test_vmifgsm_agrees_with_torchattacks_in_distribution(digits_mlp):
    """With β > 0 on a nonlinear model the neighbours matter. Statistic: the fraction of coordinates where the
    result differs from β = 0 (no variance term). Over seeds, ours and torchattacks' agree at each β, and the
    fraction grows with β in both: the variance term does the same thing in both."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits_mlp
    x, y = x[:100], y[:100]
    plain = VMIFGSM(eps=0.05, steps=5, neighbors=5, beta=0.0)(model, x, y)
    means = {}
    with torch.random.fork_rng():
        for beta in (1.5, 3.0):
            ours, ref = [], []
            for seed in range(4):
                a = VMIFGSM(eps=0.05, steps=5, neighbors=5, beta=beta, seed=seed)(model, x, y)
                torch.manual_seed(seed)
                b = torchattacks.VMIFGSM(model, eps=0.05, alpha=0.01, steps=5, N=5, beta=beta)(x, y)
                ours.append(float(((a - plain).abs() > 1e-6).float().mean()))
                ref.append(float(((b - plain).abs() > 1e-6).float().mean()))
            ours_t, ref_t = torch.tensor(ours), torch.tensor(ref)
            spread = float(torch.cat([ours_t - ours_t.mean(), ref_t - ref_t.mean()]).std())
            assert abs(float(ours_t.mean() - ref_t.mean())) < 3 * spread + 1e-4, (beta, ours, ref)
            means[beta] = (float(ours_t.mean()), float(ref_t.mean()))
    assert means[1.5][0] > 0.003 and means[3.0][0] > 1.5 * means[1.5][0] and means[3.0][1] > 1.5 * means[1.5][1], means


def test_settings_are_checked():
    cases = [
        (lambda: DIFGSM(eps=0.1, resize_rate=1.0), "resize_rate"),
        (lambda: DIFGSM(eps=0.1, resize_rate=-0.5), "resize_rate"),
        (lambda: DIFGSM(eps=0.1, diversity_prob=1.5), "diversity_prob"),
        (lambda: DIFGSM(eps=0.1, steps=-1), "steps"),
        (lambda: DIFGSM(eps=0.1, norm="l3"), "norm"),
        (lambda: TIFGSM(eps=0.1, kernel_name="box"), "kernel_name"),
        (lambda: TIFGSM(eps=0.1, len_kernel=0), "len_kernel"),
        (lambda: TIFGSM(eps=0.1, nsig=0), "nsig"),
        (lambda: VMIFGSM(eps=0.1, neighbors=0), "neighbors"),
        (lambda: VMIFGSM(eps=0.1, beta=-1.0), "beta"),
        (lambda: VMIFGSM(eps=0.1, norm="l2"), "norm"),
        (lambda: VMIFGSM(eps=0.1, decay=-1.0), "decay"),
        (lambda: VMIFGSM(eps=0.1, stop_on_success=True), "stop_on_success"),
    ]
    for build, key in cases:
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.key == key and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"allowed: gaussian, linear, uniform"):
        TIFGSM(eps=0.1, kernel_name="box")
    with pytest.raises(ConfigError, match=r"allowed: linf$"):
        VMIFGSM(eps=0.1, norm="l2")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):  # input diversity needs images
        DIFGSM(eps=0.1)(nn.Linear(4, 2), torch.rand(3, 4), torch.zeros(3, dtype=torch.long))


def test_yaml_configs_build_the_papers_defaults():
    di, ti, vmi = (attack_from_conf(name, eps=0.1) for name in ("difgsm", "tifgsm", "vmifgsm"))
    assert type(di) is DIFGSM and (di.decay, di.resize_rate, di.diversity_prob, di.alpha) == (0.0, 0.9, 0.5, pytest.approx(0.01))
    assert type(ti) is TIFGSM and (ti.kernel_name, ti.len_kernel, ti.nsig) == ("gaussian", 15, 3.0)
    assert type(vmi) is VMIFGSM and (vmi.decay, vmi.neighbors, vmi.beta, vmi.alpha) == (1.0, 20, 1.5, pytest.approx(0.01))
    assert not vmi.targeted and "_variance" not in vars(vmi)


def test_an_evaluation_leaves_vmifgsm_running_every_point(digits_mlp):
    """Evaluations stop a keep-best PGD-family attack at each point's first success (pgd.early_stopping); VMI's
    variance term belongs to the whole batch, so it stays off there, with the same result as outside."""
    from advlab.attacks.pgd import early_stopping

    model, x, y = digits_mlp
    attack = VMIFGSM(eps=0.1, steps=3, neighbors=2, keep_best=True)
    plain = attack(model, x[:20], y[:20])
    attack.reset_rng()
    with early_stopping(attack) as inside:
        assert inside.stop_on_success is False
        assert torch.equal(inside(model, x[:20], y[:20]), plain)
