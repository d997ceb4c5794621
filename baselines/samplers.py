"""Classic samplers of a velocity model on the flow path (SPEC Part C).

All share ``sample(model_fn, x_init, sigmas, *, generator=None) -> x0`` with ``model_fn(x_t, sigma (B,)) -> v``,
``v`` an estimate of ``E[eps - x0 | x_t]``; ``sigmas`` decreases from 1 to 0. Heun calls the model twice per step
except the last; the model wrapper of the harness counts every call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

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


def _ddpm(model_fn, x_init, sigmas, generator, large: bool) -> Tensor:
    x, sig = x_init.float(), sigmas.to(x_init.device, torch.float32)
    for i in range(len(sig) - 1):
        s, s_to = sig[i], sig[i + 1]
        v = _v(model_fn, x, s)
        c1, c2, c3 = transition_coefficients(s, s_to)
        if large:
            b = c3 / s_to.square().clamp(min=1e-12) if s_to > 0 else torch.ones_like(s)
            a, a_to = 1 - s, 1 - s_to
            std = b.sqrt() * s * ((a_to**2 + s_to**2) / (a**2 + s**2)).sqrt() if s_to > 0 else torch.zeros_like(s)
        else:
            std = c3.clamp(min=0).sqrt()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = c1 * x + c2 * velocity_to_x0(x, v, s) + std * noise
    return x


@torch.no_grad()
def ddpm_small(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """DDPM ancestral step with the posterior std ``sqrt(c3)`` ("small" variance)."""
    return _ddpm(model_fn, x_init, sigmas, generator, large=False)


@torch.no_grad()
def ddpm_large(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator=None) -> Tensor:
    """DDPM ancestral step with the "large" std ``sqrt(b) sigma sqrt((alpha'^2 + sigma'^2) / (alpha^2 + sigma^2))``.

    ``b = 1 - r^2`` is the posterior's ``c3 / sigma'^2``; the last step (to sigma = 0) is deterministic.
    """
    return _ddpm(model_fn, x_init, sigmas, generator, large=True)


def cfg_velocity(v_cond: Tensor, v_uncond: Tensor, scale: float, x0_cond: Tensor | None = None,
                 orthogonal: float = 0.0) -> Tensor:
    """Classifier-free guidance ``v_u + w (v_c - v_u)`` (``w = 1`` is none), with optional orthogonal projection of
    ``v_c - v_u`` against the conditional x0 mean ``x0_cond`` (SPEC Part C)."""
    delta = v_cond - v_uncond
    if orthogonal and x0_cond is not None:
        delta = orthogonal_projection(delta, x0_cond, orthogonal)
    return v_uncond + scale * delta


FLOW_SOLVERS = {"euler": euler, "heun": heun, "ddim": ddim, "ddpm-small": ddpm_small, "ddpm-large": ddpm_large}
