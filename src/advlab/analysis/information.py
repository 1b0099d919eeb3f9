"""Mutual-information estimators for layer representations (the information plane).

For a deterministic network T = f(X) on N distinct inputs, I(X;T) and I(T;Y) are estimated with
(Zhang et al. 2022; RECIPES.md §6):

* **KDE** (Kolchinsky & Tracey 2017; Saxe et al. 2018): T is observed through additive Gaussian
  noise N(0, σ²I), so H(T) is the entropy of the mixture (1/N) Σ_i N(t_i, σ²I). Its pairwise-distance
  upper (KL) and lower (Bhattacharyya) bounds are
      H_upper = d/2 + (d/2)·ln(2πσ²) + ln N − (1/N) Σ_i logsumexp_j(−‖t_i − t_j‖² / 2σ²)
      H_lower = the same with 4σ² inside the logsumexp (the d/2·ln 4 terms cancel),
  H(T|X) = (d/2)(ln 2πσ² + 1) (the noise), I(X;T) = H(T) − H(T|X), I(T;Y) = H(T) − Σ_y p(y) H(T|Y=y).
* **Binning** (Shwartz-Ziv & Tishby): T is discretised to floor(t / bin); I(X;T) = H(T_bin)
  (T_bin is a function of X), I(T;Y) = H(T_bin) − Σ_y p(y) H(T_bin | Y=y).
* **Matrix-based Rényi α-entropy** (Giraldo et al. 2014; Yu et al.): S_α(A) = log₂(Σ_i λ_i(A)^α)/(1−α)
  of the trace-normalised Gram matrix A of a Gaussian kernel; joint entropies from Hadamard
  products, I(A;B) = S(A) + S(B) − S(A∘B / tr(A∘B)). Labels get the delta kernel (1 if same class).

Every value is in **bits**. With N distinct inputs and C classes all of them saturate at
I(X;T) = log₂ N and I(T;Y) = log₂ C (for balanced classes) once representations are separated
(far apart relative to σ, or in different bins): compare runs only at the same N.

Everything here is a pure torch function of tensors (float64 inside), testable on its own.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch

from advlab.errors import ConfigError

ESTIMATORS = ("kde_upper", "kde_lower", "binning", "renyi")

LN2 = math.log(2.0)


# -- shared ----------------------------------------------------------------------------------------

def pairwise_sq_distances(t: torch.Tensor) -> torch.Tensor:
    """(N, N) squared Euclidean distances between the rows of t (flattened per sample), float64."""
    t = t.reshape(t.shape[0], -1).to(torch.float64)
    sq = (t * t).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * (t @ t.T)
    d.clamp_(min=0.0)
    d.fill_diagonal_(0.0)
    return d


def class_indices(y: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """[(p(y=c), indices of class c)] for every class present in y."""
    y = y.reshape(-1).cpu()
    n = len(y)
    return [(float((y == c).sum()) / n, (y == c).nonzero().squeeze(1)) for c in torch.unique(y)]


def discrete_entropy(counts: torch.Tensor) -> float:
    """Shannon entropy in bits of a distribution given by counts."""
    p = counts.to(torch.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * torch.log2(p)).sum())


# -- KDE -------------------------------------------------------------------------------------------

def kde_entropy(sq_dists: torch.Tensor, dim: int, noise_var: float, bound: str = "upper") -> float:
    """Entropy in nats of the Gaussian mixture (1/N) Σ_i N(t_i, σ²I) in d = `dim` dimensions, from the
    points' pairwise squared distances: the KL upper bound or the Bhattacharyya lower bound."""
    if bound not in ("upper", "lower"):
        raise ValueError(f"bound must be 'upper' or 'lower', got {bound!r}")
    n = sq_dists.shape[0]
    kernel_var = noise_var if bound == "upper" else 4.0 * noise_var
    lse = torch.logsumexp(-sq_dists.to(torch.float64) / (2.0 * kernel_var), dim=1)
    return dim / 2.0 + dim / 2.0 * math.log(2.0 * math.pi * noise_var) + math.log(n) - float(lse.mean())


def gaussian_entropy(dim: int, var: float) -> float:
    """Differential entropy in nats of N(0, var·I_dim): H(T|X) of the KDE noise model."""
    return dim / 2.0 * (math.log(2.0 * math.pi * var) + 1.0)


