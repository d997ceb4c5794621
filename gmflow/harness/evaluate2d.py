"""Evaluation of 2D sample sets: metrics against the exact density, as long-format rows."""

from __future__ import annotations

import numpy as np

from gmflow.harness.data2d import get_dataset_2d
from gmflow.harness.metrics2d import histogram_tv, knn_precision_recall, sliced_wasserstein2

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
