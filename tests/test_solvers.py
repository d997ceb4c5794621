"""GM solvers (gmflow/solvers.py) and classic flow samplers (baselines/samplers.py) driven by exact oracles.

Independent truths: Gaussian-mixture data whose exact posterior GM and exact velocity are known (tests/oracles.py),
so GM-SDE is an exact sampler and GM-ODE is exact up to its Euler sub-steps; Gaussian data whose flow map is affine and
known in closed form (convergence orders); Monte Carlo moments with tolerances from the standard error. The solvers
work in float32, so the tolerances are float32 ones. docs/method.md, Sec. 4 and 6.
"""

import math

import numpy as np
import pytest
import torch
from oracles import F64, GaussianData, GMData, ring_gm_data

from baselines.samplers import FLOW_SOLVERS, ddim, ddpm_large, ddpm_small, euler, heun
from gmflow.schedule import sigma_grid
from gmflow.solvers import GM_SOLVERS, gm_ode, gm_ode_2, gm_sde, gm_sde_2

N_SAMPLES = 20_000


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ring():
    return ring_gm_data(num=8, radius=3.0, s0=0.3)


@pytest.fixture(scope="module")
def x_init():
    return torch.randn(N_SAMPLES, 2, generator=_gen(0))


def _assert_matches_gm_data(x: torch.Tensor, data: GMData, z: float = 5.0):
    """MC check of samples ``x (n, 2)`` against the exact data law: mean and covariance within ``z`` standard errors
    (estimated from the samples), and the fraction nearest to each component within ``z`` binomial standard errors of
    pi_k (+ 2e-3 for the rare sample nearer to another component: gaps are > 7 s0)."""
    assert torch.isfinite(x).all()
    x = x.to(F64)
    n = x.shape[0]
    m, cov = data.mean(), data.covariance()
    d = x - m
    err_m = d.mean(0).abs()
    assert bool((err_m <= z * d.std(0) / math.sqrt(n)).all()), f"mean error {err_m}"
    prod = d.unsqueeze(2) * d.unsqueeze(1)  # (n, 2, 2)
    err_c = (prod.mean(0) - cov).abs()
    assert bool((err_c <= z * prod.std(0) / math.sqrt(n)).all()), f"covariance error {err_c}"
    freq = torch.bincount(data.nearest_component(x), minlength=len(data.weights)).to(F64) / n
    pi = data.weights
    err_f = (freq - pi).abs()
    assert bool((err_f <= z * torch.sqrt(pi * (1 - pi) / n) + 2e-3).all()), f"component frequency error {err_f}"


# ---------------------------------------------------------------------------------------------------------------------
# Exactness of the GM solvers with the exact posterior
# ---------------------------------------------------------------------------------------------------------------------


def test_gm_ode_one_step_with_substeps_reproduces_gm_data(ring, x_init):
    """Truth: at sigma = 1 the exact posterior is the data law itself and re-conditioning it is exact, so GM-ODE at
    NFE = 1 with 256 sub-steps is a 256-step Euler solve of the exact flow ODE: it must reproduce the 8-component
    ring (mean, covariance, component frequencies pi_k)."""
    x = gm_ode(ring, x_init, sigma_grid(1), substeps=256)
    _assert_matches_gm_data(x, ring)


def test_gm_sde_one_step_is_an_exact_sampler(ring, x_init):
    """Truth: GM-SDE at NFE = 1 draws x0 from the exact posterior at sigma = 1, i.e. from the data law."""
    x = gm_sde(ring, x_init, sigma_grid(1), generator=_gen(1))
    _assert_matches_gm_data(x, ring)


@pytest.mark.parametrize("solver", ["gm-sde", "gm-sde-2"])
def test_gm_sde_four_steps_reproduce_gm_data(ring, x_init, solver):
    """Truth: each GM-SDE step samples the exact transition q(x_s | x_t) when the GM is the exact posterior; with the
    exact posterior the 2nd-order extrapolation is zero (re-conditioning the previous exact GM gives the current
    one)."""
    x = GM_SOLVERS[solver](ring, x_init, sigma_grid(4), generator=_gen(2))
    _assert_matches_gm_data(x, ring)


