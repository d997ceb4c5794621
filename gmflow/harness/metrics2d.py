"""Metrics of 2D samples against a dataset with an exact density (docs/method.md, Sec. 8.4).

Pure functions of arrays: the histogram total variation against exact bin masses, sliced Wasserstein-2, the fraction
of samples inside the support, and k-NN precision / recall (Kynkaanniemi et al. 2019) on coordinates.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from gmflow.harness.data2d import get_dataset_2d


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


def manifold_membership(ref: np.ndarray, ref_radii: np.ndarray, query: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per ``query`` point (N,) bool: within ``ref_radii[j]`` of some ``ref[j]`` (exact, by chunked distances)."""
    inside = np.empty(len(query), dtype=bool)
    for i in range(0, len(query), chunk):
        q = query[i : i + chunk]
        d2 = (q**2).sum(1)[:, None] - 2 * q @ ref.T + (ref**2).sum(1)[None]
        inside[i : i + chunk] = (d2 <= ref_radii[None] ** 2 + 1e-12).any(1)
    return inside


def manifold_coverage(ref: np.ndarray, ref_radii: np.ndarray, query: np.ndarray, chunk: int = 1024) -> float:
    """Fraction of ``query`` points within ``ref_radii[j]`` of some ``ref[j]`` (exact, by chunked distances)."""
    return float(manifold_membership(ref, ref_radii, query, chunk).mean())


def knn_membership(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The indicators of improved precision and recall: ``fake`` (N,) inside the real k-NN manifold and ``real``
    (M,) inside the generated one, bool; precision and recall are their means."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    return manifold_membership(real, knn_radii(real, k), fake), manifold_membership(fake, knn_radii(fake, k), real)


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision is the fraction of generated points inside
    the real k-NN manifold, recall the fraction of real points inside the generated one."""
    fake_in, real_in = knn_membership(real, fake, k)
    return float(fake_in.mean()), float(real_in.mean())


WINDOW = (-4.2, 4.2)


def metrics_2d(dataset: str, samples: np.ndarray, reference: np.ndarray, knn_points: int = 10000,
               seed: int = 0) -> dict[str, float]:
    """All 2D metrics of ``samples (N, 2)``; ``reference`` is an independent exact sample of the data."""
    ds = get_dataset_2d(dataset)
    x = samples.reshape(len(samples), -1).astype(np.float64)
    finite = np.isfinite(x).all(1)
    out = {"finite_fraction": float(finite.mean())}
    x = np.where(finite[:, None], x, 1e6)  # a non-finite sample counts as far outside
    for bins in (200, 50):
        edges = np.linspace(*WINDOW, bins + 1)
        out[f"tv_hist{bins}"] = float(histogram_tv(x, ds.bin_mass(edges), *WINDOW))
    out["sliced_w2"] = sliced_wasserstein2(x, reference, seed=seed)
    out["support_fraction"] = float(ds.in_support(x).mean())
    n = min(knn_points, len(x), len(reference))
    rng = np.random.default_rng(seed)
    xi, ri = rng.choice(len(x), n, replace=False), rng.choice(len(reference), n, replace=False)
    out["precision"], out["recall"] = knn_precision_recall(reference[ri], x[xi], k=3)
    return out


def metric_rows_2d(samples: np.ndarray, record: dict, reference: np.ndarray, knn_points: int):
    """Long-format rows (:data:`gmflow.harness.tables.COLUMNS_2D`) of every 2D metric of a sample set; the features
    are the coordinates."""
    from gmflow.harness.tables import COLUMNS_2D, metric_rows

    metrics = metrics_2d(record["dataset"], samples, reference, knn_points, seed=record["seed"])
    return metric_rows(record, metrics, COLUMNS_2D, "coords")
