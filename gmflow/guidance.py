"""Probabilistic guidance and vanilla CFG on x0-space GMs (docs/method.md, Sec. 4.6-4.7;
Sec. 3.3 of Chen et al. 2025)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gmflow.gm import (
    EPS,
    GaussianMixture,
    IsoGaussian,
    gaussian_ratio_natural,
    gm_mul_natural,
    pixel_dims,
    sample_dims,
    u_to_x0,
)


@dataclass(frozen=True)
class GMPrediction:
    """What a GM solver receives at one network evaluation, in x0 space.

    Attributes:
        gm: the x0-space GM to sample from (the guided one when guidance is on).
        base: the unguided conditional x0 GM (probabilistic guidance only; the 2nd-order solver extrapolates it).
        base_gaussian: its surrogate ``N(m_c, v_c)`` with the variance averaged over pixels (per sample).
        bias: the guidance bias ``b`` ``(B, C, *S)``.
        target: the guidance target ``N(m_c + b, (1 - w~^2) v_c)``.
        scale: the guidance scale ``w~``.
    """

    gm: GaussianMixture
    base: GaussianMixture | None = None
    base_gaussian: IsoGaussian | None = None
    bias: Tensor | None = None
    target: IsoGaussian | None = None
    scale: float = 0.0

def pixel_averaged_gaussian(gm: GaussianMixture) -> IsoGaussian:
    """Isotropic surrogate of a GM with its variance averaged over pixels: one variance per sample ``(B, 1, *1)``."""
    g = gm.iso_gaussian()
    dims = pixel_dims(g.mean)
    var = g.var.mean(dim=dims, keepdim=True) if dims else g.var
    return IsoGaussian(g.mean, var)

def orthogonal_projection(delta: Tensor, axis: Tensor, orthogonal: float = 1.0) -> Tensor:
    """Remove ``orthogonal`` times the component of ``delta`` along ``axis``, per sample (Sadat et al. 2025).

    ``delta - o <delta, axis> / max(<axis, axis>, 1e-6) axis`` with ``<.,.>`` the mean over ``C, *S``.
    """
    if orthogonal == 0:
        return delta
    dims = sample_dims(delta)
    coef = (delta * axis).mean(dims, keepdim=True) / (axis * axis).mean(dims, keepdim=True).clamp(min=EPS)
    return delta - orthogonal * coef * axis

def probabilistic_guidance(
    gm_cond: GaussianMixture, mean_uncond: Tensor, scale: float, orthogonal: float = 1.0
) -> GMPrediction:
    """Probabilistic guidance (docs/method.md, Sec. 4.6).

    With the conditional surrogate ``N(m_c, v_c)`` (variance averaged over pixels) and ``Delta = m_c - m_u``
    (orthogonally projected against ``m_c``), the bias is ``b = w~ sqrt(v_c / mean(Delta^2)) Delta`` so that
    ``RMS(b) = w~ sqrt(v_c)``. The target is ``N(m_c + b, (1 - w~^2) v_c)`` and the guided GM is
    ``G_c x N_target / N(m_c, v_c)``, renormalised.

    Args:
        gm_cond: conditional x0-space GM.
        mean_uncond: unconditional x0 mean ``(B, C, *S)``.
        scale: ``w~`` in [0, 1).
        orthogonal: projection factor ``o`` (0 disables it).
    """
    if not 0 <= scale < 1:
        raise ValueError(f"probabilistic guidance scale w~ must be in [0, 1), got {scale}")
    base_gaussian = pixel_averaged_gaussian(gm_cond)
    m_c, v_c = base_gaussian.mean, base_gaussian.var
    delta = orthogonal_projection(m_c - mean_uncond, m_c, orthogonal)
    power = delta.square().mean(sample_dims(delta), keepdim=True)
    bias = delta * (scale * v_c.sqrt() * power.clamp(min=EPS).rsqrt())  # no v_c / power: it can overflow
    target = IsoGaussian(m_c + bias, v_c * (1 - scale * scale))
    # G_c x N_target / N_base in natural parameters: finite for every log-std and every w~ (docs/method.md, Sec. 1.6)
    gm = gm_mul_natural(gm_cond, *gaussian_ratio_natural(target, base_gaussian)) if scale > 0 else gm_cond
    return GMPrediction(gm=gm, base=gm_cond, base_gaussian=base_gaussian, bias=bias, target=target, scale=scale)

def gm_cfg(gm_cond: GaussianMixture, mean_uncond: Tensor, scale: float, orthogonal: float = 0.0) -> GaussianMixture:
    """Vanilla CFG on a GM (ablation A3 of Table 4): shift every conditional component by ``(w - 1) D_perp``.

    ``D = m_c - m_u`` (``m_c`` the conditional GM's mean); with ``orthogonal = o`` its part along ``m_c`` is removed,
    ``D_perp = D - o <D, m_c> / <m_c, m_c> m_c``. The weights and the variance are unchanged and ``w = 1`` is no
    guidance. The function is the same in any space; the sampler applies it to the velocity-space GMs, as the
    official code does (its axis is then the conditional velocity mean), before converting to x0 space.
    """
    m_c = gm_cond.mean()
    shift = (scale - 1) * orthogonal_projection(m_c - mean_uncond, m_c, orthogonal)
    return GaussianMixture(gm_cond.means + shift.unsqueeze(1), gm_cond.logweights, gm_cond.logstds)

def guided_gm_prediction(
    gm_cond_u: GaussianMixture,
    gm_uncond_u: GaussianMixture | None,
    x_t: Tensor,
    sigma: Tensor,
    mode: str = "none",
    scale: float = 0.0,
    orthogonal: float = 1.0,
) -> GMPrediction:
    """Apply the guidance ``mode`` (``none``, ``probabilistic`` or ``cfg``) and return the x0-space prediction.

    Probabilistic guidance acts on the x0-space GMs (Sec. 3.3 of the paper); vanilla CFG (ablation A3) shifts the
    velocity-space means by ``(w - 1) D_perp`` before the conversion, as the official sampler does.
    """

    if mode not in ("none", "probabilistic", "cfg"):
        raise ValueError(f"unknown GM guidance mode {mode!r}; choose none, probabilistic or cfg")
    if mode != "none" and gm_uncond_u is None:
        raise ValueError(f"guidance mode {mode!r} needs an unconditional prediction")
    gm_cond_u = gm_cond_u.to(torch.float32)
    if mode == "cfg":  # vanilla CFG shifts the velocity-space means (official A3), then the GM goes to x0 space
        gm_cond_u = gm_cfg(gm_cond_u, gm_uncond_u.to(torch.float32).mean(), scale, orthogonal)
    gm_c = u_to_x0(gm_cond_u, x_t.float(), sigma)
    if mode != "probabilistic":
        return GMPrediction(gm=gm_c)
    m_u = u_to_x0(gm_uncond_u.to(torch.float32), x_t.float(), sigma).mean()
    return probabilistic_guidance(gm_c, m_u, scale, orthogonal)
