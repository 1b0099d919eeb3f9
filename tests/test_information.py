"""Mutual-information estimators against closed forms and hand-built inputs."""
from __future__ import annotations

import math

import pytest
import torch

from advlab.analysis.information import (
    InformationEstimator,
    binning_information,
    gaussian_entropy,
    kde_entropy,
    kde_information,
    normalized_gram,
    pairwise_sq_distances,
    renyi_entropy,
    renyi_information,
    renyi_joint_with_labels,
    renyi_label_entropy,
)
from advlab.errors import ConfigError


def _mixture_entropy_mc(t: torch.Tensor, var: float, samples: int, gen: torch.Generator) -> float:
    """Monte-Carlo entropy (nats) of (1/N) Σ N(t_i, var I): −E log M(z), z drawn from the mixture."""
    n, d = t.shape
    z = t[torch.randint(0, n, (samples,), generator=gen)] + math.sqrt(var) * torch.randn(samples, d, generator=gen, dtype=t.dtype)
    logs = []
    for chunk in z.split(1000):
        sq = torch.cdist(chunk, t) ** 2
        logs.append(torch.logsumexp(-sq / (2 * var), 1) - math.log(n) - d / 2 * math.log(2 * math.pi * var))
    return float(-torch.cat(logs).mean())


def test_kde_entropy_of_gaussian_samples_matches_the_differential_entropy():
    # T ~ N(0, s² I) seen through the KDE noise N(0, σ² I) is N(0, (s² + σ²) I): H = d/2 ln(2πe(s²+σ²)).
    gen = torch.Generator().manual_seed(0)
    d, s2, var = 2, 0.05, 1.0
    t = torch.randn(2000, d, generator=gen, dtype=torch.float64) * math.sqrt(s2)
    dists = pairwise_sq_distances(t)
    exact = gaussian_entropy(d, s2 + var)
    upper, lower = kde_entropy(dists, d, var, "upper"), kde_entropy(dists, d, var, "lower")
    assert lower <= exact <= upper
    assert upper - exact < 0.06 and exact - lower < 0.06


@pytest.mark.parametrize("s2,var", [(1.0, 0.1), (1.0, 1.0), (0.2, 0.01)])
def test_kde_bounds_bracket_the_mixture_entropy(s2, var):
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(300, 2, generator=gen, dtype=torch.float64) * math.sqrt(s2)
    dists = pairwise_sq_distances(t)
    mc = _mixture_entropy_mc(t, var, 10000, gen)  # standard error ≈ 0.015 nats
    lower, upper = kde_entropy(dists, 2, var, "lower"), kde_entropy(dists, 2, var, "upper")
    assert lower - 0.03 <= mc <= upper + 0.03
    assert upper - lower > 0.05  # a regime where the two bounds differ: the bracket is informative


def test_kde_limits_single_point_and_separated_points():
    var, d = 0.1, 3
    same = torch.zeros(50, d, dtype=torch.float64)  # one Gaussian: exactly the noise entropy
    for bound in ("upper", "lower"):
        assert kde_entropy(pairwise_sq_distances(same), d, var, bound) == pytest.approx(gaussian_entropy(d, var), abs=1e-12)
    far = 1e3 * torch.arange(64, dtype=torch.float64)[:, None] * torch.ones(1, d)  # N separated Gaussians
    for bound in ("upper", "lower"):
        assert kde_entropy(pairwise_sq_distances(far), d, var, bound) == pytest.approx(gaussian_entropy(d, var) + math.log(64), abs=1e-9)


def _separated(n: int, classes: int, dim: int = 5):
    gen = torch.Generator().manual_seed(2)
    t = 1e3 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.arange(n) % classes
    return t, y


def test_every_estimator_saturates_at_log_n_and_log_c_for_separated_representations():
    n, c = 64, 4
    t, y = _separated(n, c)
    est = InformationEstimator(noise_var=0.1, bin_size=0.5, renyi_alpha=1.01, renyi_sigma=1e-3)
    result = est.measure(t, y, {"layer": t})
    for estimator in ("kde_upper", "kde_lower", "binning", "renyi"):
        i_xt, i_ty = result[estimator]["layer"]
        assert i_xt == pytest.approx(math.log2(n), abs=1e-6), estimator
        assert i_ty == pytest.approx(math.log2(c), abs=1e-6), estimator


