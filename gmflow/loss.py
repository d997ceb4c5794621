"""GMFlow training losses: the transition loss (docs/method.md, Sec. 3.2-3.4; Sec. 3.4 of Chen et al. 2025)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gmflow.gm import EPS, GaussianMixture, bcast, pixel_dims
from gmflow.schedule import add_noise, forward_transition, transition_coefficients


@dataclass(frozen=True)
class TransitionPair:
    """A training pair: ``x_low`` at ``sigma_low`` and ``x_high`` drawn from it by the forward transition."""

    x_low: Tensor
    x_high: Tensor
    sigma_low: Tensor
    sigma_high: Tensor


def sample_transition_pair(
    x0: Tensor, sigma_high: Tensor, trans_ratio: float, eps0: Tensor, eps1: Tensor, min_gap: float = 1e-7
) -> TransitionPair:
    """Build ``(x_low, x_high)`` for the transition loss.

    ``sigma_low = clamp(min(sigma_high (1 - lambda), sigma_high - 1e-7), min=0)`` (the reference code's 1e-4 in
    timestep units), ``x_low = (1 - sigma_low) x0 + sigma_low eps0`` and ``x_high`` from the forward transition with
    fresh noise ``eps1``. Sampling ``x_high`` independently of ``x_low`` would break the loss
    (docs/method.md, Sec. 3.2).

    Args:
        x0: data ``(B, C, *S)``.
        sigma_high: ``(B,)`` in (0, 1].
        trans_ratio: lambda in (0, 1]; 1 gives ``x_low = x0``.
        eps0, eps1: standard normal noise shaped like ``x0``.
    """
    if not 0 < trans_ratio <= 1:
        raise ValueError(f"trans_ratio (lambda) must be in (0, 1], got {trans_ratio}")
    sigma_low = torch.minimum(sigma_high * (1 - trans_ratio), sigma_high - min_gap).clamp(min=0)
    x_low = add_noise(x0, eps0, sigma_low)
    x_high = forward_transition(x_low, sigma_low, sigma_high, eps1)
    return TransitionPair(x_low, x_high, sigma_low, sigma_high)


def transition_gm(gm_u: GaussianMixture, x_high: Tensor, sigma_high: Tensor, sigma_low: Tensor) -> GaussianMixture:
    """The predicted transition ``q(x_low | x_high)`` as a GM (docs/method.md, Sec. 3.3).

    Components ``N(c1 x_h + c2 (x_h - sigma_h mu_k), v I)`` with ``v = (c2 sigma_h s)^2 + c3``, computed as
    ``log sqrt(v) = logaddexp(2 (log s + log max(sigma_h c2, 1e-6)), log max(c3, 1e-6)) / 2``.
    """
    nd = x_high.dim()
    s_h, s_l = bcast(sigma_high, nd).to(x_high), bcast(sigma_low, nd).to(x_high)
    c1, c2, c3 = transition_coefficients(s_h, s_l)
    x0_means = x_high.unsqueeze(1) - s_h.unsqueeze(1) * gm_u.means
    means = c1.unsqueeze(1) * x_high.unsqueeze(1) + c2.unsqueeze(1) * x0_means
    logstds = 0.5 * torch.logaddexp(
        2 * (gm_u.logstds + torch.log((s_h * c2).clamp(min=EPS)).unsqueeze(1)),
        torch.log(c3.clamp(min=EPS)).unsqueeze(1),
    )
    return GaussianMixture(means, gm_u.logweights, logstds)


def gm_nll(gm: GaussianMixture, x: Tensor, max_inv_std: float = 1e4, include_constant: bool = False) -> Tensor:
    """Per-sample NLL of ``x (B, C, *S)``: channels summed, pixels averaged (docs/method.md, Sec. 3.4).

    ``l_p = -logsumexp_k [log A_k - ||x_p - mu_k||^2 / (2 s^2) - C log s]`` with ``1/s`` capped at ``max_inv_std``.
    The ``(C/2) log 2 pi`` term is left out unless ``include_constant``.

    Returns:
        ``(B,)``.
    """
    c = gm.num_channels
    inv_std = torch.exp(-gm.logstds).clamp(max=max_inv_std)
    sq = ((x.unsqueeze(1) - gm.means) * inv_std).square().sum(2, keepdim=True)
    comp = gm.logweights - 0.5 * sq + c * torch.log(inv_std)
    nll = -torch.logsumexp(comp, dim=1).squeeze(1)  # (B, *S)
    if include_constant:
        nll = nll + 0.5 * c * math.log(2 * math.pi)
    dims = pixel_dims(x)
    return nll.mean(dim=tuple(d - 1 for d in dims)) if dims else nll


def transition_loss(gm_u: GaussianMixture, pair: TransitionPair) -> Tensor:
    """GMFlow transition loss per sample: NLL of ``x_low`` under the predicted transition GM (Sec. 3.4 of the paper).

    ``lambda = 1`` gives the x0-NLL, which is the velocity NLL of Eq. 6 up to a constant; with ``K = 1`` and ``s = 1``
    that is the L2 flow-matching loss up to a constant and a per-sample weight.

    Returns:
        ``(B,)``; the training step reduces and scales it (``weight_scale``).
    """
    gm_l = transition_gm(gm_u.to(torch.float32), pair.x_high.float(), pair.sigma_high, pair.sigma_low)
    return gm_nll(gm_l, pair.x_low.float())


def velocity_nll(gm_u: GaussianMixture, u: Tensor) -> Tensor:
    """Plain velocity NLL (Eq. 6), per sample, with the Gaussian constant: the quantity behind bits/dim."""
    return gm_nll(gm_u.to(torch.float32), u.float(), include_constant=True)