@pytest.mark.parametrize("solver", ["gm-ode", "gm-ode-2"])
def test_gm_ode_four_steps_reproduce_gm_data(ring, x_init, solver):
    """Truth: GM-ODE (1st/2nd order) at NFE = 4 with 64 sub-steps is an Euler solve of the exact ODE on 256 steps."""
    x = GM_SOLVERS[solver](ring, x_init, sigma_grid(4), substeps=64)
    _assert_matches_gm_data(x, ring)


@pytest.mark.parametrize("nfe,substeps", [(1, 32), (4, 16), (8, 1)])
@pytest.mark.parametrize("solver", ["gm-ode", "gm-ode-2"])
def test_gm_ode_with_exact_posterior_equals_euler_on_the_fine_grid(ring, nfe, substeps, solver):
    """Truth: with the exact posterior every sub-step's re-conditioned mean IS the exact E[x0 | x_j] (Bayes), so
    GM-ODE(NFE, n) must reproduce Euler with the exact velocity on NFE * n steps sample by sample (float32); with
    n = 1 it is Euler on the GM mean. A wrong x_src/sigma_src in re-conditioning, or a nonzero 2nd-order correction
    for exact GMs, would break this."""
    x1 = torch.randn(2000, 2, generator=_gen(3))
    x = GM_SOLVERS[solver](ring, x1, sigma_grid(nfe), substeps=substeps)
    ref = euler(ring.velocity, x1, sigma_grid(nfe * substeps))
    torch.testing.assert_close(x, ref, rtol=0, atol=3e-4)


def test_gm_sde_2_with_exact_posterior_equals_gm_sde(ring):
    """Truth: the 2nd-order extrapolation Delta mu = mu+ - mu- vanishes for exact posteriors, so GM-SDE 2 and GM-SDE
    with the same noise must give the same samples (float32)."""
    x1 = torch.randn(2000, 2, generator=_gen(4))
    a = gm_sde(ring, x1, sigma_grid(6), generator=_gen(5))
    b = gm_sde_2(ring, x1, sigma_grid(6), generator=_gen(5))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-3)


def test_euler_one_step_collapses_to_the_data_mean(ring, x_init):
    """Truth: from sigma = 1, x - E[u | x] = E[x0 | x] = E[x0] (alpha = 0): one Euler step with the exact velocity maps
    every sample to the data mean; GM-ODE without sub-steps is the same Euler step on the GM mean. GM-ODE with
    sub-steps at the same NFE does not collapse."""
    m = ring.mean().float()
    x = euler(ring.velocity, x_init, sigma_grid(1))
    torch.testing.assert_close(x, m.expand_as(x), rtol=0, atol=1e-5)
    x = gm_ode(ring, x_init, sigma_grid(1), substeps=1)
    torch.testing.assert_close(x, m.expand_as(x), rtol=0, atol=1e-5)
    x = gm_ode(ring, x_init[:2000], sigma_grid(1), substeps=16)
    assert float(x.std(0).min()) > 1.0


def test_gm_solvers_with_spatial_dims():
    """Truth: pixel-wise GM data (C = 3, S = (4, 4)): GM-SDE 2 (exact) and GM-ODE 2 (Euler with 128 sub-steps) must
    reproduce the per-pixel, per-channel data mean within 5 standard errors and keep the shape (B, C, H, W)."""
    g = _gen(6)
    data = GMData(
        2 * torch.randn(3, 3, 4, 4, generator=g, dtype=F64), torch.randn(3, 4, 4, generator=g, dtype=F64), 0.4
    )
    n = 4000
    x1 = torch.randn(n, 3, 4, 4, generator=g)
    sd = data.covariance().diagonal(0, 0, 1).movedim(-1, 0).sqrt()  # (C, H, W)
    for x in (
        gm_sde_2(data, x1, sigma_grid(4), generator=_gen(7)),
        gm_ode_2(data, x1, sigma_grid(4), substeps=32),
    ):
        assert x.shape == (n, 3, 4, 4) and torch.isfinite(x).all()
        err = (x.to(F64).mean(0) - data.mean()).abs()
        assert bool((err <= 5 * sd / math.sqrt(n)).all()), f"max z {float((err / (sd / math.sqrt(n))).max())}"


