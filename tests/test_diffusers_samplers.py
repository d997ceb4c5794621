"""Tests of the diffusers-driven samplers against closed forms for Gaussian data.

For x0 ~ N(m, diag(s0^2)) and x_t = alpha x0 + sigma eps (alpha = 1 - sigma), x_t ~ N(alpha m, diag(var)) with
var = alpha^2 s0^2 + sigma^2, and Gaussian conditioning gives (per coordinate)
    E[x0 | x_t]  = m + alpha s0^2 / var (x_t - alpha m),
    E[eps | x_t] = sigma / var (x_t - alpha m),
so the exact velocity E[eps - x0 | x_t] = (sigma - alpha s0^2) / var (x_t - alpha m) - m is affine in x_t.
The flow ODE keeps the standardized coordinate z = (x_t - alpha m) / sqrt(var) fixed, so the exact flow map from
x_1 = z (sigma = 1: alpha = 0, var = 1) is x_sigma = alpha m + sqrt(var) z, and x_0 = m + s0 z.
"""

from __future__ import annotations

import math

import pytest
import torch

from baselines.diffusers_samplers import (
    DIFFUSERS_SOLVERS,
    ddim_betas,
    ddim_diffusers,
    ddim_scheduler,
    dpm_scheduler,
    dpmpp_2m,
    dpmpp_2m_sde,
    flow_to_vp,
    unipc_scheduler,
)
from baselines.samplers import FLOW_SOLVERS, ddim, euler
from gmflow.schedule import sigma_grid

M = torch.tensor([1.0, -2.0], dtype=torch.float64)  # data mean
S0 = torch.tensor([0.3, 1.5], dtype=torch.float64)  # data std per coordinate (anisotropic, one stiff direction)
# diffusers' DPMSolverMultistepScheduler.set_timesteps calls np.array on a torch tensor, which numpy 2 flags
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
ODE_SOLVERS = ["dpm++-2m", "unipc", "ddim-diffusers"]
SECOND_ORDER = ["dpm++-2m", "unipc"]


def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact E[eps - x0 | x_t] for the Gaussian data, computed in float64 and returned in ``x``'s dtype."""
    s = sigma.double()[:, None]  # (B, 1)
    a = 1 - s
    var = a.square() * S0.square() + s.square()  # (B, 2)
    return ((s - a * S0.square()) / var * (x.double() - a * M) - M).to(x.dtype)


def exact_flow_map(z: torch.Tensor) -> torch.Tensor:
    """x_0 reached by the flow ODE from x_1 = z."""
    return (M + S0 * z.double()).float()


class CountingModel:
    """Model wrapper that records every call, as the harness wrapper does."""

    def __init__(self, fn=velocity):
        self.fn, self.sigmas = fn, []

    def __call__(self, x, sigma):
        assert sigma.shape == (x.shape[0],)
        assert torch.all(sigma == sigma[0])
        self.sigmas.append(sigma[0].item())
        return self.fn(x, sigma)


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def rms(x: torch.Tensor) -> float:
    return x.square().mean().sqrt().item()


def ode_error(solver, nfe: int, z: torch.Tensor) -> float:
    """RMS distance to the exact flow map, in units of the data std per coordinate."""
    return rms((solver(velocity, z, sigma_grid(nfe)) - exact_flow_map(z)) / S0.float())


# --- conversions at the edge -----------------------------------------------------------------------------------


