"""GM-SDE and GM-ODE solvers, first and second order (docs/method.md, Sec. 4.3-4.5; Sec. 3.2-3.3 of Chen et al. 2025).

Every sampler has the signature ``sample(model_fn, x_init, sigmas, *, generator=None, **options) -> x0`` where
``model_fn(x_t, sigma)`` returns either a velocity-space :class:`GaussianMixture` (unguided) or a
:class:`GMPrediction` in x0 space (guided; see :mod:`gmflow.guidance`). ``sigmas`` is the decreasing outer grid of
``NFE + 1`` levels from 1 to 0: the network is called once per outer step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gmflow.gm import (
    EPS,
    GaussianMixture,
    IsoGaussian,
    bcast,
    draw,
    gaussian_ratio_natural,
    gm_mul_natural,
    gm_recondition_mean,
    sample_dims,
    u_to_x0,
)
from gmflow.guidance import GMPrediction, pixel_averaged_gaussian
from gmflow.schedule import paper_substeps, subdivide, transition_coefficients

ModelFn = Callable[[Tensor, Tensor], "GaussianMixture | GMPrediction"]
# x0 sampler for GM-SDE: (gm_x0, target_gaussian, generator) -> x0 sample (B, C, *S). Spectral sampling plugs in here.
X0Sampler = Callable[[GaussianMixture, IsoGaussian, "torch.Generator | None"], Tensor]


def _predict(model_fn: ModelFn, x: Tensor, sigma: Tensor) -> GMPrediction:
    out = model_fn(x, sigma.expand(x.shape[0]))
    if isinstance(out, GaussianMixture):
        return GMPrediction(gm=u_to_x0(out.to(torch.float32), x.float(), sigma.expand(x.shape[0])))
    if isinstance(out, GMPrediction):
        return out
    raise TypeError(f"a GM solver needs model_fn to return GaussianMixture or GMPrediction, got {type(out).__name__}")


@dataclass
class SecondOrderCache:
    """State of the 2nd-order multistep GM solver: the previous (guided, not extrapolated) GM and where it was made."""

    gm: GaussianMixture | None = None
    x: Tensor | None = None
    sigma: Tensor | None = None
    h: Tensor | None = None


def second_order_gm(
    pred: GMPrediction,
    x_t: Tensor,
    sigma: Tensor,
    h: Tensor,
    cache: SecondOrderCache,
    ca: float = 0.005,
    cb: float = 1.0,
) -> tuple[GaussianMixture, IsoGaussian]:
    """Second-order GM extrapolation with one combined Gaussian mask (docs/method.md, Sec. 4.5; Eq. 15-16 of the paper).

    ``mu-`` is the mean of the previous GM re-conditioned to ``(x_t, sigma)``; ``Delta mu = (mu+ - mu-)(h / 2 h_prev)
    sqrt(max(0, 1 - v (w~^2 cb^2 + ca) / h_prev^2))``; ``B = Delta mu + b`` (guidance bias), rescaled to RMS at most
    ``sqrt(v)``; target ``N(m_base + B, v max(1 - P/v, 1e-6))``; the new GM is ``base x target / N(m_base, v)``.
    ``h`` is the outer step in sigma units. The cache keeps the guided GM before extrapolation.

    Returns:
        the GM to sample from and its target Gaussian (the input of a spectrum network).
    """
    if pred.bias is not None:
        base_gm, base_g = pred.base, pred.base_gaussian
        mean_plus = pred.gm.mean()
    else:
        base_gm = pred.gm
        base_g = pixel_averaged_gaussian(pred.gm)
        mean_plus = base_g.mean
    avg_var = base_g.var
    out_gm, out_g = pred.gm, (pred.target if pred.target is not None else IsoGaussian(mean_plus, avg_var))
    if cache.gm is not None:
        mean_minus = gm_recondition_mean(cache.gm, cache.x, cache.sigma, x_t, sigma)
        nd = x_t.dim()
        k = bcast(0.5 * h / cache.h, nd).to(x_t)
        prev_h = bcast(cache.h, nd).to(x_t)
        err_power = avg_var * ((pred.scale * cb) ** 2 + ca)
        damp = (1 - err_power / prev_h.square()).clamp(min=0).sqrt()
        bias = (mean_plus - mean_minus) * damp * k
        if pred.bias is not None:
            bias = bias + pred.bias
        power = bias.square().mean(sample_dims(bias), keepdim=True)
        bias = bias * (avg_var.sqrt() * power.clamp(min=EPS).rsqrt()).clamp(max=1)  # RMS(bias) <= sqrt(v)
        out_g = IsoGaussian(base_g.mean + bias, base_g.var * (1 - power / avg_var.clamp(min=EPS)).clamp(min=EPS))
        out_gm = gm_mul_natural(base_gm, *gaussian_ratio_natural(out_g, base_g))  # finite for every log-std
    cache.gm, cache.x, cache.sigma, cache.h = pred.gm, x_t, sigma, h
    return out_gm, out_g


def _outer_gm(pred: GMPrediction, x, sigma, sigma_next, order, cache, ca, cb):
    if order == 1:
        return pred.gm, (pred.target if pred.target is not None else pred.gm.iso_gaussian())
    return second_order_gm(pred, x, sigma, sigma - sigma_next, cache, ca, cb)


def _check(sigmas: Tensor, order: int):
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    if sigmas.dim() != 1 or len(sigmas) < 2 or not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be a strictly decreasing 1D grid with at least two levels")


@torch.no_grad()
def sample_gm_sde(
    model_fn: ModelFn,
    x_init: Tensor,
    sigmas: Tensor,
    *,
    order: int = 1,
    generator: torch.Generator | None = None,
    x0_sampler: X0Sampler | None = None,
    ca: float = 0.005,
    cb: float = 1.0,
) -> Tensor:
    """GM-SDE: draw ``x0^ ~ q(x0 | x_t)`` then ``x_{t'} = c1 x_t + c2 x0^ + sqrt(c3) eps`` (docs/method.md, Sec. 4.3).

    Exact when the GM is the true posterior. ``order = 2`` is GM-SDE 2. ``x0_sampler`` replaces the pixel-wise
    GM sampling (e.g. spectral sampling); it receives the GM and its target Gaussian.
    """
    _check(sigmas, order)
    x = x_init.float()
    cache = SecondOrderCache()
    sig = sigmas.to(x)
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        pred = _predict(model_fn, x, s)
        gm, target = _outer_gm(pred, x, s, s_next, order, cache, ca, cb)
        x0 = x0_sampler(gm, target, generator) if x0_sampler is not None else gm.sample(generator)
        c1, c2, c3 = transition_coefficients(s, s_next)
        noise = draw("randn", x, generator)
        x = c1 * x + c2 * x0 + c3.clamp(min=0).sqrt() * noise
    return x


@torch.no_grad()
def sample_gm_ode(
    model_fn: ModelFn,
    x_init: Tensor,
    sigmas: Tensor,
    *,
    substeps: int | None = None,
    order: int = 1,
    generator: torch.Generator | None = None,
    ca: float = 0.005,
    cb: float = 1.0,
) -> Tensor:
    """GM-ODE with analytic sub-steps (docs/method.md, Sec. 4.4; Sec. 3.2 of the paper).

    Each outer step evaluates the network once; each of its ``substeps`` Euler sub-steps of the flow ODE uses the
    x0 mean of the SAME GM re-conditioned to the current ``(x_j, sigma_j)`` (the first sub-step uses the plain mean).
    The sub-step grid splits each outer interval evenly. By default ``substeps`` follows the paper's rule
    (:func:`gmflow.schedule.paper_substeps` of the NFE ``len(sigmas) - 1``: 8 at NFE 4 or 6, else ``max(128 // NFE,
    2)``); ``substeps = 1`` is Euler on the GM mean (ablation B1), not GM-ODE.
    """
    _check(sigmas, order)
    if substeps is None:
        substeps = paper_substeps(len(sigmas) - 1)
    del generator  # deterministic
    x = x_init.float()
    cache = SecondOrderCache()
    sig = sigmas.to(x)
    fine = subdivide(sig, substeps)
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        pred = _predict(model_fn, x, s)
        gm, _ = _outer_gm(pred, x, s, s_next, order, cache, ca, cb)
        x_src = x
        means_sq = gm.means.square().sum(2, keepdim=True) if substeps > 1 else None
        for j in range(substeps):
            s_j, s_j1 = fine[i * substeps + j], fine[i * substeps + j + 1]
            x0 = gm.mean() if j == 0 else gm_recondition_mean(gm, x_src, s, x, s_j, means_sq)
            x = x + (x - x0) / s_j.clamp(min=EPS) * (s_j1 - s_j)
    return x


def gm_sde(model_fn, x_init, sigmas, *, generator=None, **kw):
    """GM-SDE, first order."""
    return sample_gm_sde(model_fn, x_init, sigmas, order=1, generator=generator, **kw)


def gm_sde_2(model_fn, x_init, sigmas, *, generator=None, **kw):
    """GM-SDE 2 (second-order multistep)."""
    return sample_gm_sde(model_fn, x_init, sigmas, order=2, generator=generator, **kw)


def gm_ode(model_fn, x_init, sigmas, *, generator=None, **kw):
    """GM-ODE, first order, with analytic sub-steps."""
    return sample_gm_ode(model_fn, x_init, sigmas, order=1, generator=generator, **kw)


def gm_ode_2(model_fn, x_init, sigmas, *, generator=None, **kw):
    """GM-ODE 2 (second-order multistep) with analytic sub-steps."""
    return sample_gm_ode(model_fn, x_init, sigmas, order=2, generator=generator, **kw)


GM_SOLVERS = {"gm-sde": gm_sde, "gm-sde-2": gm_sde_2, "gm-ode": gm_ode, "gm-ode-2": gm_ode_2}
