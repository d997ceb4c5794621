"""2D metrics against independent truth: exact bin masses, closed-form Wasserstein distances, known supports."""

import numpy as np
import pytest
import torch

from gmflow.harness.data2d import DATASETS_2D
from gmflow.harness.metrics2d import histogram_tv, knn_precision_recall, sliced_wasserstein2


@pytest.mark.parametrize("name", sorted(DATASETS_2D))
def test_bin_mass_matches_monte_carlo(name):
    """Exact bin masses agree with the frequencies of 400k exact samples (coarse 8x8 grid, 5 standard errors)."""
    ds = DATASETS_2D[name]
    edges = np.linspace(-4.2, 4.2, 9)
    mass = ds.bin_mass(edges)
    x = ds.sample(400_000, torch.Generator().manual_seed(0)).numpy()
    freq, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    freq /= len(x)
    se = np.sqrt(mass * (1 - mass) / len(x)) + 1e-9
    assert np.all(np.abs(freq - mass) <= 5 * se + 1e-6)


def test_checkerboard_support_and_density():
    ds = DATASETS_2D["checkerboard"]
    x = ds.sample(10000, torch.Generator().manual_seed(1)).numpy()
    assert ds.in_support(x).all()
    assert not ds.in_support(np.array([[-3.0, -1.0], [5.0, 0.0]])).any()  # square (0, 1) is empty
    assert ds.bin_mass(np.linspace(-4, 4, 2)).sum() == pytest.approx(1.0)


def test_histogram_tv_extremes():
    """TV is 0 for a histogram equal to the masses and 1 for samples all outside the window."""
    ds = DATASETS_2D["checkerboard"]
    edges = np.linspace(-4.2, 4.2, 43)
    mass = ds.bin_mass(edges)
    centres = 0.5 * (edges[:-1] + edges[1:])
    gx, gy = np.meshgrid(centres, centres, indexing="ij")
    counts = np.round(mass * 1e6).astype(int)
    x = np.repeat(np.stack([gx.ravel(), gy.ravel()], 1), counts.ravel(), axis=0)
    assert histogram_tv(x, mass) < 1e-4
    assert histogram_tv(np.full((10, 2), 9.0), mass) == pytest.approx(1.0)


def test_sliced_w2_of_a_shift():
    """For a translation by d, every 1D projection is shifted by <d, theta>: SW2^2 = E[<d, theta>^2] = |d|^2 / 2."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    d = np.array([0.6, -0.8])
    sw = sliced_wasserstein2(x, x + d, num_projections=4000)
    assert sw == pytest.approx(np.linalg.norm(d) / np.sqrt(2), rel=0.03)


def test_precision_recall_separate_sets():
    """Identical distributions give high precision and recall; disjoint ones give zero."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3000, 2)), rng.normal(size=(3000, 2))
    p, r = knn_precision_recall(a, b)
    assert p > 0.9 and r > 0.9
    p, r = knn_precision_recall(a, b + 100)
    assert p == 0 and r == 0
    p, r = knn_precision_recall(a, 0.05 * b)  # collapsed samples: precise but no recall
    assert p > 0.5 and r < 0.1
