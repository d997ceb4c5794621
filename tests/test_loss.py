"""Transition loss and its schedule pieces (gmflow/loss.py, gmflow/schedule.py) against independent derivations:
joint-Gaussian conditioning in float64, Monte Carlo moments of the forward process, brute-force NLLs, the L2 flow
matching loss and the exact posterior of Gaussian-mixture data. docs/method.md, Sec. 1.7 and 3."""

import math

import numpy as np
import pytest
import torch
from oracles import F64, gm_logpdf, np64, pixel_gm, ring_gm_data

from baselines.fm import fm_loss, fm_pair
from gmflow.gm import GaussianMixture
from gmflow.loss import gm_nll, sample_transition_pair, transition_loss, velocity_nll
from gmflow.schedule import add_noise, forward_transition, transition_coefficients

SHAPES = [(2, ()), (3, (4, 4))]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_gm(b, k, c, spatial, spread=1.0, logstd=0.0, dtype=F64, seed=0, requires_grad=False) -> GaussianMixture:
    g = _gen(seed)
    means = spread * torch.randn(b, k, c, *spatial, generator=g, dtype=dtype)
    logits = torch.randn(b, k, 1, *spatial, generator=g, dtype=dtype)
    logstds = logstd + 0.3 * (2 * torch.rand(b, 1, 1, *([1] * len(spatial)), generator=g, dtype=dtype) - 1)
    if requires_grad:
        for t in (means, logits, logstds):
            t.requires_grad_(True)
    return GaussianMixture(means, torch.log_softmax(logits, dim=1), logstds)


def _ddpm_posterior_by_conditioning(s_h: float, s_l: float) -> tuple[float, float, float]:
    """q(x_l | x_h, x0) from the joint Gaussian of (x_l, x_h) given x0, built from the forward chain
    x_l = a_l x0 + s_l e0, x_h = (a_h/a_l) x_l + q e1 (q^2 = s_h^2 - (a_h/a_l)^2 s_l^2): write (x_l, x_h) as a linear
    map of (x0, e0, e1) and condition with the Schur complement (numpy float64)."""
    a_h, a_l = 1 - s_h, 1 - s_l
    rho = a_h / a_l
    q = math.sqrt(max(s_h**2 - rho**2 * s_l**2, 0.0))
    lin = np.array([[a_l, s_l, 0.0], [rho * a_l, rho * s_l, q]])  # rows x_l, x_h; columns x0, e0, e1
    noise = lin[:, 1:]
    cov = noise @ noise.T
    gain = cov[0, 1] / cov[1, 1]
    c1 = gain
    c2 = lin[0, 0] - gain * lin[1, 0]  # x0 coefficient of E[x_l | x_h, x0]
    c3 = cov[0, 0] - gain * cov[0, 1]
    return c1, c2, c3


