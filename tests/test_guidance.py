"""Probabilistic guidance and GM CFG (gmflow/guidance.py) against independent computations: the bias formula
recomputed in numpy, the closed-form K = 1 case, and the renormalised product G_c N_tgt / N(m_c, v_c) on a fine grid.
docs/method.md, Sec. 1.4, 4.6 and 4.7."""

import numpy as np
import pytest
import torch
from oracles import (
    F64,
    gm_component_logpdfs,
    gm_logpdf,
    grid_1d,
    grid_2d,
    grid_moments,
    iso_logpdf,
    normalise_on_grid,
    np64,
    pixel_gm,
    probabilistic_guidance_np,
    random_gm,
    seeded,
)
from scipy.special import logsumexp

from gmflow.gm import GaussianMixture
from gmflow.guidance import gm_cfg, guided_gm_prediction, probabilistic_guidance

SHAPES = [(2, ()), (3, (4, 4))]


_gen = seeded


def _random_gm(b, k, c, spatial, spread=1.5, logstd=-0.7, seed=0) -> GaussianMixture:
    return random_gm(b, k, c, spatial, spread, logstd, seed, offset=0.5)


def _reference_guidance(gm: GaussianMixture, m_u: torch.Tensor, w: float, o: float):
    """docs/method.md, Sec. 4.6 recomputed in numpy per sample: m_c, pixel-averaged v_c, projected Delta, bias b."""
    means = np64(gm.means)  # (B, K, C, *S)
    wts = np.exp(np64(gm.logweights))
    var = np.exp(2 * np64(gm.logstds))
    out = []
    for b in range(means.shape[0]):
        m_c = (wts[b] * means[b]).sum(0)  # (C, *S)
        spread = (wts[b] * (means[b] - m_c) ** 2).sum(0).mean(0)  # (*S): (1/C) sum_k A_k ||mu_k - m||^2
        v_c = float(np.mean(spread + var[b].reshape(-1)[0]))
        delta = m_c - np64(m_u[b])
        delta = delta - o * np.mean(delta * m_c) / max(np.mean(m_c * m_c), 1e-6) * m_c
        bias = w * np.sqrt(v_c / max(np.mean(delta**2), 1e-6)) * delta
        out.append((m_c, v_c, bias))
    return out