def test_flow_to_vp_round_trip_float64():
    sigma = torch.cat([torch.tensor([0.0, 1.0]), torch.rand(64, generator=torch.Generator().manual_seed(3))]).double()
    x0, eps = torch.randn(2, 66, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    alpha = (1 - sigma)[:, None]
    alpha_bar, scale = flow_to_vp(sigma)
    x_t = alpha * x0 + sigma[:, None] * eps
    x_vp = x_t / scale[:, None]
    torch.testing.assert_close(x_vp, alpha_bar.sqrt()[:, None] * x0 + (1 - alpha_bar).sqrt()[:, None] * eps)
    torch.testing.assert_close(scale[None, :] * x_vp.T, x_t.T)  # and back
    inner = sigma < 1
    sigma_ve = sigma[inner] / (1 - sigma[inner])
    torch.testing.assert_close(alpha_bar[inner], 1 / (1 + sigma_ve.square()))
    assert alpha_bar[0] == 1 and alpha_bar[1] == 0 and scale[0] == 1 and scale[1] == 1


@pytest.mark.parametrize("nfe,shift", [(1, 1.0), (4, 1.0), (32, 1.0), (7, 3.0)])
def test_ddim_table_is_the_grid(nfe, shift):
    sigmas = sigma_grid(nfe, shift)
    sched = ddim_scheduler(sigmas)
    assert sched.timesteps.tolist() == list(range(nfe - 1, -1, -1))
    assert sched.config.num_train_timesteps // sched.num_inference_steps == 1  # DDIM's stride: one node per step
    expected = flow_to_vp(sigmas[:-1])[0].float()  # node i <-> training timestep nfe - 1 - i
    torch.testing.assert_close(sched.alphas_cumprod[sched.timesteps], expected, rtol=1e-5, atol=1e-7)
    assert sched.final_alpha_cumprod == 1  # the last node, sigma = 0
    assert ddim_betas(sigmas)[-1] == 1  # sigma = 1 <-> alpha_bar = 0


@pytest.mark.parametrize("nfe,shift", [(1, 1.0), (2, 1.0), (10, 1.0), (7, 3.0)])
def test_schedulers_carry_the_grid(nfe, shift):
    sigmas = sigma_grid(nfe, shift)
    grid32 = sigmas.float()
    for algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
        assert torch.equal(dpm_scheduler(sigmas, algorithm_type).sigmas, grid32)  # sigma = 1 kept exactly
    uni = unipc_scheduler(sigmas).sigmas
    assert torch.equal(uni[1:], grid32[1:])
    assert uni[0] == torch.tensor(1 - 1e-6, dtype=torch.float32)  # diffusers' own clamp of a first node of 1


# --- NFE counting and the grid seen by the network ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DIFFUSERS_SOLVERS))
@pytest.mark.parametrize("nfe,shift", [(1, 1.0), (2, 1.0), (5, 1.0), (7, 3.0)])
def test_nfe_and_sigmas_seen_by_model(name, nfe, shift):
    sigmas = sigma_grid(nfe, shift)
    model = CountingModel()
    out = DIFFUSERS_SOLVERS[name](model, noise(16), sigmas, generator=torch.Generator().manual_seed(1))
    assert len(model.sigmas) == nfe
    assert model.sigmas == sigmas[:-1].float().tolist()
    assert out.dtype == torch.float32 and out.shape == (16, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(DIFFUSERS_SOLVERS))
def test_one_step_gives_posterior_mean(name):
    # From sigma = 1 straight to 0 every solver returns x0^ = x_1 - v(x_1, 1) = E[x0 | x_1] = m. UniPC's scheduler
    # uses sigma = 1 - 1e-6 there (x0^ off by 1e-6 |v|), hence the tolerance.
    out = DIFFUSERS_SOLVERS[name](velocity, noise(64), sigma_grid(1), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, M.float().expand(64, 2), rtol=0, atol=2e-5)


# --- ODE solvers: convergence to the exact flow map --------------------------------------------------------------


@pytest.mark.parametrize("name", ODE_SOLVERS)
def test_ode_converges_to_exact_flow_map(name):
    z = noise(512)
    err = {n: ode_error(DIFFUSERS_SOLVERS[name], n, z) for n in (4, 16, 32)}
    assert err[32] < err[4] / 5
    assert err[32] < 0.1  # RMS in data stds; measured 0.052 (DDIM = Euler), 0.0074 (DPM++ 2M), 0.0042 (UniPC)


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_second_order_beats_euler(name):
    """Second order vs Euler's first: smaller error at NFE 32 and an observed order near 2 at NFE 64 -> 128.

    On the uniform sigma grid the steps in lambda = log(alpha / sigma) do not shrink at either end (the first one is
    infinite, the last ones stay near log 2), so the order is reached only asymptotically: measured 64 -> 128 orders
    are 1.56 (DPM++ 2M), 1.93 (UniPC) and 0.99 (Euler); at NFE 16 -> 32 the error even passes through a sign change.
    """
    z = noise(512)
    err = {n: ode_error(DIFFUSERS_SOLVERS[name], n, z) for n in (32, 64, 128)}
    err_euler = {n: ode_error(euler, n, z) for n in (32, 64, 128)}
    assert err[32] < err_euler[32] / 5
    assert err[32] < 0.02
    assert math.log2(err[64] / err[128]) > 1.4
    assert math.log2(err_euler[64] / err_euler[128]) < 1.1


def reference_dpmpp_2m(x: torch.Tensor, sigmas: torch.Tensor, generator=None) -> torch.Tensor:
    """Float64 DPM-Solver++(2M) (Lu et al. 2022, Alg. 2; SDE variant with the midpoint correction), written from the
    paper on the flow path: alpha = 1 - sigma, lambda = log(alpha / sigma). First step first order, last step
    (to sigma = 0) first order, which returns x0^. With ``generator`` draws one float32 normal per step like diffusers.
    """
    sde = generator is not None
    x, sig = x.double(), sigmas.double()
    lam = torch.log(1 - sig) - torch.log(sig)  # -inf at sigma = 1, +inf at sigma = 0
    x0_prev = None
    for i in range(len(sig) - 1):
        s, t = sig[i], sig[i + 1]
        x0 = x - s * velocity(x, s.expand(x.shape[0]))
        z = torch.randn(x.shape, generator=generator, dtype=torch.float32).double() if sde else None
        if t == 0:
            return x0
        h = lam[i + 1] - lam[i]
        d = x0 if x0_prev is None else x0 + 0.5 * (h / (lam[i] - lam[i - 1])) * (x0 - x0_prev)  # 1/r -> 0 at -inf
        if sde:
            x = (t / s) * torch.exp(-h) * x - (1 - t) * torch.expm1(-2 * h) * d + t * (-torch.expm1(-2 * h)).sqrt() * z
        else:
            x = (t / s) * x - (1 - t) * torch.expm1(-h) * d
        x0_prev = x0
    return x


@pytest.mark.parametrize("nfe,shift", [(2, 1.0), (3, 1.0), (16, 1.0), (9, 3.0)])
def test_dpmpp_matches_float64_reference(nfe, shift):
    sigmas, z = sigma_grid(nfe, shift), noise(256)
    torch.testing.assert_close(dpmpp_2m(velocity, z, sigmas).double(), reference_dpmpp_2m(z, sigmas), rtol=0, atol=5e-5)
    out = dpmpp_2m_sde(velocity, z, sigmas, generator=torch.Generator().manual_seed(7))
    ref = reference_dpmpp_2m(z, sigmas, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=5e-5)


# --- DDIM as diffusers drives it == DDIM / Euler of baselines.samplers ---------------------------------------------


@pytest.mark.parametrize("nfe,shift", [(1, 1.0), (4, 1.0), (32, 1.0), (128, 1.0), (9, 3.0)])
def test_ddim_diffusers_is_euler(nfe, shift):
    """Same algorithm, so the outputs differ only by float32 rounding.

    The two compute the same affine update in different arithmetic (VP rescaling, a float32 cumulative product for
    alpha_bar, sqrt(1 - alpha_bar) with 1 - alpha_bar ~ sigma^2 near the data end), so each step rounds differently by
    a few ulps of |x| (<= ~8 here); independent roundings add up like a random walk over the N steps. The tolerance
    4 sqrt(N) eps32 max|x| is thus a generous float32 bound (observed: 2.4e-6 at N = 32, vs 1.8e-5 allowed), and it is
    far below the first-order discretization error (0.25 at N = 32): any difference in the algorithm would show.
    """
    sigmas, z = sigma_grid(nfe, shift), noise(512)
    out = ddim_diffusers(velocity, z, sigmas)
    out_euler, out_ddim = euler(velocity, z, sigmas), ddim(velocity, z, sigmas)
    tol = 4 * math.sqrt(nfe) * torch.finfo(torch.float32).eps * out_euler.abs().max().item()
    torch.testing.assert_close(out, out_euler, rtol=0, atol=tol)
    torch.testing.assert_close(out, out_ddim, rtol=0, atol=tol)
    if nfe > 1:
        assert (out - out_euler).abs().max() < 1e-3 * (out_euler - exact_flow_map(z)).abs().max()


# --- DPM++ 2M SDE: Monte Carlo moments -----------------------------------------------------------------------------


def test_dpmpp_2m_sde_reproduces_data_moments():
    """Mean and variance per coordinate within 4 standard errors.

    n = 10000: SE(mean) = s0 / sqrt(n), SE(var) / s0^2 = sqrt(2 / (n - 1)) = 1.4%. The solver's discretization bias at
    NFE 256 (measured with 1e6 samples: +0.5% on the variance of the stiff s0 = 0.3 coordinate, +0.06% on the other)
    is below a third of one SE, so 4 SE is the tolerance.
    """
    n, nfe = 10_000, 256
    gen = torch.Generator().manual_seed(11)
    x = dpmpp_2m_sde(velocity, noise(n, seed=10), sigma_grid(nfe), generator=gen).double()
    se_mean = S0 / math.sqrt(n)
    assert ((x.mean(0) - M).abs() < 4 * se_mean).all(), (x.mean(0), M)
    ratio = x.var(0) / S0.square()
    assert ((ratio - 1).abs() < 4 * math.sqrt(2 / (n - 1))).all(), ratio


def test_sde_noise_comes_from_generator():
    z, sigmas = noise(8), sigma_grid(6)

    def run(seed):
        return dpmpp_2m_sde(velocity, z, sigmas, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
    # one generator per sample (STYLE 4): sample i does not depend on the batch it is drawn in
    gens = [torch.Generator().manual_seed(100 + i) for i in range(8)]
    full = dpmpp_2m_sde(velocity, z, sigmas, generator=gens)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(3)]
    torch.testing.assert_close(dpmpp_2m_sde(velocity, z[:3], sigmas, generator=gens), full[:3])


def test_calls_share_no_state():
    sigmas = sigma_grid(5)
    for name in ODE_SOLVERS:
        first = DIFFUSERS_SOLVERS[name](velocity, noise(8), sigmas)
        DIFFUSERS_SOLVERS[name](velocity, noise(8, seed=5), sigma_grid(9, 3.0))  # a different run in between
        assert torch.equal(DIFFUSERS_SOLVERS[name](velocity, noise(8), sigmas), first)


# --- input checks and registry --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sigmas,match",
    [
        (torch.tensor([1.0, 0.5, 0.1]), "exactly 0"),
        (torch.tensor([1.0, 0.6, 0.7, 0.0]), "strictly decreasing"),
        (torch.tensor([1.5, 0.5, 0.0]), "at most 1"),
        (torch.zeros(2, 3), "1-D"),
    ],
)
@pytest.mark.parametrize("name", sorted(DIFFUSERS_SOLVERS))
def test_bad_grid_is_reported(name, sigmas, match):
    with pytest.raises(ValueError, match=match):
        DIFFUSERS_SOLVERS[name](velocity, noise(4), sigmas)