@pytest.mark.parametrize("s_h", [1.0, 0.9, 0.5, 0.1])
@pytest.mark.parametrize("frac", [0.0, 0.3, 0.9])
def test_transition_coefficients_are_the_ddpm_posterior(s_h, frac):
    """Truth: joint-Gaussian conditioning of the forward chain (x0 -> x_l -> x_h) in float64, incl. sigma_h = 1
    (alpha = 0) and sigma_l = 0."""
    s_l = frac * s_h
    c1, c2, c3 = transition_coefficients(torch.tensor(s_h, dtype=F64), torch.tensor(s_l, dtype=F64))
    e1, e2, e3 = _ddpm_posterior_by_conditioning(s_h, s_l)
    np.testing.assert_allclose([c1.item(), c2.item(), c3.item()], [e1, e2, e3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("s_h,lam", [(0.8, 0.5), (1.0, 0.9), (0.3, 0.2)])
def test_forward_transition_gives_the_marginal_and_markov_coupling(s_h, lam):
    """Truth (Monte Carlo, 400k draws, 5 standard errors): x_h | x0 ~ N(a_h x0, s_h^2) (the forward marginal), and
    Cov(x_l, x_h | x0) = (a_h/a_l) s_l^2 (x_h is drawn FROM x_l, docs/method.md, Sec. 3.2;
    independent draws would give 0)."""
    n = 400_000
    g = _gen(1)
    x0 = torch.randn(n, 1, generator=g, dtype=F64)
    eps0, eps1 = torch.randn(2, n, 1, generator=g, dtype=F64)
    pair = sample_transition_pair(x0, torch.full((n,), s_h, dtype=F64), lam, eps0, eps1)
    s_l = s_h * (1 - lam)
    np.testing.assert_allclose(np64(pair.sigma_low), s_l, rtol=1e-12)
    r_l = np64(pair.x_low - (1 - s_l) * x0)[:, 0]
    r_h = np64(pair.x_high - (1 - s_h) * x0)[:, 0]
    assert abs(r_h.mean()) < 5 * s_h / math.sqrt(n)
    assert abs(r_h.var() - s_h**2) < 5 * s_h**2 * math.sqrt(2 / n)
    cov = np.mean(r_l * r_h)
    expect = (1 - s_h) / (1 - s_l) * s_l**2
    assert abs(cov - expect) < 5 * s_l * s_h / math.sqrt(n) + 1e-12
    # and forward_transition alone, sample by sample, against the kernel written out here:
    # x_h = rho x_l + sqrt(s_h^2 - rho^2 s_l^2) e1 with rho = a_h / a_l
    x_l = torch.randn(8, 3, generator=g, dtype=F64)
    e1 = torch.randn(8, 3, generator=g, dtype=F64)
    rho = (1 - s_h) / (1 - s_l)
    x_h = forward_transition(x_l, torch.full((8,), s_l, dtype=F64), torch.full((8,), s_h, dtype=F64), e1)
    torch.testing.assert_close(x_h, rho * x_l + math.sqrt(s_h**2 - rho**2 * s_l**2) * e1, rtol=1e-12, atol=1e-12)


def test_lambda_one_pair_is_data_and_forward_noise():
    """Truth: lambda = 1 gives sigma_low = 0, x_low = x0 and x_high = (1 - sigma) x0 + sigma eps1 (the FM pair)."""
    g = _gen(2)
    x0, eps0, eps1 = torch.randn(3, 5, 2, generator=g, dtype=F64)
    sig = torch.linspace(0.1, 1.0, 5, dtype=F64)
    pair = sample_transition_pair(x0, sig, 1.0, eps0, eps1)
    assert bool((pair.sigma_low == 0).all())
    torch.testing.assert_close(pair.x_low, x0)
    torch.testing.assert_close(pair.x_high, add_noise(x0, eps1, sig))


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_lambda_one_loss_is_x0_nll_and_velocity_nll(c, spatial):
    """Truth: with lambda = 1 the transition loss is the x0-space NLL (brute force: explicit GM density of x0 with
    means x_h - sigma mu_k and std sigma s, minus (C/2) log 2 pi, averaged over pixels), which equals the velocity NLL
    of Eq. 6 plus C log sigma per sample. Tolerance covers float32 and the 1e-6 floor on c3
    (docs/method.md, Sec. 1.7)."""
    b = 4
    gm_u = _random_gm(b, 3, c, spatial, seed=3)
    g = _gen(4)
    x0, eps0, eps1 = torch.randn(3, b, c, *spatial, generator=g, dtype=F64)
    sig = torch.tensor([0.3, 0.5, 0.75, 1.0], dtype=F64)
    pair = sample_transition_pair(x0, sig, 1.0, eps0, eps1)
    loss = transition_loss(gm_u, pair).double()
    assert loss.shape == (b,)
    u = eps1 - x0  # (x_high - x0) / sigma
    pixels = list(np.ndindex(*spatial)) if spatial else [()]
    brute = np.zeros(b)
    for i in range(b):
        s = sig[i].item()
        for pix in pixels:
            mu, w, std = pixel_gm(gm_u, i, pix)
            x_h = np64(pair.x_high[(i, slice(None), *pix)])
            lp = gm_logpdf(np64(x0[(i, slice(None), *pix)]), x_h - s * mu, w, s * std)
            brute[i] -= (lp + 0.5 * c * math.log(2 * math.pi)) / len(pixels)
    np.testing.assert_allclose(np64(loss), brute, rtol=0, atol=2e-4)
    const = c * torch.log(sig) - 0.5 * c * math.log(2 * math.pi)
    np.testing.assert_allclose(np64(loss), np64(velocity_nll(gm_u, u).double() + const), rtol=0, atol=2e-4)


@pytest.mark.parametrize("lam", [0.5, 0.9])
@pytest.mark.parametrize("c,spatial", SHAPES)
def test_transition_loss_at_trained_lambdas_is_the_brute_force_transition_nll(lam, c, spatial):
    """Truth: at the trained lambdas (0.5 images, 0.9 toy) the loss of each sample is the pixel-averaged
    -log sum_k A_k N(x_l; c1 x_h + c2 (x_h - sigma_h mu_k), v I) + (C/2) log 2 pi with v = (c2 sigma_h s)^2 + c3
    (Sec. 3.4 of Chen et al. 2025), evaluated here in float64 as the explicit sum of component densities. The
    coefficients come from joint-Gaussian conditioning of the forward chain (not from the library), and the log-stds
    are chosen so that c3 is a large part of v: a wrong floor c3 (x 0.5, 0 or 2) moves the loss by >> the tolerance."""
    b = 5
    gm_u = _random_gm(b, 4, c, spatial, spread=1.0, logstd=-0.8 if lam == 0.5 else -2.5, seed=21)
    g = _gen(22)
    x0, eps0, eps1 = torch.randn(3, b, c, *spatial, generator=g, dtype=F64)
    sig = torch.tensor([1.0, 0.85, 0.6, 0.35, 0.15], dtype=F64)
    pair = sample_transition_pair(x0, sig, lam, eps0, eps1)
    np.testing.assert_allclose(np64(pair.sigma_low), np64(sig) * (1 - lam), rtol=1e-12)
    loss = np64(transition_loss(gm_u, pair))
    pixels = list(np.ndindex(*spatial)) if spatial else [()]
    brute, c3_share = np.zeros(b), np.zeros(b)
    for i in range(b):
        s_h = sig[i].item()
        c1, c2, c3 = _ddpm_posterior_by_conditioning(s_h, s_h * (1 - lam))
        for pix in pixels:
            mu, w, std = pixel_gm(gm_u, i, pix)
            x_h = np64(pair.x_high[(i, slice(None), *pix)])
            var = (c2 * s_h * std) ** 2 + c3
            c3_share[i] = c3 / var
            means = c1 * x_h + c2 * (x_h - s_h * mu)  # (K, C)
            lp = gm_logpdf(np64(pair.x_low[(i, slice(None), *pix)]), means, w, math.sqrt(var))
            brute[i] -= (lp + 0.5 * c * math.log(2 * math.pi)) / len(pixels)
    assert c3_share.min() > 0.2, c3_share  # the variance floor c3 matters at every level tested
    np.testing.assert_allclose(loss, brute, rtol=0, atol=1e-4)


@pytest.mark.parametrize("c,spatial", SHAPES)
def test_k1_unit_std_lambda_one_is_half_l2_flow_matching(c, spatial):
    """Truth: for K = 1, s = 1, lambda = 1, -log N(u; mu, I) without 2 pi = 0.5 ||u - mu||^2, so the loss is
    baselines.fm.fm_loss / 2 + C log sigma (fm_loss: channels summed, pixels averaged)."""
    b = 5
    g = _gen(5)
    mu = torch.randn(b, 1, c, *spatial, generator=g, dtype=F64)
    gm_u = GaussianMixture(mu, torch.zeros(b, 1, 1, *spatial, dtype=F64), torch.zeros(b, 1, 1, *([1] * len(spatial))))
    x0, eps0, eps1 = torch.randn(3, b, c, *spatial, generator=g, dtype=F64)
    sig = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0], dtype=F64)
    pair = sample_transition_pair(x0, sig, 1.0, eps0, eps1)
    x_t, u = fm_pair(x0, eps1, sig)
    torch.testing.assert_close(x_t, pair.x_high)
    expect = fm_loss(mu[:, 0], u).double() / 2 + c * torch.log(sig)
    np.testing.assert_allclose(np64(transition_loss(gm_u, pair)), np64(expect), rtol=0, atol=1e-4)
    # the gm_nll reduction itself on u (no sigma involved): exact up to fm_loss's float32 cast
    np.testing.assert_allclose(np64(gm_nll(gm_u, u)), np64(fm_loss(mu[:, 0], u) / 2), rtol=1e-6)