@pytest.mark.parametrize("c,spatial", SHAPES)
@pytest.mark.parametrize("w", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("o", [0.0, 1.0])
def test_bias_rms_target_and_orthogonality(c, spatial, w, o):
    """Truth: the guidance formulas recomputed in numpy: RMS(b) = w sqrt(v_c) with v_c the pixel-averaged surrogate
    variance; target N(m_c + b, (1 - w^2) v_c), so its second moment around m_c is v_c; with o = 1 the bias is
    orthogonal to m_c (mean of the elementwise product 0), with o = 0 it is parallel to m_c - m_u."""
    gm = _random_gm(3, 4, c, spatial, seed=1)
    m_u = torch.randn(3, c, *spatial, generator=_gen(2), dtype=F64)
    pred = probabilistic_guidance(gm, m_u, w, orthogonal=o)
    ref = _reference_guidance(gm, m_u, w, o)
    for b, (m_c, v_c, bias) in enumerate(ref):
        pb = np64(pred.bias[b])
        np.testing.assert_allclose(np.sqrt(np.mean(pb**2)), w * np.sqrt(v_c), rtol=1e-12)
        np.testing.assert_allclose(pb, bias, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np64(pred.base_gaussian.mean[b]), m_c, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pred.base_gaussian.var[b].item(), v_c, rtol=1e-12)
        np.testing.assert_allclose(np64(pred.target.mean[b]), m_c + bias, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(pred.target.var[b].item(), (1 - w**2) * v_c, rtol=1e-12)
        second_moment = pred.target.var[b].item() + np.mean(pb**2)
        np.testing.assert_allclose(second_moment, v_c, rtol=1e-12)
        cos = np.sum(pb * m_c) / np.sqrt(np.sum(pb**2) * np.sum(m_c**2))
        if o == 1.0:
            assert abs(cos) < 1e-10
        else:
            d = m_c - np64(m_u[b])
            cos_d = np.sum(pb * d) / np.sqrt(np.sum(pb**2) * np.sum(d**2))
            np.testing.assert_allclose(cos_d, 1.0, rtol=1e-12)


@pytest.mark.parametrize("c,spatial", SHAPES)
@pytest.mark.parametrize("w", [0.2, 0.75])
def test_single_gaussian_guidance_equals_the_target(c, spatial, w):
    """Truth: for K = 1, G_c = N(m_c, v_c) and N(m_c, v_c) N_tgt / N(m_c, v_c) = N_tgt exactly, so the guided GM must
    be N(m_c + b, (1 - w^2) v_c) (closed form), with total second moment v_c around m_c."""
    g = _gen(3)
    b = 3
    means = torch.randn(b, 1, c, *spatial, generator=g, dtype=F64)
    logstds = torch.tensor([-1.0, -0.3, 0.2], dtype=F64).reshape(b, 1, 1, *([1] * len(spatial)))
    gm = GaussianMixture(means, torch.zeros(b, 1, 1, *spatial, dtype=F64), logstds)
    m_u = torch.randn(b, c, *spatial, generator=g, dtype=F64)
    pred = probabilistic_guidance(gm, m_u, w)
    v_c = torch.exp(2 * logstds).reshape(b)
    torch.testing.assert_close(pred.gm.means[:, 0], means[:, 0] + pred.bias, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pred.gm.var.reshape(b), (1 - w**2) * v_c, rtol=1e-10, atol=0)
    second = (pred.gm.means[:, 0] - means[:, 0]).square().mean(dim=tuple(range(1, 2 + len(spatial))))
    torch.testing.assert_close(second + pred.gm.var.reshape(b), v_c, rtol=1e-10, atol=0)


@pytest.mark.parametrize("c,o", [(1, 0.0), (2, 1.0)])
@pytest.mark.parametrize("w", [0.3, 0.8])
def test_guided_gm_equals_grid_product(c, o, w):
    """Truth: the renormalised product G_c(x) N(x; m_c + b, (1 - w^2) v_c) / N(x; m_c, v_c) evaluated on a fine 1D/2D
    grid (b, m_c, v_c from the numpy reference), compared in density, mean and per-component weights.
    (In 1D the orthogonal projection would zero Delta, so o = 0 there.)"""
    gm = _random_gm(2, 3, c, (), seed=4)
    m_u = torch.randn(2, c, generator=_gen(5), dtype=F64)
    pred = probabilistic_guidance(gm, m_u, w, orthogonal=o)
    pts, cell = grid_1d(-12, 12, 24_001) if c == 1 else grid_2d(-8, 8, 641)
    for b, (m_c, v_c, bias) in enumerate(_reference_guidance(gm, m_u, w, o)):
        means, wts, std = pixel_gm(gm, b)
        mask = iso_logpdf(pts, m_c + bias, (1 - w**2) * v_c) - iso_logpdf(pts, m_c, v_c)
        comp = gm_component_logpdfs(pts, means, wts, std) + mask[:, None]
        logp, _ = normalise_on_grid(logsumexp(comp, axis=1), cell)
        om, ow, ostd = pixel_gm(pred.gm, b)
        np.testing.assert_allclose(np.exp(gm_logpdf(pts, om, ow, ostd)), np.exp(logp), atol=1e-8 * np.exp(logp).max())
        mean, _ = grid_moments(pts, logp, cell)
        np.testing.assert_allclose(np64(pred.gm.mean()[b]), mean, atol=1e-8)
        mass = logsumexp(comp, axis=0)
        np.testing.assert_allclose(ow, np.exp(mass - logsumexp(mass)), atol=1e-9)


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_scale_zero_returns_the_conditional_gm(c, spatial):
    """Truth: w = 0 means no guidance: the GM is the conditional one, the bias is 0 and the target is N(m_c, v_c)."""
    gm = _random_gm(2, 3, c, spatial, seed=6)
    m_u = torch.randn(2, c, *spatial, generator=_gen(7), dtype=F64)
    pred = probabilistic_guidance(gm, m_u, 0.0)
    for name in ("means", "logweights", "logstds"):
        torch.testing.assert_close(getattr(pred.gm, name), getattr(gm, name), rtol=0, atol=0)
    assert float(pred.bias.abs().max()) == 0.0
    torch.testing.assert_close(pred.target.var, pred.base_gaussian.var)


@pytest.mark.parametrize("c,spatial", SHAPES)
@pytest.mark.parametrize("w", [1.0, 2.5])
def test_gm_cfg_shifts_every_mean_by_scaled_difference(c, spatial, w):
    """Truth: vanilla CFG on a GM moves each component by (w - 1)(m_c - m_u) (m_c = sum_k A_k mu_k computed here),
    keeps weights and variance, and so moves the mean by the same amount; with o = 1 the shift is orthogonal to m_c."""
    gm = _random_gm(2, 3, c, spatial, seed=8)
    m_u = torch.randn(2, c, *spatial, generator=_gen(9), dtype=F64)
    m_c = (torch.softmax(gm.logweights, 1) * gm.means).sum(1)
    pred = gm_cfg(gm, m_u, w)  # a GaussianMixture in the space of its inputs
    shift = (w - 1) * (m_c - m_u)
    torch.testing.assert_close(pred.means, gm.means + shift.unsqueeze(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pred.logweights, gm.logweights, rtol=0, atol=0)
    torch.testing.assert_close(pred.logstds, gm.logstds, rtol=0, atol=0)
    torch.testing.assert_close(pred.mean(), m_c + shift, rtol=1e-12, atol=1e-12)
    if w != 1.0:
        ortho = gm_cfg(gm, m_u, w, orthogonal=1.0)
        s = ortho.mean() - m_c
        inner = (s * m_c).flatten(1).mean(1)
        assert float(inner.abs().max()) < 1e-10 * float(s.abs().max() * m_c.abs().max())
        assert float(s.abs().max()) > 1e-3


def test_guided_prediction_converts_to_x0_space_first():
    """Truth: guidance acts on x0-space GMs (docs/method.md, Sec. 4.6). Built here in numpy: the x0-space GMs by
    x0 = x_t - sigma u (means x_t - sigma mu_k, std sigma s), the unconditional x0 mean, and the guided GM of
    oracles.probabilistic_guidance_np. The same guidance applied to the velocity GMs gives a clearly different
    bias, so a prediction guided before the conversion cannot pass."""
    w = 0.4
    gm_c, gm_u = _random_gm(2, 3, 3, (4, 4), seed=11), _random_gm(2, 3, 3, (4, 4), seed=12)
    x_t = torch.randn(2, 3, 4, 4, generator=_gen(10), dtype=F64)
    sigma = torch.tensor([0.7, 0.2], dtype=F64)
    pred = guided_gm_prediction(gm_c, gm_u, x_t, sigma, mode="probabilistic", scale=w)
    for b in range(2):
        s, x = sigma[b].item(), np64(x_t[b])
        std_u = float(np.exp(np64(gm_c.logstds[b]).reshape(-1)[0]))
        mean_u = (np.exp(np64(gm_u.logweights[b])) * np64(gm_u.means[b])).sum(0)  # velocity means
        ref = probabilistic_guidance_np(x - s * np64(gm_c.means[b]), np64(gm_c.logweights[b]), s * std_u,
                                        x - s * mean_u, w)  # fmt: skip
        np.testing.assert_allclose(np64(pred.bias[b]), ref["bias"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(np64(pred.gm.means[b]), ref["means"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(np.exp(np64(pred.gm.logweights[b])), ref["weights"], rtol=0, atol=2e-5)
        np.testing.assert_allclose(np.exp(2 * np64(pred.gm.logstds[b])).reshape(-1)[0], ref["var"], rtol=2e-5)
        in_u = probabilistic_guidance_np(np64(gm_c.means[b]), np64(gm_c.logweights[b]), std_u, mean_u, w)
        assert np.abs(in_u["bias"] - ref["bias"]).max() > 0.1


@pytest.mark.parametrize("w", [-0.1, 1.0, 1.5])
def test_probabilistic_scale_out_of_range_is_refused(w):
    """Truth: w~ must be in [0, 1) (the target variance (1 - w~^2) v_c must be positive)."""
    gm = _random_gm(1, 2, 2, ())
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        probabilistic_guidance(gm, torch.zeros(1, 2, dtype=F64), w)
