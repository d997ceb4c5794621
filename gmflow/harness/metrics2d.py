"""Metrics of 2D samples against a dataset with an exact density (SPEC Part D).

Pure functions of arrays: the histogram total variation against exact bin masses, sliced Wasserstein-2, the fraction
of samples inside the support, and k-NN precision / recall (Kynkaanniemi et al. 2019) on coordinates.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def histogram_tv(x: np.ndarray, true_mass: np.ndarray, lo: float = -4.2, hi: float = 4.2) -> float:
    """Total variation between the empirical histogram of ``x (N, 2)`` and the exact bin masses on ``[lo, hi]^2``.

    Mass outside the window counts too: samples outside it and true mass outside it both add to the distance.
    """
    bins = true_mass.shape[0]
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=[[lo, hi], [lo, hi]])
    p_hat = counts / len(x)
    return 0.5 * (np.abs(p_hat - true_mass).sum() + (1 - p_hat.sum()) + (1 - true_mass.sum()))


def sliced_wasserstein2(x: np.ndarray, y: np.ndarray, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equally sized point sets: sqrt of the mean over random directions
    of the 1D W2^2 of the sorted projections."""
    if len(x) != len(y):
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(x.shape[1], num_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    px, py = np.sort(x @ theta, axis=0), np.sort(y @ theta, axis=0)
    return float(np.sqrt(((px - py) ** 2).mean()))


def knn_radii(a: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each point of ``a`` to its k-th nearest other point."""
    d, _ = NearestNeighbors(n_neighbors=k + 1).fit(a).kneighbors(a)
    return d[:, -1]


def manifold_coverage(ref: np.ndarray, ref_radii: np.ndarray, query: np.ndarray, chunk: int = 1024) -> float:
    """Fraction of ``query`` points within ``ref_radii[j]`` of some ``ref[j]`` (exact, by chunked distances)."""
    inside = np.empty(len(query), dtype=bool)
    for i in range(0, len(query), chunk):
        q = query[i : i + chunk]
        d2 = (q**2).sum(1)[:, None] - 2 * q @ ref.T + (ref**2).sum(1)[None]
        inside[i : i + chunk] = (d2 <= ref_radii[None] ** 2 + 1e-12).any(1)
    return float(inside.mean())


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision is the fraction of generated points inside
    the real k-NN manifold, recall the fraction of real points inside the generated one."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    precision = manifold_coverage(real, knn_radii(real, k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return precision, recall
