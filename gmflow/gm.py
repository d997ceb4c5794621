"""Gaussian mixtures with one shared isotropic variance, and their algebra.

Shapes (docs/method.md, Sec. 1.3). A sample tensor is ``(B, C, *S)`` where ``S`` is the spatial shape (``(H, W)`` for
images, empty for 2D points). A mixture over such tensors stores

- ``means``      ``(B, K, C, *S)``
- ``logweights`` ``(B, K, 1, *S)``, normalised over K (log_softmax)
- ``logstds``    ``(B, 1, 1, *1)``: one log standard deviation per sample, shared by K, C and every pixel.

Each pixel ``p`` carries an independent mixture over its C channels:
``q(x_p) = sum_k A_{k,p} N(x_p; mu_{k,p}, s^2 I_C)`` (Eq. 4 of Chen et al. 2025).

Weights always stay in the log domain; denominators are floored at ``EPS`` as in the reference implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-6


def bcast(v: Tensor | float, ndim: int) -> Tensor:
    """Reshape a per-sample value ``(B,)`` (or a scalar) to ``(B, 1, ..., 1)`` with ``ndim`` dimensions.

    The single broadcasting helper of the project: 2D toys (``ndim = 2``) and images (``ndim = 4``) use the same code.
    """
    v = torch.as_tensor(v)
    if v.dim() == 0:
        return v.reshape((1,) * ndim)
    return v.reshape(v.shape[0], *((1,) * (ndim - 1)))


def draw(kind: str, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``torch.rand`` (``kind = "rand"``) or ``torch.randn`` of ``like``'s shape and dtype, drawn on the generator's
    device and moved to ``like``'s: a CPU generator gives the same numbers whether the sampler runs on a CPU or a GPU.
    """
    fn = torch.rand if kind == "rand" else torch.randn
    device = generator.device if generator is not None else like.device
    return fn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def sample_dims(x: Tensor) -> tuple[int, ...]:
    """Dimensions C, *S of a sample tensor (B, C, *S): the per-sample reduction of Eq. 13-14."""
    return tuple(range(1, x.dim()))


def pixel_dims(x: Tensor) -> tuple[int, ...]:
    """Spatial dimensions *S of a sample tensor (B, C, *S) (empty for 2D points)."""
    return tuple(range(2, x.dim()))


@dataclass(frozen=True)
class IsoGaussian:
    """An isotropic Gaussian over sample tensors.

    Attributes:
        mean: ``(B, C, *S)``.
        var: variance broadcastable to ``(B, 1, *S)``: per pixel or one value per sample.
    """

    mean: Tensor
    var: Tensor

    def log_prob(self, x: Tensor) -> Tensor:
        """Log-density of ``x (B, C, *S)`` summed over channels, per pixel: ``(B, *S)``."""
        c = x.shape[1]
        var = self.var.clamp(min=EPS)
        sq = (x - self.mean).square().sum(1, keepdim=True) / var
        out = -0.5 * (sq + c * torch.log(2 * math.pi * var))
        return out.squeeze(1)


