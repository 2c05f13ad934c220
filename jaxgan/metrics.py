"""Distribution and paired metrics: FID, KID, L1. Pure NumPy on feature arrays.

* FID (Heusel et al., 2017): the Fréchet distance between Gaussians fitted to
  two sets of Inception pool3 features.
* KID (Bińkowski et al., 2018): the unbiased MMD² with the cubic polynomial
  kernel ``k(x, y) = (x·y / d + 1)³``, averaged over random subsets (100 subsets
  of up to 1000 samples per set, the usual protocol), reported with its std.
* L1: mean absolute error between paired images (the synthetic set's ground
  truth), plus a shift-tolerant variant on 4x box-downsampled images.

All statistics are computed in float64.
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``float64[D]`` and unbiased covariance ``float64[D, D]`` of ``features[N, D]`` (N >= 2)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape [N >= 2, D], got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _clip_roundoff(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those indistinguishable from rounding error (incl. negative) set to 0.

    Without this, rounding noise ε on a zero eigenvalue would add √ε to a trace of square roots.
    """
    tol = max(float(w.max(initial=0.0)), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(_clip_roundoff(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((Σ1 Σ2)^½)`` computed as ``Σ λ_i^½`` of the PSD matrix ``Σ1^½ Σ2 Σ1^½``.

    ``Σ1 Σ2`` is similar to ``Σ1^½ Σ2 Σ1^½``, which is symmetric PSD, so this
    needs no complex square root and stays exact for singular covariances (fewer
    samples than dimensions), where ``scipy.linalg.sqrtm(Σ1 Σ2)`` needs an
    ``eps`` offset.
    """
    s1 = _psd_sqrt(np.asarray(sigma1, np.float64))
    m = s1 @ np.asarray(sigma2, np.float64) @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(_clip_roundoff(w)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr((Σ1 Σ2)^½)`` for ``mu: [D]``, ``sigma: [D, D]``; >= 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets ``[N1, D]`` and ``[N2, D]`` (N1, N2 >= 2).

    With fewer samples than dimensions (e.g. 120 vs 140 test images, D = 2048)
    the covariances have rank < N and the cross term is computed from the small
    ``[N1, N2]`` matrix ``A Bᵀ`` of centred features: the non-zero eigenvalues
    of ``Σ1 Σ2 = AᵀA BᵀB / c`` are those of ``(A Bᵀ)(A Bᵀ)ᵀ / c``, so
    ``tr((Σ1 Σ2)^½)`` is the nuclear norm of ``A Bᵀ / √c``, ``c = (N1 − 1)(N2 − 1)``.
    That is exact, and milliseconds instead of two ``D x D`` eigendecompositions.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"need features of shapes [N1 >= 2, D] and [N2 >= 2, D], got {f1.shape} and {f2.shape}")
    if max(len(f1), len(f2)) > f1.shape[1]:
        return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
    a, b = f1 - f1.mean(axis=0), f2 - f2.mean(axis=0)
    c1, c2 = len(f1) - 1, len(f2) - 1
    diff = f1.mean(axis=0) - f2.mean(axis=0)
    cross = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(c1 * c2)
    value = diff @ diff + np.sum(a * a) / c1 + np.sum(b * b) / c2 - 2.0 * cross
    return float(max(value, 0.0))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``(x yᵀ / d + coef0) ** degree`` for ``x: [N, d]``, ``y: [M, d]`` -> ``[N, M]``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel between ``x: [N, d]`` and ``y: [M, d]`` (N, M >= 2).

    ``mean_{i≠j} k(x_i, x_j) + mean_{i≠j} k(y_i, y_j) − 2 mean_{i,j} k(x_i, y_j)``.
    """
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"need at least 2 samples per set, got {n} and {m}")
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    term_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and std of :func:`mmd2_unbiased` over random subsets.

    Each of ``n_subsets`` draws ``min(subset_size, N1, N2)`` samples without
    replacement from each set (the protocol of Bińkowski et al., torch-fidelity
    and clean-fid); ``seed`` makes the draw reproducible.

    Returns:
      ``(kid_mean, kid_std)``.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    size = min(subset_size, len(f1), len(f2))
    rng = np.random.default_rng(seed)
    values = np.empty(n_subsets)
    for s in range(n_subsets):
        a = f1[rng.choice(len(f1), size, replace=False)]
        b = f2[rng.choice(len(f2), size, replace=False)]
        values[s] = mmd2_unbiased(a, b)
    return float(values.mean()), float(values.std())


def l1_error(predicted: np.ndarray, target: np.ndarray) -> float:
    """Mean absolute error between paired images of equal shape (e.g. ``float[N, H, W, 3]`` in [-1, 1])."""
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    if predicted.shape != target.shape:
        raise ValueError(f"shape mismatch: {predicted.shape} vs {target.shape}")
    return float(np.abs(predicted - target).mean())


def downsampled_l1_error(predicted: np.ndarray, target: np.ndarray, factor: int = 4) -> float:
    """L1 after ``factor``x box downsampling of ``[N, H, W, C]`` images: forgives shifts of a pixel or two."""

    def down(x: np.ndarray) -> np.ndarray:
        n, h, w, c = x.shape
        h2, w2 = h // factor, w // factor
        x = np.asarray(x, np.float64)[:, : h2 * factor, : w2 * factor]
        return x.reshape(n, h2, factor, w2, factor, c).mean(axis=(2, 4))

    return l1_error(down(np.asarray(predicted)), down(np.asarray(target)))
