"""Classic samplers of a velocity model on the flow path (docs/method.md, Sec. 6.2-6.3).

All share ``sample(model_fn, x_init, sigmas, *, generator=None) -> x0`` with ``model_fn(x_t, sigma (B,)) -> v``,
``v`` an estimate of ``E[eps - x0 | x_t]``; ``sigmas`` decreases from 1 to 0. Heun calls the model twice per step
except the last; the model wrapper of the harness counts every call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from gmflow.gm import draw
from gmflow.guidance import orthogonal_projection
from gmflow.schedule import transition_coefficients

VelocityFn = Callable[[Tensor, Tensor], Tensor]


def _v(model_fn: VelocityFn, x: Tensor, sigma: Tensor) -> Tensor:
    return model_fn(x, sigma.expand(x.shape[0])).float()


def velocity_to_x0(x_t: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """``x0^ = x_t - sigma v``."""
    return x_t - sigma * v


def velocity_to_eps(x_t: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    """``eps^ = x_t + (1 - sigma) v``."""
    return x_t + (1 - sigma) * v


@torch.no_grad()
def euler(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """Euler on the flow ODE: ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v(x_i, sigma_i)``. One NFE per step."""
    x, sig = x_init.float(), sigmas.to(x_init.device, torch.float32)
    for i in range(len(sig) - 1):
        x = x + (sig[i + 1] - sig[i]) * _v(model_fn, x, sig[i])
    return x


@torch.no_grad()
def heun(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """Heun's 2nd-order method (EDM Algorithm 1 on the flow ODE); the last step to sigma = 0 is plain Euler.

    ``N`` steps cost ``2N - 1`` network evaluations.
    """
    x, sig = x_init.float(), sigmas.to(x_init.device, torch.float32)
    for i in range(len(sig) - 1):
        d = _v(model_fn, x, sig[i])
        x_next = x + (sig[i + 1] - sig[i]) * d
        if sig[i + 1] > 0:
            d2 = _v(model_fn, x_next, sig[i + 1])
            x_next = x + (sig[i + 1] - sig[i]) * 0.5 * (d + d2)
        x = x_next
    return x


@torch.no_grad()
def ddim(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """Deterministic DDIM (eta = 0): ``x_s = alpha_s x0^ + sigma_s eps^``.

    On the linear path this is algebraically Euler (tested); see :mod:`baselines.diffusers_samplers` for DDIM as the
    diffusers scheduler runs it.
    """
    x, sig = x_init.float(), sigmas.to(x_init.device, torch.float32)
    for i in range(len(sig) - 1):
        v = _v(model_fn, x, sig[i])
        x0, eps = velocity_to_x0(x, v, sig[i]), velocity_to_eps(x, v, sig[i])
        x = (1 - sig[i + 1]) * x0 + sig[i + 1] * eps
    return x


def ddpm_large_std(sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """Std of the DDPM "large" variance step from ``sigma`` to ``sigma_to`` on the flow path (paper A.5).

    ``sqrt(b) sigma sqrt((alpha'^2 + sigma'^2) / (alpha^2 + sigma^2))`` with
    ``b = 1 - ((sigma'/sigma)(alpha/alpha'))^2`` (the posterior variance over ``sigma'^2``). The last step
    (``sigma' = 0``, ``b = 1``) adds noise too, of std ``sigma / sqrt(alpha^2 + sigma^2)``, as the official scheduler
    does.
    """
    alpha, alpha_to = 1 - sigma, 1 - sigma_to
    b = 1 - (sigma_to / sigma.clamp(min=1e-6) * alpha / alpha_to.clamp(min=1e-6)).square()
    return b.clamp(min=0).sqrt() * sigma * ((alpha_to**2 + sigma_to**2) / (alpha**2 + sigma**2).clamp(min=1e-6)).sqrt()


def _ddpm(model_fn, x_init, sigmas, generator, large: bool) -> Tensor:
    x, sig = x_init.float(), sigmas.to(x_init.device, torch.float32)
    for i in range(len(sig) - 1):
        s, s_to = sig[i], sig[i + 1]
        v = _v(model_fn, x, s)
        c1, c2, c3 = transition_coefficients(s, s_to)
        if large:
            std = ddpm_large_std(s, s_to)
        else:
            std = c3.clamp(min=0).sqrt()
        noise = draw("randn", x, generator)
        x = c1 * x + c2 * velocity_to_x0(x, v, s) + std * noise
    return x


@torch.no_grad()
def ddpm_small(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """DDPM ancestral step with the posterior std ``sqrt(c3)`` ("small" variance)."""
    return _ddpm(model_fn, x_init, sigmas, generator, large=False)


@torch.no_grad()
def ddpm_large(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """DDPM ancestral step with the "large" std of :func:`ddpm_large_std` (noise on every step, the last included)."""
    return _ddpm(model_fn, x_init, sigmas, generator, large=True)


def cfg_velocity(v_cond: Tensor, v_uncond: Tensor, scale: float, orthogonal: float = 0.0) -> Tensor:
    """Classifier-free guidance of a velocity model: ``v_c + (w - 1) D_perp``, ``D = v_c - v_u``; ``w = 1`` is none.

    With ``orthogonal = o > 0`` the part of ``D`` along the conditional prediction is removed,
    ``D_perp = D - o <D, v_c> / <v_c, v_c> v_c`` per sample (projected guidance of Sadat et al. 2025, which the paper
    applies to its baselines too; the official code projects against the conditional velocity). At ``o = 0`` this
    is ordinary CFG ``v_u + w D``. The projection acts on the guidance term only: the conditional prediction itself is
    kept whole, so ``w = 1`` returns ``v_c`` for every ``o``.
    """
    delta = orthogonal_projection(v_cond - v_uncond, v_cond, orthogonal)
    return v_cond + (scale - 1) * delta


FLOW_SOLVERS = {"euler": euler, "heun": heun, "ddim": ddim, "ddpm-small": ddpm_small, "ddpm-large": ddpm_large}