def _gaussian_recondition(mu, v, x_src, s_src, x_tgt, s_tgt):
    """Mean and variance of N(mu, v I) x N(x_tgt; a_t x0, s_t^2) / N(x_src; a_s x0, s_s^2) by conjugacy (float64)."""
    a_s, a_t = 1 - s_src, 1 - s_tgt
    prec = 1 / v + (a_t / s_tgt) ** 2 - (a_s / s_src) ** 2
    nat = mu / v + a_t * x_tgt / s_tgt**2 - a_s * x_src / s_src**2
    return nat / prec, 1 / prec


def _reference_gm_ode_2_k1(model_fn, x1, nfe, substeps, ca):
    """GM-ODE 2 for a K = 1 velocity model, written from docs/method.md, Sec. 4.4-4.5 in float64: for K = 1 the masked
    GM base x target / base IS the target N(mu+ + B, v max(1 - P/v, 1e-6)), with B = (mu+ - mu-) (h / 2 h_prev)
    sqrt(max(0, 1 - v ca / h_prev^2)) rescaled to RMS <= sqrt(v) and mu- the previous (unextrapolated) GM re-conditioned
    to the current state. Returns the samples and the damping factors used."""
    x = x1.to(F64)
    sig = [1 - i / nfe for i in range(nfe)] + [0.0]
    prev, damps = None, []
    for i in range(nfe):
        s, s_next = sig[i], sig[i + 1]
        h = s - s_next
        gm_u = model_fn(x.float(), torch.full((x.shape[0],), s))
        mu_plus = x - s * gm_u.means[:, 0].to(F64)
        v = (s * torch.exp(gm_u.logstds.to(F64))).square().reshape(-1, 1)  # x0-space variance (B, 1)
        mean, var = mu_plus, v
        if prev is not None:
            mu_p, v_p, x_p, s_p, h_p = prev
            mu_minus, _ = _gaussian_recondition(mu_p, v_p, x_p, s_p, x, s)
            damp = (1 - v * ca / h_p**2).clamp(min=0).sqrt()
            damps.append(damp)
            bias = (mu_plus - mu_minus) * (0.5 * h / h_p) * damp
            power = bias.square().mean(1, keepdim=True)
            mean = mu_plus + bias * (v / power).clamp(max=1).sqrt()
            var = v * (1 - power / v).clamp(min=1e-6)
        prev = (mu_plus, v, x, s, h)
        x_src = x
        for j in range(substeps):
            s_j, s_j1 = s + (s_next - s) * j / substeps, s + (s_next - s) * (j + 1) / substeps
            x0 = mean if j == 0 else _gaussian_recondition(mean, var, x_src, s, x, s_j)[0]
            x = x + (x - x0) / s_j * (s_j1 - s_j)
    return x, torch.cat(damps)


@pytest.mark.parametrize("substeps", [1, 4])
@pytest.mark.parametrize("ca", [0.005, 0.1])
def test_gm_ode_2_matches_reference_extrapolation_for_inexact_k1_model(ring, substeps, ca):
    """Truth: an independent float64 implementation of the 2nd-order step (docs/method.md, Sec. 4.5) for a K = 1 model.
    The model is deliberately inconsistent across time (a Gaussian whose mean is the ring's posterior mean), so
    mu+ != mu- and the extrapolation, its h / 2 h_prev factor, the damping sqrt and the cache of the UNextrapolated GM
    all matter."""
    x1 = torch.randn(512, 2, generator=_gen(17))

    def model_fn(x, sigma):
        exact = ring.posterior_u(x, sigma)
        return type(exact)(ring.velocity(x, sigma).unsqueeze(1), exact.logweights[:, :1] * 0, exact.logstds)

    ref, damps = _reference_gm_ode_2_k1(model_fn, x1, 6, substeps, ca)
    if ca >= 0.1:
        assert bool(((damps > 0.05) & (damps < 0.97)).any()), "the damping factor must be active somewhere"
    first = gm_ode(model_fn, x1, sigma_grid(6), substeps=substeps).to(F64)
    assert float((ref - first).abs().max()) > 0.05, "the 2nd-order correction must be non-negligible here"
    out = gm_ode_2(model_fn, x1, sigma_grid(6), substeps=substeps, ca=ca).to(F64)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Classic samplers on Gaussian data (closed-form flow)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gauss():
    return GaussianData(torch.tensor([1.0, -0.5], dtype=F64), 0.5)