@dataclass(frozen=True)
class GaussianMixture:
    """Pixel-wise Gaussian mixture with one shared isotropic variance per sample (see module docstring)."""

    means: Tensor
    logweights: Tensor
    logstds: Tensor

    def __post_init__(self):
        if self.means.dim() < 3:
            raise ValueError(f"means must be (B, K, C, *S), got shape {tuple(self.means.shape)}")
        if self.logweights.shape[:2] != self.means.shape[:2] or self.logweights.shape[2] != 1:
            raise ValueError(
                f"logweights must be (B, K, 1, *S) matching means {tuple(self.means.shape)}, "
                f"got {tuple(self.logweights.shape)}"
            )

    @property
    def num_components(self) -> int:
        return self.means.shape[1]

    @property
    def num_channels(self) -> int:
        return self.means.shape[2]

    @property
    def var(self) -> Tensor:
        """Shared component variance ``s^2``, ``(B, 1, 1, *1)``."""
        return torch.exp(2 * self.logstds)

    def to(self, dtype: torch.dtype) -> GaussianMixture:
        return GaussianMixture(self.means.to(dtype), self.logweights.to(dtype), self.logstds.to(dtype))

    def weights(self) -> Tensor:
        return torch.softmax(self.logweights, dim=1)

    def mean(self) -> Tensor:
        """Mixture mean ``sum_k A_k mu_k``: ``(B, C, *S)``."""
        return (self.weights() * self.means).sum(1)

    def iso_gaussian(self) -> IsoGaussian:
        """Moment-matched isotropic Gaussian per pixel (docs/method.md, Sec. 1.5; Appendix A.1 of the paper).

        ``m_p = sum_k A_k mu_k``, ``v_p = (1/C) sum_k A_k ||mu_k - m_p||^2 + s^2`` (one scalar per pixel).

        Returns:
            IsoGaussian with mean ``(B, C, *S)`` and var ``(B, 1, *S)``.
        """
        w = self.weights()
        m = (w * self.means).sum(1)
        spread = (w * (self.means - m.unsqueeze(1)).square()).sum(1).mean(1, keepdim=True)
        return IsoGaussian(m, spread + self.var.squeeze(1))

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of ``x (B, C, *S)`` per pixel (channels summed): ``(B, *S)``."""
        c = self.num_channels
        sq = (x.unsqueeze(1) - self.means).square().sum(2, keepdim=True)
        logstds = self.logstds
        comp = self.logweights - 0.5 * sq * torch.exp(-2 * logstds) - c * (logstds + 0.5 * math.log(2 * math.pi))
        return torch.logsumexp(comp, dim=1).squeeze(1)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw one sample per pixel: a component by its weight (Gumbel-max), plus ``s * N(0, I)``.

        Returns:
            ``(B, C, *S)``.
        """
        lw = self.logweights
        uni = draw("rand", lw, generator)
        gumbel = -torch.log(-torch.log(uni.clamp(min=1e-20, max=1 - 1e-7)))
        k = torch.argmax(lw + gumbel, dim=1, keepdim=True)  # (B, 1, 1, *S)
        k = k.expand(-1, -1, self.num_channels, *([-1] * (lw.dim() - 3)))
        mu = torch.gather(self.means, 1, k).squeeze(1)
        noise = draw("randn", mu, generator)
        return mu + torch.exp(self.logstds.squeeze(1)) * noise


def u_to_x0(gm_u: GaussianMixture, x_t: Tensor, sigma: Tensor) -> GaussianMixture:
    """Convert a velocity GM to the x0-space GM through ``x0 = x_t - sigma u`` (docs/method.md, Sec. 1.4).

    ``mu^x_k = x_t - sigma mu_k``, ``log s_x = log s + log max(sigma, 1e-6)``; weights unchanged.

    Args:
        gm_u: GM over ``u = eps - x0`` at noise level ``sigma``.
        x_t: ``(B, C, *S)``.
        sigma: ``(B,)`` or scalar, in [0, 1].
    """
    s = bcast(sigma, x_t.dim()).to(x_t)
    means = x_t.unsqueeze(1) - s.unsqueeze(1) * gm_u.means
    logstds = gm_u.logstds + torch.log(s.clamp(min=EPS)).unsqueeze(1)
    return GaussianMixture(means, gm_u.logweights, logstds)


def gaussian_ratio(g_num: IsoGaussian, g_den: IsoGaussian) -> IsoGaussian:
    """Ratio of two isotropic Gaussians ``N(m1, v1) / N(m2, v2)`` (conflation with powers (1, -1),
    docs/method.md, Sec. 1.6).

    ``v_r = v1 v2 / (v2 - v1)``, ``m_r = (v2 m1 - v1 m2) / (v2 - v1)``, the denominator floored at 1e-6. Valid when
    ``v1 < v2`` (the ratio is then an unnormalised Gaussian). Computed through ``v2 / (v2 - v1)`` and
    ``v1 / (v2 - v1)``, which never form the product ``v1 v2`` (it overflows float32 near log-std 40).
    """
    den = (g_den.var - g_num.var).clamp(min=EPS)
    a, b = g_den.var / den, g_num.var / den
    return IsoGaussian(a * g_num.mean - b * g_den.mean, g_num.var * a)


