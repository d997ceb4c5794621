"""Exact log-likelihood of a chain of LFM blocks: ``log N(z; 0, I)`` plus the divergence integrals of the block ODEs,
with the exact divergence (the Jacobian's diagonal by automatic differentiation) and a fixed-step or adaptive solver
(docs/method.md, Sec. 7.5)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torchdiffeq
from torch import Tensor

from baselines.lfm import VelocityFn, _t, local_time_grid

# ---------------------------------------------------------------------------------------------------------------------
# Exact likelihood
# ---------------------------------------------------------------------------------------------------------------------


def divergence(v: VelocityFn, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Velocity and its exact divergence ``div v = sum_i dv_i/dx_i`` by autograd, one backward pass per dimension.

    Costs ``D = C * prod(S)`` backward passes: meant for low-dimensional data (2D toys, tabular).

    Args:
        v: velocity callable, differentiable in ``x``.
        x: ``(B, C, *S)``.
        t: ``(B,)`` local times.

    Returns:
        ``v(x, t)`` ``(B, C, *S)`` and the divergence ``(B,)``, both detached.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = v(xg, t)
        flat = out.flatten(1)
        div = torch.zeros(x.shape[0], dtype=out.dtype, device=x.device)
        for i in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, i].sum(), xg, retain_graph=i + 1 < flat.shape[1])
            div = div + g.flatten(1)[:, i]
    return out.detach(), div.detach()


def standard_normal_logpdf(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per sample: ``-(|z|^2 + D log 2 pi) / 2``, ``(B,)``."""
    d = z[0].numel()
    return -0.5 * (z.flatten(1).square().sum(1) + d * math.log(2 * math.pi))


def log_likelihood(blocks: Sequence[VelocityFn], x: Tensor, num_steps: int = 100, method: str = "rk4", *,
                   rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """Exact model log-density of data points by the instantaneous change of variables (docs/method.md, Sec. 7.5).

    Along ``dx/dt = v(x, t)`` the density obeys ``d log p_t(x_t)/dt = -div v(x_t, t)``. Pushing ``x`` forward through
    blocks ``1..N`` (each ``t: 0 -> 1``) to ``z`` gives

        ``log p(x) = log N(z; 0, I) + sum_n int_0^1 div v_n(x_t, t) dt``.

    Each block is integrated on the joint state ``(x, integral)`` with ``num_steps`` fixed steps of classic RK4
    (``"rk4"``) or Euler (``"euler"``, as in the tabular LFM code with 150 points), or adaptively with dopri5
    (``"dopri5"``, tolerances ``rtol``/``atol`` on both parts of the state; ``num_steps`` unused). A velocity with
    fine spatial structure makes the divergence oscillate along a path; an adaptive solve resolves that where a
    fixed step count may not.

    Args:
        blocks: the block velocities in training order, differentiable in ``x``.
        x: ``(B, C, *S)`` data points.
        num_steps: steps per block (fixed-step methods).
        method: ``"rk4"`` (4 evaluations per step), ``"euler"`` or ``"dopri5"``.
        rtol, atol: dopri5 tolerances.

    Returns:
        ``(B,)`` log-densities (natural log, no dequantisation).
    """
    if method not in ("rk4", "euler", "dopri5"):
        raise ValueError(f"unknown method {method!r}; use 'rk4', 'euler' or 'dopri5'")
    logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if method == "dopri5":
        span = torch.tensor([0.0, 1.0], dtype=x.dtype, device=x.device)
        for v in blocks:
            def f(t, state, v=v):
                k, d = divergence(v, state[0], _t(t, state[0]))
                return k, d

            xs, ls = torchdiffeq.odeint(f, (x, torch.zeros_like(logdet)), span, rtol=rtol, atol=atol,
                                        method="dopri5")
            x, logdet = xs[-1], logdet + ls[-1]
        return standard_normal_logpdf(x) + logdet
    ts = local_time_grid(0.0, 1.0, num_steps, device=x.device)
    for v in blocks:
        for i in range(num_steps):
            t0, dt = ts[i], ts[i + 1] - ts[i]
            k1, d1 = divergence(v, x, _t(t0, x))
            if method == "euler":
                x, logdet = x + dt * k1, logdet + dt * d1
                continue
            k2, d2 = divergence(v, x + 0.5 * dt * k1, _t(t0 + 0.5 * dt, x))
            k3, d3 = divergence(v, x + 0.5 * dt * k2, _t(t0 + 0.5 * dt, x))
            k4, d4 = divergence(v, x + dt * k3, _t(t0 + dt, x))
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            logdet = logdet + dt / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    return standard_normal_logpdf(x) + logdet