def kde_information(t: torch.Tensor, y: torch.Tensor, noise_var: float, sq_dists: torch.Tensor | None = None) -> dict:
    """{"kde_upper": (I(X;T), I(T;Y)), "kde_lower": (...)} in bits."""
    d = sq_dists if sq_dists is not None else pairwise_sq_distances(t)
    dim = t[0].numel()
    h_noise = gaussian_entropy(dim, noise_var)
    classes = class_indices(y)
    out = {}
    for bound in ("upper", "lower"):
        h = kde_entropy(d, dim, noise_var, bound)
        h_given_y = sum(p * kde_entropy(d[idx][:, idx], dim, noise_var, bound) for p, idx in classes)
        out[f"kde_{bound}"] = ((h - h_noise) / LN2, (h - h_given_y) / LN2)
    return out


# -- binning ---------------------------------------------------------------------------------------

def binned_codes(t: torch.Tensor, bin_size: float) -> torch.Tensor:
    """One integer id per sample: the index of its bin pattern floor(t / bin_size) among the unique ones."""
    codes = torch.floor(t.reshape(t.shape[0], -1).to(torch.float64) / bin_size).to(torch.int64)
    return torch.unique(codes, dim=0, return_inverse=True)[1]


def binning_information(t: torch.Tensor, y: torch.Tensor, bin_size: float) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in bits of the binned representation."""
    ids = binned_codes(t, bin_size).cpu()
    h = discrete_entropy(torch.bincount(ids))
    h_given_y = sum(p * discrete_entropy(torch.bincount(ids[idx])) for p, idx in class_indices(y))
    return h, h - h_given_y


# -- matrix-based Rényi α-entropy ---------------------------------------------------------------------

def kernel_width(sq_dists: torch.Tensor) -> float:
    """The median heuristic: the median distance between distinct samples (1 if all coincide)."""
    n = sq_dists.shape[0]
    off = sq_dists[~torch.eye(n, dtype=torch.bool, device=sq_dists.device)]
    if off.numel() == 0:
        return 1.0
    med = float(off.median().sqrt())
    return med if med > 0 else (float(off.max().sqrt()) or 1.0)


def normalized_gram(sq_dists: torch.Tensor, sigma: float) -> torch.Tensor:
    """A = K / tr(K), K_ij = exp(−‖t_i − t_j‖² / 2σ²)."""
    k = torch.exp(-sq_dists.to(torch.float64) / (2.0 * sigma**2))
    return k / torch.trace(k)


def renyi_entropy_of_spectrum(eigenvalues: torch.Tensor, alpha: float) -> float:
    """S_α in bits of a PSD, unit-trace matrix's eigenvalues (α = 1: von Neumann / Shannon)."""
    lam = eigenvalues.to(torch.float64).clamp(min=0.0)
    lam = lam[lam > 0]
    if abs(alpha - 1.0) < 1e-12:
        return float(-(lam * torch.log2(lam)).sum())
    return float(torch.log2((lam**alpha).sum()) / (1.0 - alpha))


def renyi_entropy(a: torch.Tensor, alpha: float) -> float:
    """S_α(A) in bits of a trace-normalised Gram matrix."""
    return renyi_entropy_of_spectrum(torch.linalg.eigvalsh(a), alpha)


def renyi_joint_entropy(a: torch.Tensor, b: torch.Tensor, alpha: float) -> float:
    """S_α(A, B) = S_α(A∘B / tr(A∘B))."""
    m = a * b
    return renyi_entropy(m / torch.trace(m), alpha)


def renyi_label_entropy(y: torch.Tensor, alpha: float) -> float:
    """S_α of the labels' delta-kernel Gram matrix: its blocks of ones/N have the eigenvalues p(y=c)."""
    return renyi_entropy_of_spectrum(torch.tensor([p for p, _ in class_indices(y)], dtype=torch.float64), alpha)


def renyi_joint_with_labels(a: torch.Tensor, y: torch.Tensor, alpha: float) -> float:
    """S_α(A, Y) for the delta kernel on labels: A∘A_Y is block diagonal (one block per class), so its
    spectrum is the union of the blocks' spectra (much cheaper than one N×N eigendecomposition)."""
    classes = class_indices(y)
    blocks = [a[idx][:, idx] for _, idx in classes]
    total = sum(float(torch.trace(b)) for b in blocks)
    eig = torch.cat([torch.linalg.eigvalsh(b / total) for b in blocks])
    return renyi_entropy_of_spectrum(eig, alpha)