def gaussian_ratio_natural(g_num: IsoGaussian, g_den: IsoGaussian) -> tuple[Tensor, Tensor]:
    """The ratio ``N(m1, v1) / N(m2, v2)`` in natural parameters: ``exp(eta . x - prec ||x||^2 / 2)`` up to a
    constant, with ``eta = m1 / v1 - m2 / v2`` ``(B, C, *S)`` and ``prec = 1 / v1 - 1 / v2`` (floored at 0).

    Finite where the moment form is not: when ``v1 -> v2`` the ratio's variance and mean diverge while ``eta`` and
    ``prec`` go smoothly to their limits (a guidance scale near 0 leaves the GM unchanged instead of giving NaN).
    """
    return g_num.mean / g_num.var - g_den.mean / g_den.var, (1 / g_num.var - 1 / g_den.var).clamp(min=0)


def gm_mul_natural(gm: GaussianMixture, eta: Tensor, prec: Tensor) -> GaussianMixture:
    """Renormalised product of a GM with ``exp(eta . x - prec ||x||^2 / 2)`` (:func:`gaussian_ratio_natural`).

    The same product as :func:`gm_mul_gaussian` with ``v_r = 1 / prec`` and ``m_r = eta / prec``, divided through by
    ``v_r`` (``den = 1 + s^2 prec``): mean ``(mu_k + s^2 eta) / den``, variance ``s^2 / den``, logit
    ``log A_k + (mu_k . eta - prec ||mu_k||^2 / 2) / den`` (the k-independent term dropped by the softmax).
    ``prec`` must be one value per sample ``(B, 1, *1)`` and >= 0.
    """
    s2 = gm.var  # (B, 1, 1, *1)
    p = prec.unsqueeze(1)  # (B, 1, 1, *1)
    if p.shape[3:].numel() != 1:
        raise ValueError("gm_mul_natural needs one precision per sample to keep a shared GM variance")
    e = eta.unsqueeze(1)  # (B, 1, C, *S)
    den = 1 + s2 * p
    means = (gm.means + s2 * e) / den
    quad = (gm.means * e).sum(2, keepdim=True) - 0.5 * p * gm.means.square().sum(2, keepdim=True)
    logits = gm.logweights + quad / den
    return GaussianMixture(means, torch.log_softmax(logits, dim=1), gm.logstds - 0.5 * torch.log(den))


def gm_mul_gaussian(gm: GaussianMixture, g: IsoGaussian) -> GaussianMixture:
    """Renormalised product of a GM with an isotropic Gaussian (Appendix D.2 of the paper; docs/method.md, Sec. 1.6).

    Per component, with shared variance ``s^2`` and Gaussian ``N(m_r, v_r)``:
    mean ``(v_r mu_k + s^2 m_r) / (v_r + s^2)``, variance ``s^2 v_r / (s^2 + v_r)``,
    logit ``log A_k - ||mu_k - m_r||^2 / (2 (v_r + s^2))``, then log_softmax over k.

    ``g.var`` must be one value per sample (``(B, 1, *1)``) so that the product keeps a shared variance.
    """
    s2 = gm.var  # (B, 1, 1, *1)
    v_r = g.var.unsqueeze(1)  # (B, 1, 1, *1)
    if v_r.shape[3:].numel() != 1:
        raise ValueError("gm_mul_gaussian needs one Gaussian variance per sample to keep a shared GM variance")
    m_r = g.mean.unsqueeze(1)  # (B, 1, C, *S)
    den = (v_r + s2).clamp(min=EPS)
    a, b = v_r / den, s2 / den  # convex weights: no product of two variances, no overflow
    means = a * gm.means + b * m_r
    var = s2 * a
    logits = gm.logweights - (gm.means - m_r).square().sum(2, keepdim=True) / (2 * den)
    return GaussianMixture(means, torch.log_softmax(logits, dim=1), 0.5 * torch.log(var.clamp(min=1e-30)))


def _x0_likelihood_ratio(x_src: Tensor, sigma_src: Tensor, x_tgt: Tensor, sigma_tgt: Tensor) -> tuple[Tensor, Tensor]:
    """Precision ``zeta (B, 1, *1)`` and natural mean ``nu (B, C, *S)`` of ``N(x_tgt; a_tgt x0, s_tgt^2) /
    N(x_src; a_src x0, s_src^2)`` as a Gaussian in x0 (sigmas floored at 1e-6)."""
    nd = x_src.dim()
    s_src = bcast(sigma_src, nd).to(x_src).clamp(min=EPS)
    s_tgt = bcast(sigma_tgt, nd).to(x_src).clamp(min=EPS)
    a_src, a_tgt = 1 - s_src, 1 - s_tgt
    zeta = (a_tgt / s_tgt).square() - (a_src / s_src).square()
    nu = a_tgt * x_tgt / s_tgt.square() - a_src * x_src / s_src.square()
    return zeta, nu