def test_every_estimator_gives_zero_for_a_constant_representation():
    x, y = _separated(40, 4)
    t = torch.ones(40, 7, dtype=torch.float64)
    result = InformationEstimator(renyi_sigma=1.0).measure(x, y, {"constant": t})
    for estimator, per_layer in result.items():
        i_xt, i_ty = per_layer["constant"]
        assert abs(i_xt) < 1e-9 and abs(i_ty) < 1e-9, estimator


def test_kde_two_identical_clusters_carry_one_bit():
    # two far-apart clusters of identical points, labels = cluster: H(T) = ln 2 + noise, H(T|Y) = noise
    t = torch.cat([torch.zeros(30, 4), 1e3 * torch.ones(30, 4)]).double()
    y = torch.cat([torch.zeros(30), torch.ones(30)]).long()
    for bound, (i_xt, i_ty) in kde_information(t, y, noise_var=0.1).items():
        assert i_xt == pytest.approx(1.0, abs=1e-9) and i_ty == pytest.approx(1.0, abs=1e-9), bound


def test_binning_hand_built():
    # bins with probabilities 1/2, 1/4, 1/4: H = 1.5 bits; each class sees two equiprobable bins: H(T|Y) = 1
    t = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.1, 1.2, 2.1, 2.2])[:, None]
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    i_xt, i_ty = binning_information(t, y, bin_size=1.0)
    assert i_xt == pytest.approx(1.5) and i_ty == pytest.approx(0.5)
    assert binning_information(t, y, bin_size=4.0) == (0.0, 0.0)  # one bin holds everything
    # 2-d rows are binned jointly: four distinct patterns, equiprobable
    t2 = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]).repeat(2, 1)
    assert binning_information(t2, torch.zeros(8, dtype=torch.long), 0.5) == (pytest.approx(2.0), pytest.approx(0.0))


@pytest.mark.parametrize("alpha", [1.0, 1.01, 2.0, 5.0])
def test_renyi_entropy_of_k_repeated_points_is_log_k_for_every_alpha(alpha):
    k, reps = 5, 12
    points = 100.0 * torch.eye(k, dtype=torch.float64)
    t = points.repeat_interleave(reps, 0)
    a = normalized_gram(pairwise_sq_distances(t), sigma=1.0)  # blocks of ones / N: eigenvalues 1/k
    assert renyi_entropy(a, alpha) == pytest.approx(math.log2(k), abs=1e-9)
    y = torch.arange(k).repeat_interleave(reps)
    assert renyi_label_entropy(y, alpha) == pytest.approx(math.log2(k), abs=1e-12)
    assert renyi_joint_with_labels(a, y, alpha) == pytest.approx(math.log2(k), abs=1e-9)
    i_xt, i_ty = renyi_information(a, renyi_entropy(a, alpha), pairwise_sq_distances(t), y, alpha, sigma=1.0)
    assert i_xt == pytest.approx(math.log2(k), abs=1e-9) and i_ty == pytest.approx(math.log2(k), abs=1e-9)


def test_renyi_independent_labels_carry_no_information_and_alpha2_is_the_frobenius_formula():
    # two clusters, each half label 0 and half label 1: S(T) = S(Y) = 1, S(T, Y) = 2 -> I(T;Y) = 0
    t = torch.cat([torch.zeros(20, 3), 50 * torch.ones(20, 3)]).double()
    y = torch.tensor([0, 1] * 20)
    a = normalized_gram(pairwise_sq_distances(t), sigma=1.0)
    assert renyi_joint_with_labels(a, y, 1.01) == pytest.approx(2.0, abs=1e-9)
    _, i_ty = renyi_information(a, renyi_entropy(a, 1.01), pairwise_sq_distances(t), y, 1.01, sigma=1.0)
    assert abs(i_ty) < 1e-9
    # α = 2: S_2(A) = −log2 ‖A‖_F² for any Gram matrix
    g = normalized_gram(pairwise_sq_distances(torch.randn(30, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)), 1.3)
    assert renyi_entropy(g, 2.0) == pytest.approx(-math.log2(float((g * g).sum())), abs=1e-9)
    # the block trick equals the full Hadamard product with the label kernel
    ay = (y[:, None] == y[None, :]).double()
    m = a * ay
    assert renyi_joint_with_labels(a, y, 1.5) == pytest.approx(renyi_entropy(m / torch.trace(m), 1.5), abs=1e-9)


def test_estimator_rejects_bad_parameters():
    with pytest.raises(ConfigError, match="^estimators: .*allowed: kde_upper, kde_lower, binning, renyi"):
        InformationEstimator(["kde"])
    with pytest.raises(ConfigError, match="^noise_var:"):
        InformationEstimator(noise_var=0)
