"""Pure statistics behind the mismatch severity measures: kernel MMD (KID), Frechet distance, bootstrap.

numpy only, so they are cheap to test against hand-derived numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(a, b) = (a . b / d + 1)^3 (Binkowski et al., 2018, "Demystifying MMD GANs").
    ``x``: (n, d), ``y``: (m, d) -> (n, m)."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the polynomial kernel (= KID) between samples ``x`` (n, d) and ``y`` (m, d).

    MMD^2_u = sum_{i!=j} k(x_i,x_j) / (n(n-1)) + sum_{i!=j} k(y_i,y_j) / (m(m-1)) - 2 mean k(x_i,y_j).
    Unbiased, so it can be slightly negative when the distributions match.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {n} and {m}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_x = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to ``x`` (n, d) and ``y`` (m, d) (as in FID, Heusel et al. 2017).

    FD = |mu_x - mu_y|^2 + Tr(S_x) + Tr(S_y) - 2 Tr((S_x S_y)^(1/2)); the last trace is computed as the
    sum of square roots of the eigenvalues of S_x^(1/2) S_y S_x^(1/2) (symmetric, so eigh is stable).
    Biased at small n: report it beside KID, not instead of it.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu_x, mu_y = x.mean(0), y.mean(0)
    s_x, s_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    vals, vecs = np.linalg.eigh(s_x)
    root_x = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    inner = np.linalg.eigvalsh(root_x @ s_y @ root_x)
    cross = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(s_x) + np.trace(s_y) - 2.0 * cross)


def bootstrap_interval(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                       resamples: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over rows of ``values`` (resampled with replacement)."""
    values = np.asarray(values)
    rng = np.random.default_rng(seed)
    n = len(values)
    stats = np.array([statistic(values[rng.integers(0, n, n)]) for _ in range(resamples)])
    alpha = (1.0 - ci) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def two_sample_bootstrap(x: np.ndarray, y: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float],
                         resamples: int = 200, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``statistic(x*, y*)`` with both samples resampled independently."""
    rng = np.random.default_rng(seed)
    stats = [statistic(x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))])
             for _ in range(resamples)]
    alpha = (1.0 - ci) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def kid_interval(x: np.ndarray, y: np.ndarray, resamples: int = 200, seed: int = 0,
                 ci: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of KID that stays unbiased under resampling.

    A resample with replacement repeats points; pairs of copies of one original point would add k(a, a)
    to the within-sample sums. Kernel matrices are computed once and such pairs are excluded.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    rng = np.random.default_rng(seed)

    def within(k: np.ndarray, idx: np.ndarray) -> float:
        mask = idx[:, None] != idx[None, :]
        return float(k[np.ix_(idx, idx)][mask].mean())

    stats = []
    for _ in range(resamples):
        ix, iy = rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))
        if len(np.unique(ix)) < 2 or len(np.unique(iy)) < 2:  # no distinct pair to compare: redraw
            continue
        stats.append(within(kxx, ix) + within(kyy, iy) - 2.0 * float(kxy[np.ix_(ix, iy)].mean()))
    alpha = (1.0 - ci) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def cluster_kernel_sums(x: np.ndarray, x_cells: np.ndarray, n_x: int, y: np.ndarray, y_cells: np.ndarray,
                        n_y: int) -> dict[str, np.ndarray]:
    """KID's kernel sums per pair of clusters, so a cluster bootstrap costs a few small products per resample.

    ``x`` (n, d) with cluster ids ``x_cells`` (n,) in [0, n_x); ``y`` (m, d) with ``y_cells`` in [0, n_y).
    Returns ``xx`` (n_x, n_x), ``yy`` (n_y, n_y), ``xy`` (n_x, n_y) block sums of the polynomial kernel,
    ``x_diag`` / ``y_diag`` (per cluster, the sum of k(a, a)) and ``x_count`` / ``y_count`` (images per cluster).
    """
    from scipy.sparse import csr_matrix

    def one_hot(cells: np.ndarray, n: int) -> Any:  # (images, clusters), sparse: sums cost O(images^2)
        cells = np.asarray(cells)
        return csr_matrix((np.ones(len(cells)), (np.arange(len(cells)), cells)), shape=(len(cells), n))

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ox, oy = one_hot(x_cells, n_x), one_hot(y_cells, n_y)

    def block(k: np.ndarray, a: Any, b: Any) -> np.ndarray:
        return np.asarray(a.T @ (b.T @ k.T).T)  # a^T k b, with k @ b taken as (b^T k^T)^T

    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return {"xx": block(kxx, ox, ox), "yy": block(kyy, oy, oy), "xy": block(kxy, ox, oy),
            "x_diag": ox.T @ np.diag(kxx), "y_diag": oy.T @ np.diag(kyy),
            "x_count": np.asarray(ox.sum(0)).ravel(), "y_count": np.asarray(oy.sum(0)).ravel()}


def weighted_kid(sums: dict[str, np.ndarray], wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """KID of resampled clusters: ``wx`` (R, n_x) and ``wy`` (R, n_y) say how often each cluster was drawn.

    Unbiased as in :func:`kid`: within a side, pairs of one image with itself or with a copy of itself (a
    cluster drawn twice) are left out, as :func:`kid_interval` does for single points; with every weight 1
    the value is :func:`kid` of the two samples. A side with fewer than two distinct images gives NaN.
    """
    wx, wy = np.atleast_2d(np.asarray(wx, dtype=np.float64)), np.atleast_2d(np.asarray(wy, dtype=np.float64))

    def within(block: np.ndarray, diag: np.ndarray, count: np.ndarray, w: np.ndarray) -> np.ndarray:
        total = np.einsum("ri,ij,rj->r", w, block, w) - (w ** 2) @ diag
        pairs = (w @ count) ** 2 - (w ** 2) @ count
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, total / np.where(pairs > 0, pairs, 1.0), np.nan)

    cross = np.einsum("ri,ij,rj->r", wx, sums["xy"], wy) / ((wx @ sums["x_count"]) * (wy @ sums["y_count"]))
    return (within(sums["xx"], sums["x_diag"], sums["x_count"], wx)
            + within(sums["yy"], sums["y_diag"], sums["y_count"], wy) - 2.0 * cross)