def gm_recondition(
    gm_src: GaussianMixture, x_src: Tensor, sigma_src: Tensor, x_tgt: Tensor, sigma_tgt: Tensor
) -> GaussianMixture:
    """Re-condition an x0-space GM from ``(x_src, sigma_src)`` to ``(x_tgt, sigma_tgt)``
    (docs/method.md, Sec. 4.4; Eq. 11).

    ``q(x0 | x_tgt) ∝ q(x0 | x_src) N(x_tgt; a_tgt x0, s_tgt^2) / N(x_src; a_src x0, s_src^2)``. The likelihood ratio is
    a Gaussian in x0 with precision ``zeta = (a_tgt/s_tgt)^2 - (a_src/s_src)^2`` and natural mean
    ``nu = a_tgt x_tgt / s_tgt^2 - a_src x_src / s_src^2``. Per component (shared var v):
    ``mean' = (v nu + mu_k) / (v zeta + 1)``, ``var' = v / (v zeta + 1)``,
    ``logit' = log A_k + (mu_k . nu - zeta ||mu_k||^2 / 2) / (v zeta + 1)``.
    Requires ``sigma_tgt < sigma_src`` (zeta > 0). Sigmas are floored at 1e-6.
    """
    zeta, nu = _x0_likelihood_ratio(x_src, sigma_src, x_tgt, sigma_tgt)
    zeta, nu = zeta.unsqueeze(1), nu.unsqueeze(1)
    # In precision form (divide the numerators and den by v): prec = zeta + 1/v = den / v is the posterior precision.
    # Exact, and finite for every log-std (v zeta overflows float32 near log-std 40 when sigma_tgt is small).
    inv_v = torch.exp(-2 * gm_src.logstds)  # (B, 1, 1, *1)
    prec = (zeta + inv_v).clamp(min=EPS * inv_v)
    means = (nu + gm_src.means * inv_v) / prec
    quad = (gm_src.means * nu).sum(2, keepdim=True) - 0.5 * zeta * gm_src.means.square().sum(2, keepdim=True)
    logits = gm_src.logweights + quad * (inv_v / prec)
    logstds = -0.5 * torch.log(prec)
    return GaussianMixture(means, torch.log_softmax(logits, dim=1), logstds)


def gm_recondition_mean(
    gm_src: GaussianMixture,
    x_src: Tensor,
    sigma_src: Tensor,
    x_tgt: Tensor,
    sigma_tgt: Tensor,
    means_sq: Tensor | None = None,
) -> Tensor:
    """``E[x0]`` under :func:`gm_recondition` without building the re-conditioned GM (the GM-ODE sub-step).

    With ``den = v zeta + 1`` one scalar per sample: ``mean = (v nu + sum_k w_k mu_k) / den``, where
    ``w = softmax_k(log A_k + (mu_k . nu - zeta ||mu_k||^2 / 2) / den)``. ``means_sq`` = ``||mu_k||^2`` summed over
    channels ``(B, K, 1, *S)`` may be passed in once per outer step (it does not change between sub-steps).

    Returns:
        ``(B, C, *S)``.
    """
    zeta, nu = _x0_likelihood_ratio(x_src, sigma_src, x_tgt, sigma_tgt)
    inv_v = torch.exp(-2 * gm_src.logstds).squeeze(1)  # (B, 1, *1); precision form as in gm_recondition
    prec = (zeta + inv_v).clamp(min=EPS * inv_v)  # (B, 1, *1) = den / v
    if means_sq is None:
        means_sq = gm_src.means.square().sum(2, keepdim=True)
    mu = gm_src.means  # (B, K, C, *S)
    dot = (mu * nu.unsqueeze(1)).sum(2, keepdim=True) if mu.shape[2] > 1 else mu * nu.unsqueeze(1)
    logits = gm_src.logweights + (dot - 0.5 * zeta.unsqueeze(1) * means_sq) * (inv_v / prec).unsqueeze(1)
    w = torch.softmax(logits, dim=1)  # (B, K, 1, *S)
    return (nu + (w * mu).sum(1) * inv_v) / prec