def renyi_information(a_x: torch.Tensor, s_x: float, t_sq_dists: torch.Tensor, y: torch.Tensor, alpha: float,
                      sigma: float | None = None) -> tuple[float, float]:
    """(I(X;T), I(T;Y)) in bits; `a_x` and `s_x` are the inputs' normalised Gram matrix and entropy."""
    a_t = normalized_gram(t_sq_dists, sigma if sigma is not None else kernel_width(t_sq_dists))
    s_t = renyi_entropy(a_t, alpha)
    i_xt = s_x + s_t - renyi_joint_entropy(a_x, a_t, alpha)
    i_ty = s_t + renyi_label_entropy(y, alpha) - renyi_joint_with_labels(a_t, y, alpha)
    return i_xt, i_ty


# -- all estimators at once ----------------------------------------------------------------------------

class InformationEstimator:
    """Estimates (I(X;T), I(T;Y)) for several layers' representations of the same inputs.

    `estimators` ⊆ {kde_upper, kde_lower, binning, renyi}; `noise_var` is the KDE σ², `bin_size` the
    binning width, `renyi_alpha` and `renyi_sigma` (a number, or None for the median heuristic per
    representation) the Rényi parameters. Pairwise distances are computed once per representation
    and shared by KDE and Rényi.
    """

    def __init__(self, estimators: Iterable[str] = ESTIMATORS, noise_var: float = 0.1, bin_size: float = 0.5,
                 renyi_alpha: float = 1.01, renyi_sigma: float | None = None, device: str | torch.device = "cpu"):
        self.estimators = tuple(estimators)
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators:
            what = f"unknown estimator {unknown[0]!r}" if unknown else "must not be empty"
            raise ConfigError("estimators", f"{what}; allowed: {', '.join(ESTIMATORS)}")
        for key, value in (("noise_var", noise_var), ("bin_size", bin_size), ("renyi_alpha", renyi_alpha)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(key, f"must be a number > 0, got {value!r}")
        if renyi_sigma is not None and (isinstance(renyi_sigma, bool) or not isinstance(renyi_sigma, (int, float)) or not renyi_sigma > 0):
            raise ConfigError("renyi_sigma", f"must be null (median heuristic) or a number > 0, got {renyi_sigma!r}")
        self.noise_var, self.bin_size = float(noise_var), float(bin_size)
        self.renyi_alpha = float(renyi_alpha)
        self.renyi_sigma = None if renyi_sigma is None else float(renyi_sigma)
        self.device = torch.device(device)

    def measure(self, x: torch.Tensor, y: torch.Tensor, layers: Mapping[str, torch.Tensor]) -> dict[str, dict[str, tuple[float, float]]]:
        """{estimator: {layer: (I(X;T), I(T;Y))}} for the representations `layers` of inputs x with labels y."""
        y = y.reshape(-1).cpu()
        out: dict[str, dict[str, tuple[float, float]]] = {e: {} for e in self.estimators}
        kde = any(e.startswith("kde") for e in self.estimators)
        renyi = "renyi" in self.estimators
        if renyi:
            dx = pairwise_sq_distances(x.to(self.device))
            a_x = normalized_gram(dx, self.renyi_sigma or kernel_width(dx))
            s_x = renyi_entropy(a_x, self.renyi_alpha)
        for name, t in layers.items():
            t = t.detach().to(self.device)
            d = pairwise_sq_distances(t) if (kde or renyi) else None
            if kde:
                for key, value in kde_information(t, y, self.noise_var, sq_dists=d).items():
                    if key in out:
                        out[key][name] = value
            if "binning" in out:
                out["binning"][name] = binning_information(t, y, self.bin_size)
            if renyi:
                out["renyi"][name] = renyi_information(a_x, s_x, d, y, self.renyi_alpha, self.renyi_sigma)
        return out


def estimator_at(where: str, estimators, noise_var, bin_size, renyi_alpha, renyi_sigma=None) -> InformationEstimator:
    """An InformationEstimator whose errors name the config node it came from (`probe.mi.noise_var`)."""
    try:
        return InformationEstimator(list(estimators), noise_var, bin_size, renyi_alpha, renyi_sigma)
    except ConfigError as err:
        raise err.under(where) from None


def estimator_from(node, where: str) -> InformationEstimator:
    """The estimator of a config node with keys estimators, noise_var, bin_size, renyi_alpha[, renyi_sigma]."""
    return estimator_at(where, node.estimators, node.noise_var, node.bin_size, node.renyi_alpha, node.get("renyi_sigma"))