def test_registry_keys():
    assert set(DIFFUSERS_SOLVERS) == {"dpm++-2m", "dpm++-2m-sde", "unipc", "ddim-diffusers"}
    assert not set(DIFFUSERS_SOLVERS) & set(FLOW_SOLVERS)


@pytest.mark.parametrize("name", sorted(DIFFUSERS_SOLVERS))
def test_image_shaped_input(name):
    # (B, C, H, W) latents: the same per-element dynamics as the 2D toy (x0 = 0.5 everywhere, s0 = 1).
    def model_fn(x, sigma):
        s = sigma.view(-1, 1, 1, 1)
        return (2 * s - 1) / ((1 - s).square() + s.square()) * (x - (1 - s) * 0.5) - 0.5

    z = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    out = DIFFUSERS_SOLVERS[name](model_fn, z, sigma_grid(64), generator=torch.Generator().manual_seed(1))
    assert out.shape == z.shape and out.dtype == torch.float32
    tol = 5e-3 if name in ("dpm++-2m", "unipc") else 0.1  # measured 1.0e-3, 8.3e-4; DDIM (Euler) 0.058
    if name != "dpm++-2m-sde":
        torch.testing.assert_close(out, z + 0.5, rtol=0, atol=tol)  # exact flow map: x0 = 0.5 + z