def _perturb(gm: GaussianMixture, kind: str) -> GaussianMixture:
    if kind == "wider":
        return GaussianMixture(gm.means, gm.logweights, gm.logstds + 0.3)
    if kind == "narrower":
        return GaussianMixture(gm.means, gm.logweights, gm.logstds - 0.3)
    if kind == "shifted":
        return GaussianMixture(gm.means + 0.3 * torch.exp(gm.logstds), gm.logweights, gm.logstds)
    if kind == "flat_weights":
        return GaussianMixture(gm.means, torch.log_softmax(0.3 * gm.logweights, dim=1), gm.logstds)
    if kind == "gaussian":  # K = 1 moment-matched surrogate of the velocity GM
        g = gm.iso_gaussian()
        return GaussianMixture(
            g.mean.unsqueeze(1), torch.zeros_like(gm.logweights[:, :1]), 0.5 * torch.log(g.var)[:, :, None]
        )
    raise ValueError(kind)


@pytest.mark.parametrize("lam", [0.9, 1.0])
def test_exact_posterior_minimises_expected_transition_loss(lam):
    """Truth: the expected NLL of x_l is minimised by the true q(x_l | x_h) (Gibbs' inequality), which is the transition
    GM of the exact posterior of GM data. Every perturbed GM must score higher, by more than 5 standard errors of the
    paired difference (Monte Carlo over 20k pairs with common random numbers)."""
    data = ring_gm_data(num=8, radius=3.0, s0=0.3)
    n = 20_000
    g = _gen(6)
    x0, _ = data.sample(n, g)
    eps0, eps1 = torch.randn(2, n, 2, generator=g, dtype=F64)
    sig = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=F64)
    pair = sample_transition_pair(x0, sig, lam, eps0, eps1)
    gm_exact = data.posterior_u(pair.x_high, sig)
    base = transition_loss(gm_exact, pair).double()
    assert torch.isfinite(base).all()
    for kind in ("wider", "narrower", "shifted", "flat_weights", "gaussian"):
        d = np64(transition_loss(_perturb(gm_exact, kind), pair).double() - base)
        se = d.std() / math.sqrt(n)
        assert d.mean() > 5 * se, f"{kind}: mean excess {d.mean():.4g} vs se {se:.3g}"


@pytest.mark.parametrize("s_h", [1.0, 1 - 1e-6, 1e-4, 1e-7])
@pytest.mark.parametrize("lam", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("c,spatial", SHAPES)
def test_loss_and_gradients_finite_at_the_ends(s_h, lam, c, spatial):
    """Truth: sigma_h in {1, 1 - 1e-6, 1e-4, 1e-7} are reachable training levels (t clamped >= 1e-4 t-units); the
    float32 loss and its gradients w.r.t. means, logits and log-std must be finite, and the mean gradient nonzero."""
    b = 3
    gm_u = _random_gm(b, 4, c, spatial, dtype=torch.float32, seed=7, requires_grad=True)
    leaves = [gm_u.means, gm_u.logstds]
    g = _gen(8)
    x0, eps0, eps1 = torch.randn(3, b, c, *spatial, generator=g)
    pair = sample_transition_pair(x0, torch.full((b,), s_h), lam, eps0, eps1)
    loss = transition_loss(gm_u, pair)
    assert torch.isfinite(loss).all()
    grads = torch.autograd.grad(loss.sum(), leaves)
    for gr in grads:
        assert torch.isfinite(gr).all()
    assert grads[0].abs().sum() > 0
