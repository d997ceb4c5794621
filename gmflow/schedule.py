"""The one time convention of the project, and the functions that convert to it.

``sigma = 1`` is pure noise and ``sigma = 0`` is data; ``alpha = 1 - sigma``; ``x_t = alpha x0 + sigma eps``;
the random velocity is ``u = eps - x0`` so that ``x0 = x_t - sigma u`` (docs/method.md, Sec. 1). Networks receive the
continuous timestep ``t = NUM_TIMESTEPS * sigma``. Anything that uses another convention is converted at the edge.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gmflow.gm import EPS, bcast

NUM_TIMESTEPS = 1000


def sigma_to_timestep(sigma: Tensor) -> Tensor:
    """Network timestep ``t = 1000 sigma`` (continuous)."""
    return sigma * NUM_TIMESTEPS


def shift_sigma(sigma: Tensor, shift: float = 1.0) -> Tensor:
    """Time shift ``S sigma / (1 + (S - 1) sigma)`` (docs/method.md, Sec. 3.1); identity for ``S = 1``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_grid(num_steps: int, shift: float = 1.0, device=None) -> Tensor:
    """Sampling grid ``sigma_i = 1 - i/M`` for ``i = 0..M-1``, shifted, then ``sigma_M = 0`` (docs/method.md, Sec. 4.1).

    Returns:
        ``(num_steps + 1,)`` float64 tensor, decreasing from 1 to 0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    s = 1 - torch.arange(num_steps, dtype=torch.float64, device=device) / num_steps
    s = shift_sigma(s, shift)
    return torch.cat([s, s.new_zeros(1)])


def subdivide(sigmas: Tensor, substeps: int) -> Tensor:
    """Split every interval of a decreasing grid into ``substeps`` equal parts (GM-ODE sub-steps,
    docs/method.md, Sec. 4.4).

    For the uniform grid this equals ``sigma_grid(nfe * substeps)``; outer points sit at indices ``0, n, 2n, ...``.
    """
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    frac = torch.arange(substeps, dtype=sigmas.dtype, device=sigmas.device) / substeps
    inner = sigmas[:-1, None] + (sigmas[1:, None] - sigmas[:-1, None]) * frac
    return torch.cat([inner.reshape(-1), sigmas[-1:]])


def paper_substeps(nfe: int) -> int:
    """GM-ODE sub-steps per network evaluation by the paper's rule (A.4): ``max(128 // NFE, 2)``, but 8 at NFE 4 or 6.

    About 128 sub-steps in all, which makes the analytic sub-steps converge at every NFE the paper reports.
    """
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return 8 if nfe in (4, 6) else max(128 // nfe, 2)


def ceil128_substeps(nfe: int) -> int:
    """``ceil(128 / NFE)`` sub-steps, the rule of the paper's 2D figures (Figs. 1-3)."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return -(-128 // nfe)


def add_noise(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """Forward process ``x_t = (1 - sigma) x0 + sigma eps`` with per-sample ``sigma (B,)``."""
    s = bcast(sigma, x0.dim()).to(x0)
    return (1 - s) * x0 + s * eps


def transition_coefficients(sigma: Tensor, sigma_to: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of the posterior ``q(x_{to} | x_t, x0) = N(c1 x_t + c2 x0, c3 I)`` for ``sigma_to < sigma``.

    With ``r = (sigma_to / sigma)(alpha / alpha_to)`` and ``b = 1 - r^2``:
    ``c1 = (sigma_to/sigma)^2 (alpha/alpha_to)``, ``c2 = b alpha_to``, ``c3 = b sigma_to^2`` (docs/method.md, Sec. 3.3;
    this is the DDPM posterior of the rectified-flow path). Denominators are floored at 1e-6, so ``sigma = 1``
    (alpha = 0) and ``sigma_to = 0`` are safe.
    """
    alpha, alpha_to = 1 - sigma, 1 - sigma_to
    ratio_s = sigma_to / sigma.clamp(min=EPS)
    ratio_a = alpha / alpha_to.clamp(min=EPS)
    b = 1 - (ratio_s * ratio_a).square()
    return ratio_s.square() * ratio_a, b * alpha_to, b * sigma_to.square()


def forward_transition(x_low: Tensor, sigma_low: Tensor, sigma_high: Tensor, eps: Tensor) -> Tensor:
    """Sample ``x_high`` from ``x_low`` with the forward transition kernel (docs/method.md, Sec. 3.2).

    ``x_h = (alpha_h / alpha_l) x_l + sqrt(sigma_h^2 - (alpha_h / alpha_l)^2 sigma_l^2) eps``.
    """
    nd = x_low.dim()
    s_l, s_h = bcast(sigma_low, nd).to(x_low), bcast(sigma_high, nd).to(x_low)
    ratio = (1 - s_h) / (1 - s_l)
    std = (s_h.square() - (ratio * s_l).square()).clamp(min=0).sqrt()
    return ratio * x_low + std * eps
