"""GM algebra (gmflow/gm.py) against brute force in float64: explicit sums of component densities, Riemann sums on
fine 1D/2D grids, pointwise identities, Monte Carlo with tolerances from the standard error, and the exact posterior
of Gaussian-mixture data (tests/oracles.py). docs/method.md, Sec. 1, 4.4 and 4.6."""

import numpy as np
import pytest
import torch
from oracles import (
    F64,
    GMData,
    gm_component_logpdfs,
    gm_logpdf,
    grid_1d,
    grid_2d,
    grid_moments,
    iso_logpdf,
    normalise_on_grid,
    np64,
    pixel_gm,
    random_gm,
    ring_gm_data,
    seeded,
)
from scipy.special import logsumexp

from gmflow.gm import GaussianMixture, IsoGaussian, gaussian_ratio, gm_mul_gaussian, gm_recondition, u_to_x0

SHAPES = [(2, ()), (3, (4, 4))]


_gen = seeded


def _random_gm(b, k, c, spatial, spread=2.0, logstd=-0.5, dtype=F64, seed=0) -> GaussianMixture:
    """A random GM whose log-std differs per sample (logstd +- 0.3)."""
    return random_gm(b, k, c, spatial, spread, logstd, seed).to(dtype)


def _pixels(spatial):
    return list(np.ndindex(*spatial)) if spatial else [()]


def _within(actual, expected, tol):
    """Elementwise |actual - expected| <= tol (tol may be an array, e.g. per-entry standard errors)."""
    err = np.abs(np.asarray(actual) - np.asarray(expected))
    assert np.all(err <= tol), f"max excess {np.max(err - tol):.3g}; errors {err}, tolerances {tol}"


def _px(x: torch.Tensor, b: int, pix) -> np.ndarray:
    """Channel vector(s) of sample b at pixel pix from a (B, C, *S) or (N, B, C, *S) tensor, as numpy (..., C)."""
    return np64(x[(..., b, slice(None), *pix)])