def test_gaussian_closed_forms_agree(gauss):
    """Truth: the closed-form Gaussian velocity equals the K = 1 GM oracle's velocity, and the closed-form flow map
    satisfies dx/dsigma = E[u | x] (central finite difference in float64)."""
    gm1 = GMData(gauss.m.reshape(1, 2), torch.zeros(1, dtype=F64), gauss.s0)
    x = torch.randn(64, 2, generator=_gen(8), dtype=F64)
    for s in (1.0, 0.6, 0.05):
        sig = torch.full((64,), s, dtype=F64)
        torch.testing.assert_close(gauss.velocity(x, sig), gm1.velocity(x, sig), rtol=1e-12, atol=1e-12)
    s, h = 0.4, 1e-5
    xs = gauss.flow(x, 1.0, s)
    fd = (gauss.flow(x, 1.0, s + h) - gauss.flow(x, 1.0, s - h)) / (2 * h)
    torch.testing.assert_close(fd, gauss.velocity(xs, torch.full((64,), s, dtype=F64)), rtol=1e-7, atol=1e-7)


def _errors(solver, gauss, nfes):
    x1 = torch.randn(256, 2, generator=_gen(9))
    exact = gauss.flow(x1, 1.0, 0.0)
    return np.array([float((solver(gauss.velocity, x1, sigma_grid(n)).to(F64) - exact).abs().max()) for n in nfes])


@pytest.mark.parametrize("solver,order", [(euler, 1), (heun, 2)])
def test_convergence_order_on_gaussian_data(gauss, solver, order):
    """Truth: for Gaussian data the flow map is affine and known in closed form; the global error of Euler must scale
    as O(h) and of Heun as O(h^2): the log-log slope over NFE 8..64 must be -order within 0.15 (0.3 for Heun)."""
    nfes = np.array([8, 16, 32, 64])
    err = _errors(solver, gauss, nfes)
    slope = np.polyfit(np.log(nfes), np.log(err), 1)[0]
    assert abs(slope + order) < 0.15 * order, f"slope {slope:.3f}, errors {err}"
    assert err[-1] < (0.05 if order == 1 else 1e-3)


@pytest.mark.parametrize("nfe", [1, 8, 64])
def test_ddim_equals_euler(gauss, nfe):
    """Truth: on the linear path alpha_s x0^ + sigma_s eps^ = x + (sigma_s - sigma) v (algebra), so deterministic DDIM
    and Euler agree to float32 precision."""
    x1 = torch.randn(256, 2, generator=_gen(10))
    a = ddim(gauss.velocity, x1, sigma_grid(nfe))
    b = euler(gauss.velocity, x1, sigma_grid(nfe))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("solver", [ddpm_small, ddpm_large])
