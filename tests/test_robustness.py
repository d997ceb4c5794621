"""Property tests: the GM algebra, the loss, guidance and the four GM solvers stay finite over the whole range a
network can produce: sigma in [0, 1] with both ends, K up to 64, log-std in [-20, 40], means up to 1e3.

The ratios of Gaussians (guidance, re-conditioning) are computed in forms that never multiply two variances, so a
log-std near 40 (variance ~ 5e34, a product ~ 3e69 > float32's 3.4e38) does not overflow; the same inputs in float64
give the reference values that the float32 results must match where those are well conditioned.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gmflow.gm import (
    GaussianMixture,
    IsoGaussian,
    gaussian_ratio,
    gaussian_ratio_natural,
    gm_mul_gaussian,
    gm_mul_natural,
    gm_recondition,
    gm_recondition_mean,
    u_to_x0,
)
from gmflow.guidance import guided_gm_prediction, probabilistic_guidance
from gmflow.loss import sample_transition_pair, transition_loss
from gmflow.solvers import gm_ode, gm_ode_2, gm_sde, gm_sde_2

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sigmas = st.one_of(st.sampled_from([0.0, 1.0, 1e-6, 1 - 1e-6]), st.floats(0.0, 1.0))
logstds = st.one_of(st.sampled_from([-20.0, 40.0]), st.floats(-20.0, 40.0))


@st.composite
def gms(draw, max_k: int = 64):
    """A GM over (B, C, H, W) = (2, 3, 2, 2) with K components, one log-std per sample, large means."""
    k = draw(st.integers(1, max_k))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1.0, 100.0, 1000.0]))
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(2, k, 3, 2, 2, generator=g) * scale
    logweights = torch.log_softmax(torch.randn(2, k, 1, 2, 2, generator=g) * 5, dim=1)
    logstds_ = torch.tensor([draw(logstds), draw(logstds)]).reshape(2, 1, 1, 1, 1)
    x = torch.randn(2, 3, 2, 2, generator=g) * scale
    return GaussianMixture(means, logweights, logstds_), x


def finite(*tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def gm_finite(gm: GaussianMixture) -> bool:
    return finite(gm.means, gm.logweights, gm.logstds)


@SETTINGS
@given(gms(), sigmas, sigmas)
def test_gm_algebra_is_finite(gm_x, s_src, s_tgt):
    gm_u, x = gm_x
    hi, lo = max(s_src, s_tgt), min(s_src, s_tgt)
    sig_hi, sig_lo = torch.full((2,), hi), torch.full((2,), lo)
    gm0 = u_to_x0(gm_u, x, sig_hi)
    assert gm_finite(gm0)
    assert gm_finite(gm_recondition(gm0, x, sig_hi, 0.5 * x, sig_lo))
    assert finite(gm_recondition_mean(gm0, x, sig_hi, 0.5 * x, sig_lo))
    assert finite(gm0.mean(), gm0.sample(torch.Generator().manual_seed(0)))


@SETTINGS
@given(gms(), st.floats(0.0, 0.99), st.floats(0.0, 1.0), sigmas)
def test_probabilistic_guidance_is_finite(gm_x, scale, orthogonal, sigma):
    gm_u, x = gm_x
    uncond = GaussianMixture(gm_u.means.flip(0), gm_u.logweights, gm_u.logstds)
    pred = guided_gm_prediction(gm_u, uncond, x, torch.full((2,), sigma), "probabilistic", scale, orthogonal)
    assert gm_finite(pred.gm)
    pred = guided_gm_prediction(gm_u, uncond, x, torch.full((2,), sigma), "cfg", 1 + 5 * scale, orthogonal)
    assert gm_finite(pred.gm)


@SETTINGS
@given(gms(), st.floats(0.05, 1.0), st.sampled_from([0.5, 0.9, 1.0]))
def test_transition_loss_is_finite(gm_x, sigma, trans_ratio):
    gm_u, x = gm_x
    g = torch.Generator().manual_seed(1)
    pair = sample_transition_pair(x / 1000, torch.full((2,), sigma), trans_ratio, torch.randn(x.shape, generator=g),
                                  torch.randn(x.shape, generator=g))
    assert finite(transition_loss(gm_u, pair))


@SETTINGS
@given(gms(max_k=16), st.sampled_from([gm_sde, gm_sde_2, gm_ode, gm_ode_2]), st.integers(1, 4),
       st.sampled_from(["none", "probabilistic"]))
def test_gm_solvers_are_finite(gm_x, solver, steps, guidance):
    """Every solver on a model whose GM (log-std up to 40, means up to 1e3) ignores its input, from sigma = 1 to 0."""
    gm_u, x = gm_x
    uncond = GaussianMixture(gm_u.means.flip(0), gm_u.logweights, gm_u.logstds)

    def model_fn(x_t, sigma):
        return guided_gm_prediction(gm_u, uncond, x_t, sigma, guidance, 0.3)

    kwargs = {"substeps": 2} if solver in (gm_ode, gm_ode_2) else {}
    out = solver(model_fn, x, torch.linspace(1, 0, steps + 1), generator=torch.Generator().manual_seed(0), **kwargs)
    assert finite(out)


@pytest.mark.parametrize("logstd", [-20.0, -5.0, 0.0, 20.0, 40.0])
def test_ratios_match_float64_at_extreme_log_std(logstd):
    """The overflow-safe forms equal the textbook forms evaluated in float64 (which does not overflow here):
    the GM times a Gaussian ratio in natural parameters vs the moment-form ratio and product, and the precision-form
    re-conditioning vs the same function in float64."""
    g = torch.Generator().manual_seed(0)
    v = math.exp(2 * logstd)
    v1, v2 = torch.full((2, 1, 1, 1), 0.4 * v), torch.full((2, 1, 1, 1), v)
    m1, m2 = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    gm = GaussianMixture(torch.randn(2, 4, 3, 2, 2, generator=g), torch.log_softmax(torch.randn(2, 4, 1, 2, 2), 1),
                         torch.full((2, 1, 1, 1, 1), logstd))
    out = gm_mul_natural(gm, *gaussian_ratio_natural(IsoGaussian(m1, v1), IsoGaussian(m2, v2)))
    d1, d2 = v1.double(), v2.double()
    ratio = IsoGaussian((d2 * m1.double() - d1 * m2.double()) / (d2 - d1), d1 * d2 / (d2 - d1))  # textbook
    gm64 = GaussianMixture(gm.means.double(), gm.logweights.double(), gm.logstds.double())
    s2, vr = gm64.var, ratio.var.unsqueeze(1)
    ref_means = (vr * gm64.means + s2 * ratio.mean.unsqueeze(1)) / (vr + s2)
    sq = (gm64.means - ratio.mean.unsqueeze(1)).square().sum(2, keepdim=True)
    ref_logits = gm64.logweights - sq / (2 * (vr + s2))
    assert gm_finite(out)
    torch.testing.assert_close(out.means.double(), ref_means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logweights.double(), torch.log_softmax(ref_logits, 1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logstds.double(), 0.5 * torch.log(s2 * vr / (vr + s2)), rtol=1e-5, atol=1e-5)
    if logstd >= 0:  # the moment form's denominator floor (1e-6) is inactive here
        r = gaussian_ratio(IsoGaussian(m1, v1), IsoGaussian(m2, v2))
        assert finite(r.mean, r.var)
        torch.testing.assert_close(r.var.double(), ratio.var, rtol=1e-5, atol=0)
        torch.testing.assert_close(r.mean.double(), ratio.mean, rtol=1e-4, atol=1e-4)

    x, sig_src, sig_tgt = torch.randn(2, 3, 2, 2, generator=g), torch.full((2,), 0.8), torch.full((2,), 1e-3)
    rec = gm_recondition(gm, x, sig_src, 0.9 * x, sig_tgt)
    ref = gm_recondition(gm64, x.double(), sig_src.double(), 0.9 * x.double(), sig_tgt.double())
    assert gm_finite(rec)
    torch.testing.assert_close(rec.means.double(), ref.means, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rec.logstds.double(), ref.logstds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gm_recondition_mean(gm, x, sig_src, 0.9 * x, sig_tgt).double(), ref.mean(),
                               rtol=1e-4, atol=1e-4)
    assert gm_finite(gm_mul_gaussian(gm, IsoGaussian(m1, v2)))


def test_probabilistic_guidance_at_log_std_40_is_finite():
    """The case that overflowed before: w~ = 0.5 at log-std 40 gave NaN through v1 * v2 in the Gaussian ratio."""
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture(torch.randn(2, 4, 3, 4, 4, generator=g) * 100,
                         torch.log_softmax(torch.randn(2, 4, 1, 4, 4, generator=g), 1),
                         torch.full((2, 1, 1, 1, 1), 40.0))
    pred = probabilistic_guidance(gm, torch.randn(2, 3, 4, 4, generator=g), 0.5)
    assert gm_finite(pred.gm)