# ---------------------------------------------------------------------------------------------------------------------
# Densities and moments
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_log_prob_matches_explicit_sum_of_component_densities(c, spatial):
    """Truth: log of the explicit float64 sum over k of A_k N(x; mu_k, s^2 I), pixel by pixel."""
    gm = _random_gm(3, 4, c, spatial)
    x = 2 * torch.randn(3, c, *spatial, generator=_gen(1), dtype=F64)
    lp = gm.log_prob(x)
    assert lp.shape == (3, *spatial)
    for b in range(3):
        for pix in _pixels(spatial):
            means, w, std = pixel_gm(gm, b, pix)
            np.testing.assert_allclose(lp[(b, *pix)].item(), gm_logpdf(_px(x, b, pix), means, w, std), rtol=1e-12)


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_mean_and_iso_gaussian_match_direct_moments(c, spatial):
    """Truth: per-pixel mean sum_k A_k mu_k and the channel-averaged total variance (law of total variance)
    (1/C) sum_k A_k ||mu_k - m||^2 + s^2, computed directly in numpy."""
    gm = _random_gm(2, 5, c, spatial)
    g = gm.iso_gaussian()
    assert gm.mean().shape == (2, c, *spatial)
    assert g.mean.shape == (2, c, *spatial) and g.var.shape == (2, 1, *spatial)
    for b in range(2):
        for pix in _pixels(spatial):
            means, w, std = pixel_gm(gm, b, pix)
            m = w @ means
            v = (w * ((means - m) ** 2).sum(1)).sum() / c + std**2
            np.testing.assert_allclose(_px(gm.mean(), b, pix), m, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(_px(g.mean, b, pix), m, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(g.var[(b, 0, *pix)].item(), v, rtol=1e-12)


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_iso_gaussian_log_prob_matches_explicit_density(c, spatial):
    """Truth: log N(x; m, v I) written out in numpy, per pixel, with a per-pixel variance."""
    g = _gen(30)
    m, x = torch.randn(2, 2, c, *spatial, generator=g, dtype=F64)
    v = 0.2 + torch.rand(2, 1, *spatial, generator=g, dtype=F64)
    lp = IsoGaussian(m, v).log_prob(x)
    assert lp.shape == (2, *spatial)
    for b in range(2):
        for pix in _pixels(spatial):
            expect = iso_logpdf(_px(x, b, pix), _px(m, b, pix), v[(b, 0, *pix)].item())
            np.testing.assert_allclose(lp[(b, *pix)].item(), expect, rtol=1e-12)


def test_iso_gaussian_matches_monte_carlo_of_an_independent_sampler():
    """Truth: mean and channel-averaged variance of 400k draws made by numpy (component by weight, plus noise);
    tolerance 5 standard errors estimated from the draws."""
    gm = _random_gm(2, 4, 3, ())
    g = gm.iso_gaussian()
    rng = np.random.default_rng(0)
    n = 400_000
    for b in range(2):
        means, w, std = pixel_gm(gm, b)
        k = rng.choice(len(w), size=n, p=w)
        x = means[k] + std * rng.standard_normal((n, 3))
        m_mc = x.mean(0)
        np.testing.assert_allclose(np64(g.mean[b]), m_mc, atol=5 * x.std(0).max() / np.sqrt(n))
        d2 = ((x - np64(g.mean[b])) ** 2).mean(1)
        assert abs(d2.mean() - g.var[b, 0].item()) < 5 * d2.std() / np.sqrt(n)


@pytest.mark.parametrize("c,spatial", SHAPES)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_sample_moments_and_component_frequencies(c, spatial, dtype):
    """Truth: for a GM with well-separated components (gaps >> s) the nearest component mean identifies the drawn
    component; its frequency must match A_k within 5 binomial standard errors, and per-pixel means/variances must
    match the direct moments within 5 standard errors."""
    n = 40_000
    base = _random_gm(1, 3, c, spatial, spread=10.0, logstd=-3.5, seed=3)
    gm = GaussianMixture(
        base.means.expand(n, *base.means.shape[1:]),
        base.logweights.expand(n, *base.logweights.shape[1:]),
        base.logstds.expand(n, *base.logstds.shape[1:]),
    ).to(dtype)
    x = gm.sample(_gen(4))
    assert x.shape == (n, c, *spatial) and x.dtype == dtype and torch.isfinite(x).all()
    for pix in _pixels(spatial):
        means, w, std = pixel_gm(base, 0, pix)
        assert np.min([np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i)]) > 12 * std
        xp = np64(x[(slice(None), slice(None), *pix)])  # (n, C)
        k = np.argmin(((xp[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        freq = np.bincount(k, minlength=3) / n
        _within(freq, w, 5 * np.sqrt(w * (1 - w) / n) + 1e-12)
        m = w @ means
        cov_tot = (w[:, None] * (means - m) ** 2).sum(0) + std**2  # per-channel variance
        _within(xp.mean(0), m, 5 * np.sqrt(cov_tot / n) + 1e-5)
        # within-component spread: residual to the chosen mean has variance s^2 per channel
        r = xp - means[k]
        np.testing.assert_allclose((r**2).mean(), std**2, rtol=5 * np.sqrt(2 / (n * c)))


# ---------------------------------------------------------------------------------------------------------------------
# Change of variables, ratio, product, re-conditioning
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_u_to_x0_is_a_change_of_variables(c, spatial):
    """Truth: x0 = x_t - sigma u, so log q_x0(x0) = log q_u((x_t - x0)/sigma) - C log sigma per pixel (brute-force
    densities), and the mean maps the same way."""
    gm_u = _random_gm(3, 4, c, spatial)
    x_t = torch.randn(3, c, *spatial, generator=_gen(5), dtype=F64)
    sigma = torch.tensor([0.9, 0.35, 0.02], dtype=F64)
    gm_x = u_to_x0(gm_u, x_t, sigma)
    x0 = torch.randn(3, c, *spatial, generator=_gen(6), dtype=F64)
    sb = sigma.reshape(3, *([1] * (1 + len(spatial))))
    u = (x_t - x0) / sb
    torch.testing.assert_close(gm_x.mean(), x_t - sb * gm_u.mean(), rtol=1e-12, atol=1e-12)
    for b in range(3):
        for pix in _pixels(spatial):
            mx, wx, sx = pixel_gm(gm_x, b, pix)
            mu, wu, su = pixel_gm(gm_u, b, pix)
            lhs = gm_logpdf(_px(x0, b, pix), mx, wx, sx)
            rhs = gm_logpdf(_px(u, b, pix), mu, wu, su) - c * np.log(sigma[b].item())
            np.testing.assert_allclose(lhs, rhs, rtol=1e-10)


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_gaussian_ratio_is_proportional_to_pointwise_ratio(c, spatial):
    """Truth: N(x; m1, v1) / N(x; m2, v2) (v1 < v2) divided by the returned Gaussian's density is the same constant at
    every x (checked pointwise in float64 at 6 points, per pixel variances)."""
    g = _gen(7)
    b = 2
    m1, m2 = torch.randn(2, b, c, *spatial, generator=g, dtype=F64)
    v2 = 0.5 + torch.rand(b, 1, *spatial, generator=g, dtype=F64)
    v1 = v2 * (0.2 + 0.6 * torch.rand(b, 1, *spatial, generator=g, dtype=F64))
    r = gaussian_ratio(IsoGaussian(m1, v1), IsoGaussian(m2, v2))
    xs = 3 * torch.randn(6, b, c, *spatial, generator=g, dtype=F64)
    for bi in range(b):
        for pix in _pixels(spatial):
            x = _px(xs, bi, pix)  # (6, C)
            var1, var2, var_r = (v[(bi, 0, *pix)].item() for v in (v1, v2, r.var))
            diff = (
                iso_logpdf(x, _px(m1, bi, pix), var1)
                - iso_logpdf(x, _px(m2, bi, pix), var2)
                - iso_logpdf(x, _px(r.mean, bi, pix), var_r)
            )
            assert np.ptp(diff) < 1e-9 * (1 + np.abs(diff).max())


def _grid_product_check(gm: GaussianMixture, log_factor, out: GaussianMixture, c: int, b: int):
    """Compare ``out`` with the normalised pointwise product gm(x) * exp(log_factor(x)) on a fine grid: density,
    mean, and per-component weights, means and variances (the product of component k with the factor, normalised)."""
    pts, cell = grid_1d(-14, 14, 28_001) if c == 1 else grid_2d(-9, 9, 721)
    means, w, std = pixel_gm(gm, b)
    comp = gm_component_logpdfs(pts, means, w, std) + log_factor(pts)[:, None]  # (P, K)
    logp, _ = normalise_on_grid(logsumexp(comp, axis=1), cell)
    om, ow, ostd = pixel_gm(out, b)
    np.testing.assert_allclose(np.exp(gm_logpdf(pts, om, ow, ostd)), np.exp(logp), atol=1e-8 * np.exp(logp).max())
    mean, _ = grid_moments(pts, logp, cell)
    np.testing.assert_allclose(ow @ om, mean, atol=1e-8)
    mass = logsumexp(comp, axis=0)
    np.testing.assert_allclose(ow, np.exp(mass - logsumexp(mass)), atol=1e-9)
    for k in range(len(w)):
        lk, _ = normalise_on_grid(comp[:, k], cell)
        mk, ck = grid_moments(pts, lk, cell)
        np.testing.assert_allclose(om[k], mk, atol=1e-7)
        np.testing.assert_allclose(ck, ostd**2 * np.eye(c), atol=1e-7)


@pytest.mark.parametrize("c", [1, 2])
def test_gm_mul_gaussian_matches_grid_product(c):
    """Truth: the product GM(x) N(x; m_r, v_r) normalised by a Riemann sum on a fine 1D/2D grid, with the weights
    given by the per-component masses of the product."""
    gm = _random_gm(2, 3, c, (), spread=1.5, logstd=-0.3, seed=8)
    g = _gen(9)
    m_r = torch.randn(2, c, generator=g, dtype=F64)
    v_r = torch.tensor([[0.8], [2.5]], dtype=F64)
    out = gm_mul_gaussian(gm, IsoGaussian(m_r, v_r))
    for b in range(2):
        _grid_product_check(gm, lambda x, b=b: iso_logpdf(x, np64(m_r[b]), v_r[b, 0].item()), out, c, b)


def test_gm_mul_gaussian_pointwise_identity_with_spatial_dims():
    """Truth: for a renormalised product, log GM(x) + log N(x; m_r, v_r) - log out(x) is the same constant at every x,
    per pixel (C = 3, S = (4, 4); explicit float64 densities)."""
    c, spatial = 3, (4, 4)
    gm = _random_gm(2, 4, c, spatial, seed=10)
    g = _gen(11)
    m_r = torch.randn(2, c, *spatial, generator=g, dtype=F64)
    v_r = torch.tensor([0.6, 3.0], dtype=F64).reshape(2, 1, 1, 1)
    out = gm_mul_gaussian(gm, IsoGaussian(m_r, v_r))
    assert out.means.shape == gm.means.shape and out.logstds.shape == gm.logstds.shape
    xs = 2 * torch.randn(5, 2, c, *spatial, generator=g, dtype=F64)
    for b in range(2):
        for pix in _pixels(spatial):
            x = _px(xs, b, pix)
            diff = (
                gm_logpdf(x, *pixel_gm(gm, b, pix))
                + iso_logpdf(x, _px(m_r, b, pix), v_r[b].item())
                - gm_logpdf(x, *pixel_gm(out, b, pix))
            )
            assert np.ptp(diff) < 1e-9 * (1 + np.abs(diff).max())


def test_gm_mul_gaussian_rejects_per_pixel_variance():
    """Truth: a per-pixel Gaussian variance would break the shared GM variance; the function must refuse it."""
    gm = _random_gm(1, 2, 3, (4, 4))
    with pytest.raises(ValueError, match="one Gaussian variance per sample"):
        gm_mul_gaussian(gm, IsoGaussian(torch.zeros(1, 3, 4, 4, dtype=F64), torch.ones(1, 1, 4, 4, dtype=F64)))


def _likelihood_ratio(x_src, s_src, x_tgt, s_tgt):
    """log N(x_tgt; a_t x0, s_t^2 I) - log N(x_src; a_s x0, s_s^2 I) as a function of x0 (..., C)."""
    a_s, a_t = 1 - s_src, 1 - s_tgt

    def f(x0):
        return iso_logpdf(a_t * x0, x_tgt, s_tgt**2) - iso_logpdf(a_s * x0, x_src, s_src**2)

    return f


@pytest.mark.parametrize("c", [1, 2])
@pytest.mark.parametrize("s_src,s_tgt", [(0.7, 0.4), (1.0, 0.3)])
def test_gm_recondition_matches_grid_bayes(c, s_src, s_tgt):
    """Truth: q(x0 | x_tgt) ∝ q(x0 | x_src) N(x_tgt; a_t x0, s_t^2) / N(x_src; a_s x0, s_s^2) evaluated and normalised
    on a fine grid, for an arbitrary GM (not a true posterior); density, mean, weights, component moments."""
    gm = _random_gm(2, 3, c, (), spread=1.5, logstd=-0.5, seed=12)
    g = _gen(13)
    x_src = torch.randn(2, c, generator=g, dtype=F64)
    x_tgt = torch.randn(2, c, generator=g, dtype=F64)
    sig_s = torch.full((2,), s_src, dtype=F64)
    sig_t = torch.full((2,), s_tgt, dtype=F64)
    out = gm_recondition(gm, x_src, sig_s, x_tgt, sig_t)
    for b in range(2):
        f = _likelihood_ratio(np64(x_src[b]), s_src, np64(x_tgt[b]), s_tgt)
        _grid_product_check(gm, f, out, c, b)


def test_gm_recondition_pointwise_identity_with_spatial_dims():
    """Truth: log q_src(x0) + log-likelihood ratio(x0) - log out(x0) is constant in x0, per pixel (C = 3, S = (4, 4),
    per-sample sigmas, explicit float64 densities)."""
    c, spatial = 3, (4, 4)
    gm = _random_gm(2, 4, c, spatial, seed=14)
    g = _gen(15)
    x_src, x_tgt = torch.randn(2, 2, c, *spatial, generator=g, dtype=F64)
    sig_s = torch.tensor([0.8, 1.0], dtype=F64)
    sig_t = torch.tensor([0.5, 0.05], dtype=F64)
    out = gm_recondition(gm, x_src, sig_s, x_tgt, sig_t)
    xs = torch.randn(5, 2, c, *spatial, generator=g, dtype=F64)
    for b in range(2):
        for pix in _pixels(spatial):
            f = _likelihood_ratio(_px(x_src, b, pix), sig_s[b].item(), _px(x_tgt, b, pix), sig_t[b].item())
            x = _px(xs, b, pix)
            diff = gm_logpdf(x, *pixel_gm(gm, b, pix)) + f(x) - gm_logpdf(x, *pixel_gm(out, b, pix))
            assert np.ptp(diff) < 1e-8 * (1 + np.abs(diff).max())


# ---------------------------------------------------------------------------------------------------------------------
# The GM-data oracle
# ---------------------------------------------------------------------------------------------------------------------


def _spatial_gm_data(c=3, spatial=(4, 4), k=3, s0=0.4, seed=16) -> GMData:
    g = _gen(seed)
    return GMData(
        2 * torch.randn(k, c, *spatial, generator=g, dtype=F64), torch.randn(k, *spatial, generator=g, dtype=F64), s0
    )


@pytest.mark.parametrize("c", [1, 2])
@pytest.mark.parametrize("sigma", [1.0, 0.6, 0.1])
def test_oracle_posterior_matches_grid_bayes(c, sigma):
    """Truth for the oracle itself: p(x0 | x_t) ∝ p_data(x0) N(x_t; alpha x0, sigma^2 I) normalised on a grid; and
    E[u | x_t] = E[(x_t - x0)/sigma | x_t] by the same grid."""
    g = _gen(17)
    data = GMData(1.5 * torch.randn(3, c, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64), 0.5)
    x_t = torch.randn(1, c, generator=g, dtype=F64)
    post = data.posterior_x0(x_t, torch.tensor([sigma], dtype=F64))
    pts, cell = grid_1d(-10, 10, 20_001) if c == 1 else grid_2d(-7, 7, 561)
    w = np64(data.weights)
    lik = iso_logpdf((1 - sigma) * pts, np64(x_t[0]), sigma**2)
    logp, _ = normalise_on_grid(gm_logpdf(pts, np64(data.means), w, data.s0) + lik, cell)
    np.testing.assert_allclose(np.exp(gm_logpdf(pts, *pixel_gm(post, 0))), np.exp(logp), atol=1e-8 * np.exp(logp).max())
    mean, _ = grid_moments(pts, logp, cell)
    u_mean = (np64(x_t[0]) - mean) / sigma
    np.testing.assert_allclose(np64(data.velocity(x_t, torch.tensor([sigma], dtype=F64))[0]), u_mean, atol=1e-7)


@pytest.mark.parametrize("sigma", [1.0, 0.5, 1e-3])
def test_oracle_velocity_gm_is_the_x0_posterior_in_u_space(sigma):
    """Truth: u = (x_t - x0)/sigma, so the library's u->x0 change of variables of the oracle's velocity GM must give
    the oracle's x0 posterior (two independently written formulas), with spatial dims."""
    data = _spatial_gm_data()
    x_t = torch.randn(2, 3, 4, 4, generator=_gen(18), dtype=F64)
    sig = torch.full((2,), sigma, dtype=F64)
    a = u_to_x0(data.posterior_u(x_t, sig), x_t, sig)
    b = data.posterior_x0(x_t, sig)
    for name in ("means", "logweights", "logstds"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("s_src,s_tgt", [(1.0, 0.5), (0.8, 0.3), (0.5, 0.01), (1.0, 1e-4)])
def test_recondition_of_exact_posterior_is_exact_posterior(s_src, s_tgt):
    """Truth: for GM data, re-conditioning the TRUE posterior at (x_src, sigma_src) to any (x_tgt, sigma_tgt) is the
    true posterior at (x_tgt, sigma_tgt) (Bayes: the data prior cancels). Holds only for true posteriors."""
    data = _spatial_gm_data()
    g = _gen(19)
    x_src, x_tgt = torch.randn(2, 2, 3, 4, 4, generator=g, dtype=F64)
    ss, st = torch.full((2,), s_src, dtype=F64), torch.full((2,), s_tgt, dtype=F64)
    out = gm_recondition(data.posterior_x0(x_src, ss), x_src, ss, x_tgt, st)
    ref = data.posterior_x0(x_tgt, st)
    torch.testing.assert_close(out.means, ref.means, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out.logweights, ref.logweights, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(out.logstds, ref.logstds, rtol=1e-8, atol=1e-8)


def test_recondition_of_2d_ring_posterior_is_exact_posterior():
    """Truth: same Bayes identity on the 2D ring data used by the solver tests (S = ())."""
    data = ring_gm_data()
    g = _gen(20)
    x_src, x_tgt = 2 * torch.randn(2, 64, 2, generator=g, dtype=F64)
    ss, st = torch.full((64,), 0.9, dtype=F64), torch.full((64,), 0.2, dtype=F64)
    out = gm_recondition(data.posterior_x0(x_src, ss), x_src, ss, x_tgt, st)
    torch.testing.assert_close(out.mean(), data.posterior_x0(x_tgt, st).mean(), rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------------
# float32 safety at the ends of the time range
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,spatial", SHAPES)
@pytest.mark.parametrize("sigma", [1.0, 1e-7])
def test_float32_u_to_x0_and_oracle_are_finite_at_the_ends(c, spatial, sigma):
    """Truth: sigma = 1 (alpha = 0) and sigma = 1e-7 are legal sampling levels; the x0 GM, its mean, log_prob and a
    sample must be finite in float32, and at sigma -> 0 the x0 mean must equal x_t."""
    data = _spatial_gm_data(c, spatial) if spatial else ring_gm_data(s0=0.3)
    x_t = torch.randn(4, c, *spatial, generator=_gen(21))
    sig = torch.full((4,), sigma, dtype=torch.float32)
    gm_u = data(x_t, sig)
    assert gm_u.means.dtype == torch.float32
    gm_x = u_to_x0(gm_u, x_t, sig)
    for t in (gm_u.means, gm_u.logweights, gm_u.logstds, gm_x.means, gm_x.logstds, gm_x.mean()):
        assert torch.isfinite(t).all()
    assert torch.isfinite(gm_x.log_prob(x_t)).all()
    assert torch.isfinite(gm_x.sample(_gen(22))).all()
    if sigma < 1e-3:
        torch.testing.assert_close(gm_x.mean(), x_t, rtol=0, atol=1e-5)


@pytest.mark.parametrize("s_src,s_tgt", [(1.0, 1e-7), (0.5, 1e-7), (1.0, 1 - 1e-6)])
def test_float32_recondition_is_finite_and_concentrates(s_src, s_tgt):
    """Truth: re-conditioning to sigma_tgt -> 0 must concentrate q(x0 | x_tgt) at x_tgt / alpha_tgt = x_tgt (the
    likelihood becomes a delta), without NaN/inf in float32; a tiny step near sigma = 1 must also stay finite."""
    gm = _random_gm(3, 4, 3, (4, 4), spread=1.0, logstd=-1.0, dtype=torch.float32, seed=23)
    g = _gen(24)
    x_src, x_tgt = torch.randn(2, 3, 3, 4, 4, generator=g)
    out = gm_recondition(gm, x_src, torch.full((3,), s_src), x_tgt, torch.full((3,), s_tgt))
    for t in (out.means, out.logweights, out.logstds, out.mean()):
        assert torch.isfinite(t).all()
    if s_tgt < 1e-3:
        torch.testing.assert_close(out.mean(), x_tgt, rtol=0, atol=1e-4)


def test_float32_ratio_and_product_degenerate_inputs_are_finite():
    """Truth: equal variances (ratio denominator 0 -> floored) and a huge mask variance give a near-identity mask
    (the product GM equals the input GM) without NaN/inf."""
    gm = _random_gm(2, 3, 2, (), dtype=torch.float32, seed=25)
    m = gm.mean()
    v = torch.full((2, 1), 0.7)
    r = gaussian_ratio(IsoGaussian(m, v), IsoGaussian(m, v))
    assert torch.isfinite(r.mean).all() and torch.isfinite(r.var).all()
    out = gm_mul_gaussian(gm, r)
    for t in (out.means, out.logweights, out.logstds):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(out.means, gm.means, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logweights, gm.logweights, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_recondition_mean_equals_mean_of_reconditioned_gm(channels):
    from gmflow.gm import gm_recondition, gm_recondition_mean

    g = torch.Generator().manual_seed(5)
    b, k = 4, 6
    gm = GaussianMixture(torch.randn(b, k, channels, 5, 3, generator=g, dtype=torch.float64),
                         torch.log_softmax(torch.randn(b, k, 1, 5, 3, generator=g, dtype=torch.float64), 1),
                         torch.full((b, 1, 1, 1, 1), -0.7, dtype=torch.float64))
    x_src = torch.randn(b, channels, 5, 3, generator=g, dtype=torch.float64)
    x_tgt = torch.randn(b, channels, 5, 3, generator=g, dtype=torch.float64)
    s_src, s_tgt = torch.tensor([0.9, 0.5, 1.0, 0.3], dtype=torch.float64), torch.tensor([0.6, 0.2, 0.4, 0.01],
                                                                                           dtype=torch.float64)
    ref = gm_recondition(gm, x_src, s_src, x_tgt, s_tgt).mean()
    fast = gm_recondition_mean(gm, x_src, s_src, x_tgt, s_tgt)
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-10)