def test_ddpm_with_many_steps_reproduces_gaussian_data(gauss, solver):
    """Truth: with the exact velocity and 1000 steps the DDPM samplers approach the data law N(m, s0^2 I) (their
    per-step bias is O(h^2)): mean, variance and the zero covariance within 5 standard errors (20k samples)."""
    n = N_SAMPLES
    x1 = torch.randn(n, 2, generator=_gen(11))
    x = solver(gauss.velocity, x1, sigma_grid(1000), generator=_gen(12)).to(F64)
    v = gauss.s0**2
    assert bool(((x.mean(0) - gauss.m).abs() <= 5 * math.sqrt(v / n)).all()), x.mean(0)
    assert bool(((x.var(0) - v).abs() <= 5 * v * math.sqrt(2 / n)).all()), x.var(0)
    assert abs(float(torch.cov(x.T)[0, 1])) <= 5 * v / math.sqrt(n)


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("s,s_to", [(0.6, 0.3), (1.0, 0.8), (0.2, 0.05)])
def test_one_ddpm_step_has_posterior_mean_and_small_or_large_variance(gauss, large, s, s_to):
    """Truth: one DDPM step from a fixed x_t: mean c1 x_t + c2 x0^ with (c1, c2, c3) from joint-Gaussian conditioning
    of (x_s, x_t) given x0 (float64); variance c3 ("small") or the VP beta_t = 1 - abar_t / abar_s, abar = alpha^2 /
    (alpha^2 + sigma^2), rescaled to the flow scale by (alpha_s^2 + sigma_s^2) ("large"). MC over 200k draws."""
    n = 200_000
    x_t = torch.tensor([[0.7, -1.2]]).expand(n, 2)
    solver = ddpm_large if large else ddpm_small
    out = solver(gauss.velocity, x_t, torch.tensor([s, s_to], dtype=F64), generator=_gen(18)).to(F64)
    a, a_to = 1 - s, 1 - s_to
    rho = a / a_to  # forward chain x_s -> x_t: x_t = rho x_s + sqrt(s^2 - rho^2 s_to^2) e
    cov_st = rho * s_to**2  # Cov(x_s, x_t | x0); Var(x_s) = s_to^2, Var(x_t) = s^2
    c1 = cov_st / s**2
    c2 = a_to - c1 * a
    c3 = s_to**2 - cov_st**2 / s**2
    x0_hat = x_t[:1].to(F64) - s * gauss.velocity(x_t[:1].to(F64), torch.tensor([s], dtype=F64))
    mean = c1 * x_t[0].to(F64) + c2 * x0_hat[0]
    abar = lambda al, si: al**2 / (al**2 + si**2)  # noqa: E731
    var = (1 - abar(a, s) / abar(a_to, s_to)) * (a_to**2 + s_to**2) if large else c3
    assert bool(((out.mean(0) - mean).abs() <= 5 * math.sqrt(var / n) + 1e-5).all()), (out.mean(0), mean)
    assert bool(((out.var(0) - var).abs() <= 5 * var * math.sqrt(2 / n)).all()), (out.var(0), var)


# ---------------------------------------------------------------------------------------------------------------------
# NFE counts
# ---------------------------------------------------------------------------------------------------------------------


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        return self.fn(x, sigma)


@pytest.mark.parametrize("nfe", [1, 3, 8])
@pytest.mark.parametrize("name", sorted(FLOW_SOLVERS))
def test_flow_solver_nfe(ring, name, nfe):
    """Truth: one model call per step (euler, ddim, ddpm) and 2N - 1 for Heun (its last step is Euler); counted by
    wrapping model_fn."""
    fn = _Counter(ring.velocity)
    FLOW_SOLVERS[name](fn, torch.randn(16, 2, generator=_gen(13)), sigma_grid(nfe), generator=_gen(14))
    assert fn.calls == (2 * nfe - 1 if name == "heun" else nfe)


@pytest.mark.parametrize("nfe", [1, 3, 8])
@pytest.mark.parametrize("name", sorted(GM_SOLVERS))
def test_gm_solver_nfe_independent_of_substeps(ring, name, nfe):
    """Truth: GM solvers call the model once per outer step; GM-ODE sub-steps re-use that GM (0 extra calls)."""
    for substeps in [1, 8] if "ode" in name else [None]:
        fn = _Counter(ring)
        kw = {} if substeps is None else {"substeps": substeps}
        GM_SOLVERS[name](fn, torch.randn(16, 2, generator=_gen(15)), sigma_grid(nfe), generator=_gen(16), **kw)
        assert fn.calls == nfe
