"""Non-finite values: the training loops stop on a non-finite loss before it reaches the weights, and the 2D evaluation
counts non-finite samples as failures (finite_fraction) and as mass far outside the window, never as data."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gmflow.experiments.lfm.blocks import StudentTrainConfig, train_student
from gmflow.harness.data2d import get_dataset_2d
from gmflow.harness.metrics2d import WINDOW, metrics_2d
from gmflow.harness.train import LoopSettings, optimise


def _linear(seed: int) -> nn.Linear:
    net = nn.Linear(2, 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


SETTINGS = LoopSettings(steps=5, lr=1e-2, weight_decay=0.0, warmup_steps=1, ema_gamma=7.0, grad_clip=0.0,
                        checkpoint_every=100)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_optimise_stops_on_a_non_finite_loss_before_the_update(tmp_path, bad):
    """Truth: a loss that turns non-finite at step 3 raises FloatingPointError naming the step, after exactly three
    loss calls, and the weights are those of a run that stopped after two good steps (the bad loss is never
    back-propagated: the weights stay finite). No resumable state of the bad run is left behind."""
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    model = _linear(0)
    calls = []
    for d in ("bad", "good"):
        (tmp_path / d).mkdir()

    def step_loss(step, micro):
        calls.append(1)
        loss = model(x).square().mean()
        return loss * bad if len(calls) == 3 else loss

    with pytest.raises(FloatingPointError, match=r"non-finite loss (nan|inf|-inf) at step 3"):
        optimise(model, step_loss, SETTINGS, torch.Generator().manual_seed(2), tmp_path / "bad", desc="t",
                 progress=False)
    assert len(calls) == 3
    assert not (tmp_path / "bad" / "state.safetensors").exists()

    good = _linear(0)
    two = LoopSettings(**{**SETTINGS.__dict__, "steps": 2})
    optimise(good, lambda step, micro: good(x).square().mean(), two, torch.Generator().manual_seed(2),
             tmp_path / "good", desc="t", progress=False)
    for p, q in zip(model.parameters(), good.parameters(), strict=True):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=0, atol=0)


class _Velocity(nn.Module):
    """A tiny velocity net over timesteps, ``net(x, t)``."""

    def __init__(self):
        super().__init__()
        self.lin = _linear(3)

    def forward(self, x, t, y=None):
        return self.lin(x).expand_as(x)


def test_student_distillation_stops_on_a_non_finite_loss(tmp_path):
    """Truth: a teacher pair holding NaN makes the distillation loss non-finite: FloatingPointError naming the block,
    and no student file is written."""
    g = torch.Generator().manual_seed(4)
    x_noisy, x_data = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g)
    x_data[:, 0] = math.nan  # every row: the first batch already sees it
    cfg = StudentTrainConfig(steps=3, batch_size=8, warmup_steps=1)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 1 \(distillation of block 2\)"):
        train_student(_Velocity(), x_noisy, x_data, 2, cfg, tmp_path, progress=False)
    assert not (tmp_path / "student.safetensors").exists()


def _brute_radii(a: np.ndarray, k: int) -> np.ndarray:
    d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k]  # column 0 is the point itself


def _brute_coverage(ref: np.ndarray, radii: np.ndarray, query: np.ndarray) -> float:
    d = np.sqrt(((query[:, None] - ref[None]) ** 2).sum(-1))
    return float((d <= radii[None]).any(1).mean())


def test_metrics_2d_counts_non_finite_samples_as_failures():
    """Truth, for 240 checkerboard samples of which 40 are NaN or inf: finite_fraction = 200/240; the histogram TV
    is the TV of the finite samples' counts divided by ALL 240 (the 40 are mass outside the window), computed here
    with numpy; the support fraction counts only finite samples inside; precision is the brute-force k = 3 count of
    finite samples in the real manifold over 240, recall the brute-force count against the finite samples' manifold
    (the non-finite ones become one far cluster of radius 0)."""
    ds = get_dataset_2d("checkerboard")
    g = torch.Generator().manual_seed(5)
    finite = ds.sample(200, g).numpy().astype(np.float64) * 1.05  # slightly off the data law
    reference = ds.sample(240, g).numpy().astype(np.float64)  # as many as samples: the k-NN subsets are all points
    bad = np.zeros((40, 2))
    bad[:15, 0], bad[15:30, 1], bad[30:, 0] = np.nan, np.inf, -np.inf
    rows = np.random.default_rng(6).permutation(240)
    samples = np.concatenate([finite, bad])[rows]
    out = metrics_2d("checkerboard", samples, reference, knn_points=10_000, seed=0)
    n = 240
    assert out["finite_fraction"] == pytest.approx(200 / n, abs=1e-15)
    for bins in (200, 50):
        edges = np.linspace(*WINDOW, bins + 1)
        counts, _, _ = np.histogram2d(finite[:, 0], finite[:, 1], bins=[edges, edges])
        mass = ds.bin_mass(edges)
        p_hat = counts / n
        tv = 0.5 * (np.abs(p_hat - mass).sum() + (1 - p_hat.sum()) + (1 - mass.sum()))
        assert out[f"tv_hist{bins}"] == pytest.approx(tv, abs=1e-12)
    assert out["support_fraction"] == pytest.approx(ds.in_support(finite).sum() / n, abs=1e-15)
    precision = _brute_coverage(reference, _brute_radii(reference, 3), finite) * 200 / n
    recall = _brute_coverage(finite, _brute_radii(finite, 3), reference)
    assert out["precision"] == pytest.approx(precision, abs=1e-12)
    assert out["recall"] == pytest.approx(recall, abs=1e-12)
    assert 0.3 < out["precision"] < 200 / n and 0.3 < out["recall"] < 1  # neither extreme: the counts are informative
