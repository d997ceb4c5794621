"""Time grids and training noise levels (gmflow/schedule.py, gmflow/harness/train.py: sample_sigma) against
independent characterisations: the time shift multiplies the noise-to-signal odds sigma / (1 - sigma) by S, the
sampling grid is the shifted uniform grid plus 0, sub-steps split each interval evenly, and the training levels have
the stated laws (Kolmogorov-Smirnov on seeded draws)."""

import numpy as np
import pytest
import torch
from scipy import stats

from gmflow.harness.losses import sample_sigma
from gmflow.schedule import shift_sigma, sigma_grid, subdivide

F64 = torch.float64


@pytest.mark.parametrize("shift", [0.5, 1.0, 3.0])
def test_shift_multiplies_the_noise_odds(shift):
    """Truth: a shift S maps sigma to sigma' with sigma' / (1 - sigma') = S sigma / (1 - sigma) (the time shift of the
    training and sampling recipes; S = 1 is the identity), keeping 0 and 1 fixed."""
    s = torch.linspace(0.01, 0.99, 99, dtype=F64)
    out = shift_sigma(s, shift)
    torch.testing.assert_close(out / (1 - out), shift * s / (1 - s), rtol=1e-12, atol=0)
    torch.testing.assert_close(shift_sigma(torch.tensor([0.0, 1.0], dtype=F64), shift),
                               torch.tensor([0.0, 1.0], dtype=F64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 1.0), (6, 3.0)])
def test_sigma_grid_is_the_shifted_uniform_grid_then_zero(steps, shift):
    """Truth: sigma_i = shift(1 - i/M) for i < M with odds scaled by S, then sigma_M = 0 (written out here)."""
    u = np.array([1 - i / steps for i in range(steps)])
    odds = shift * u / np.maximum(1 - u, 1e-300)
    expect = np.append(np.where(u == 1, 1.0, odds / (1 + odds)), 0.0)
    np.testing.assert_allclose(sigma_grid(steps, shift).numpy(), expect, rtol=1e-12, atol=1e-15)


def test_subdivide_splits_each_interval_evenly():
    """Truth: on any decreasing grid, sub-step j of interval i is sigma_i + (sigma_{i+1} - sigma_i) j / n, and the
    outer points sit at indices 0, n, 2n, ..."""
    grid = torch.tensor([1.0, 0.7, 0.55, 0.2, 0.0], dtype=F64)
    n = 3
    fine = subdivide(grid, n)
    expect = [float(grid[i] + (grid[i + 1] - grid[i]) * j / n) for i in range(4) for j in range(n)] + [0.0]
    np.testing.assert_allclose(fine.numpy(), expect, rtol=0, atol=1e-15)
    torch.testing.assert_close(fine[::n], grid, rtol=0, atol=0)


@pytest.mark.parametrize("kind,shift", [("uniform", 1.0), ("logit-normal", 1.0), ("logit-normal", 3.0)])
def test_training_noise_levels_have_the_stated_law(kind, shift):
    """Truth (KS test on 20k seeded draws, p > 1e-3): uniform gives sigma = 1 - U[0, 1); logit-normal gives
    logit(sigma) ~ N(0, 1), and a shift S moves it to N(log S, 1) (the odds are multiplied by S). All levels lie in
    [1e-4, 1]."""
    s = sample_sigma(20_000, kind, shift, torch.Generator().manual_seed(3)).double().numpy()
    assert s.min() >= 1e-4 and s.max() <= 1.0
    if kind == "uniform":
        p = stats.kstest(s, "uniform").pvalue
    else:
        p = stats.kstest(np.log(s / (1 - s)), "norm", args=(np.log(shift), 1.0)).pvalue
    assert p > 1e-3, p
