"""Vanilla CFG on GMs (ablation A3 of Table 4) in the convention of the official sampler: the velocity-space means
move by (w - 1) D_perp, D = m_c - m_u of the velocity GMs, projected against the conditional velocity mean, and only
then is the GM converted to x0 space. Truth: the whole computation written out here in float64."""

from __future__ import annotations

import pytest
import torch

from gmflow.gm import GaussianMixture
from gmflow.guidance import guided_gm_prediction

F64 = torch.float64


def _gm(b: int, k: int, c: int, spatial: tuple[int, ...], seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    ones = (1,) * len(spatial)
    return GaussianMixture(
        means=torch.randn(b, k, c, *spatial, generator=g, dtype=F64) + 1.0,
        logweights=torch.log_softmax(torch.randn(b, k, 1, *spatial, generator=g, dtype=F64), 1),
        logstds=torch.randn(b, 1, 1, *ones, generator=g, dtype=F64) * 0.3 - 0.5,
    )


def _reference(gm_c: GaussianMixture, gm_u: GaussianMixture, x_t, sigma, w: float, o: float):
    """x0-space means and log-std of the guided GM, computed independently (float64)."""
    def mean(gm):
        return (torch.softmax(gm.logweights, 1) * gm.means).sum(1)

    m_c, m_u = mean(gm_c), mean(gm_u)
    d = m_c - m_u
    dims = tuple(range(1, d.dim()))
    coef = (d * m_c).mean(dims, keepdim=True) / (m_c * m_c).mean(dims, keepdim=True)
    d_perp = d - o * coef * m_c
    means_u = gm_c.means + (w - 1) * d_perp.unsqueeze(1)
    s = sigma.view(-1, *([1] * (means_u.dim() - 1)))
    return x_t.unsqueeze(1) - s * means_u, gm_c.logstds + torch.log(s)


@pytest.mark.parametrize("spatial", [(), (3, 3)])
@pytest.mark.parametrize("w,o", [(2.0, 0.0), (2.0, 1.0), (3.5, 0.5)])
def test_gm_cfg_shifts_velocity_means_projected_on_the_conditional_velocity(spatial, w, o):
    gm_c, gm_u = _gm(2, 3, 2, spatial, seed=1), _gm(2, 3, 2, spatial, seed=2)
    x_t = torch.randn(2, 2, *spatial, generator=torch.Generator().manual_seed(3), dtype=F64)
    sigma = torch.tensor([0.7, 0.3], dtype=F64)
    pred = guided_gm_prediction(gm_c, gm_u, x_t.float(), sigma.float(), mode="cfg", scale=w, orthogonal=o)
    means, logstds = _reference(gm_c, gm_u, x_t, sigma, w, o)
    torch.testing.assert_close(pred.gm.means.double(), means, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.gm.logstds.double(), logstds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.gm.logweights.double(), gm_c.logweights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("o", [0.0, 1.0])
def test_gm_cfg_at_scale_one_is_the_conditional_gm(o):
    gm_c, gm_u = _gm(2, 4, 3, (2, 2), seed=4), _gm(2, 4, 3, (2, 2), seed=5)
    x_t = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(6))
    sigma = torch.tensor([0.9, 0.4])
    guided = guided_gm_prediction(gm_c, gm_u, x_t, sigma, mode="cfg", scale=1.0, orthogonal=o)
    plain = guided_gm_prediction(gm_c, None, x_t, sigma, mode="none")
    torch.testing.assert_close(guided.gm.means, plain.gm.means, rtol=0, atol=0)


def test_gm_cfg_axis_is_the_velocity_mean_not_the_x0_mean():
    """The two axes give different guided means when x_t is far from the origin: the test above would not tell a
    projection against the x0 mean from one against the velocity mean if both were parallel."""
    gm_c, gm_u = _gm(1, 2, 2, (), seed=7), _gm(1, 2, 2, (), seed=8)
    x_t, sigma = torch.tensor([[5.0, -3.0]], dtype=F64), torch.tensor([0.5], dtype=F64)
    pred = guided_gm_prediction(gm_c, gm_u, x_t.float(), sigma.float(), mode="cfg", scale=3.0, orthogonal=1.0)
    means_u_axis, _ = _reference(gm_c, gm_u, x_t, sigma, 3.0, 1.0)
    torch.testing.assert_close(pred.gm.means.double(), means_u_axis, rtol=1e-5, atol=1e-5)
    # the x0-axis alternative, for contrast
    m_c_x0 = x_t - 0.5 * (torch.softmax(gm_c.logweights, 1) * gm_c.means).sum(1)
    m_u_x0 = x_t - 0.5 * (torch.softmax(gm_u.logweights, 1) * gm_u.means).sum(1)
    d = m_c_x0 - m_u_x0
    d_perp = d - (d * m_c_x0).mean() / (m_c_x0 * m_c_x0).mean() * m_c_x0
    means_x0_axis = x_t.unsqueeze(1) - 0.5 * gm_c.means + 2.0 * d_perp.unsqueeze(1)
    assert float((means_x0_axis - means_u_axis).abs().max()) > 1e-2
