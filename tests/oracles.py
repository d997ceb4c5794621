"""Test oracles: exact posteriors of Gaussian-mixture data, closed-form Gaussian flows, brute-force float64 helpers.

No tests here. Everything is written from first principles (Bayes' rule for Gaussians, explicit sums of component
densities, Riemann sums on fine grids) so that the library can be checked against it. Conventions as in docs/method.md,
Sec. 1: ``sigma = 1`` noise, ``sigma = 0`` data, ``alpha = 1 - sigma``, ``x_t = alpha x0 + sigma eps``,
``u = eps - x0 = (x_t - x0) / sigma``.

GM data (``GMData``): every pixel independently carries ``x0_p ~ sum_k pi_{k,p} N(m_{k,p}, s0^2 I_C)``. Given
``x_t`` the exact posterior of ``x0`` is again a GM with one shared variance, per pixel:

- ``D = alpha^2 s0^2 + sigma^2`` (the variance of ``x_t`` given the component),
- variance ``s0^2 sigma^2 / D`` ( = ``1 / (1/s0^2 + alpha^2/sigma^2)``),
- means ``(sigma^2 m_k + alpha s0^2 x_t) / D``,
- weights ``∝ pi_k N(x_t; alpha m_k, D I)``.

In velocity space (``u = (x_t - x0)/sigma``) the means are ``((sigma - alpha s0^2) x_t - sigma m_k) / D`` and the
std is ``s0 / sqrt(D)``: no division by sigma, so ``sigma = 1`` (alpha = 0) and ``sigma -> 0`` are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp
from torch import Tensor

from gmflow.gm import GaussianMixture

F64 = torch.float64


def per_sample(v: Tensor | float, ndim: int, dtype=F64) -> Tensor:
    """A per-sample ``(B,)`` value (or a scalar) reshaped to ``(B, 1, ..., 1)`` with ``ndim`` dims, in ``dtype``."""
    v = torch.as_tensor(v, dtype=dtype)
    if v.dim() == 0:
        return v.reshape((1,) * ndim)
    return v.reshape(-1, *((1,) * (ndim - 1)))


# ---------------------------------------------------------------------------------------------------------------------
# Exact oracles
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GMData:
    """Data ``x0 ~ sum_k pi_k N(m_k, s0^2 I_C)``, independently per pixel.

    Attributes:
        means: ``(K, C, *S)`` component means ``m_k``.
        logweights: ``(K, *S)`` log mixture weights ``log pi_k`` (normalised here).
        s0: the shared component std.
    """

    means: Tensor
    logweights: Tensor
    s0: float

    def __post_init__(self):
        object.__setattr__(self, "means", self.means.to(F64))
        object.__setattr__(self, "logweights", torch.log_softmax(self.logweights.to(F64), dim=0))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(C, *S)`` of one sample."""
        return tuple(self.means.shape[1:])

    @property
    def weights(self) -> Tensor:
        return self.logweights.exp()

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Draw ``n`` samples by inverse-CDF component choice plus Gaussian noise.

        Returns:
            ``x0 (n, C, *S)`` float64 and component labels ``(n, *S)``.
        """
        k = self.means.shape[0]
        cdf = torch.cumsum(self.weights, dim=0)  # (K, *S)
        uni = torch.rand((n, *self.shape[1:]), generator=generator, dtype=F64)
        labels = (uni.unsqueeze(1) > cdf.unsqueeze(0)).sum(1).clamp(max=k - 1)  # (n, *S)
        onehot = torch.nn.functional.one_hot(labels, k).movedim(-1, 1).to(F64)  # (n, K, *S)
        mu = (onehot.unsqueeze(2) * self.means.unsqueeze(0)).sum(1)  # (n, C, *S)
        noise = torch.randn((n, *self.shape), generator=generator, dtype=F64)
        return mu + self.s0 * noise, labels

    def mean(self) -> Tensor:
        """Exact data mean ``sum_k pi_k m_k``: ``(C, *S)``."""
        return (self.weights.unsqueeze(1) * self.means).sum(0)

    def covariance(self) -> Tensor:
        """Exact per-pixel channel covariance ``sum_k pi_k (m_k - m)(m_k - m)^T + s0^2 I``: ``(C, C, *S)``."""
        d = self.means - self.mean()  # (K, C, *S)
        w = self.weights.unsqueeze(1).unsqueeze(1)  # (K, 1, 1, *S)
        cov = (w * d.unsqueeze(2) * d.unsqueeze(1)).sum(0)
        eye = torch.eye(self.shape[0], dtype=F64).reshape(self.shape[0], self.shape[0], *([1] * (d.dim() - 2)))
        return cov + self.s0**2 * eye

    def _posterior_parts(self, x_t: Tensor, sigma: Tensor | float):
        x = x_t.to(F64)
        nd = x.dim()
        s = per_sample(sigma, nd)  # (B, 1, *1)
        a = 1 - s
        d = a.square() * self.s0**2 + s.square()  # (B, 1, *1)
        s, a, d = s.unsqueeze(1), a.unsqueeze(1), d.unsqueeze(1)  # (B, 1, 1, *1)
        xk = x.unsqueeze(1)  # (B, 1, C, *S)
        m = self.means.unsqueeze(0)  # (1, K, C, *S)
        sq = (xk - a * m).square().sum(2, keepdim=True)  # (B, K, 1, *S)
        logw = torch.log_softmax(self.logweights.unsqueeze(0).unsqueeze(2) - sq / (2 * d), dim=1)
        return x, xk, m, s, a, d, logw

    def posterior_x0(self, x_t: Tensor, sigma: Tensor | float) -> GaussianMixture:
        """Exact ``q(x0 | x_t)`` as an x0-space GM (float64). Needs ``sigma > 0`` (at 0 the posterior is a point)."""
        x, xk, m, s, a, d, logw = self._posterior_parts(x_t, sigma)
        means = (s.square() * m + a * self.s0**2 * xk) / d
        logstds = math.log(self.s0) + torch.log(s) - 0.5 * torch.log(d)
        return GaussianMixture(means, logw, logstds.expand(x.shape[0], *logstds.shape[1:]).contiguous())

    def posterior_u(self, x_t: Tensor, sigma: Tensor | float) -> GaussianMixture:
        """Exact ``q(u | x_t)`` as a velocity GM in the dtype of ``x_t`` (float64 inside); exact at sigma = 0 and 1."""
        x, xk, m, s, a, d, logw = self._posterior_parts(x_t, sigma)
        means = ((s - a * self.s0**2) * xk - s * m) / d
        logstds = math.log(self.s0) - 0.5 * torch.log(d)
        gm = GaussianMixture(means, logw, logstds.expand(x.shape[0], *logstds.shape[1:]).contiguous())
        return gm.to(x_t.dtype)

    def __call__(self, x_t: Tensor, sigma: Tensor) -> GaussianMixture:
        """``model_fn`` for the GM solvers: the exact velocity GM."""
        return self.posterior_u(x_t, sigma)

    def velocity(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        """Exact flow velocity ``E[u | x_t]`` (``model_fn`` for the flow solvers), in the dtype of ``x_t``."""
        x, xk, m, s, a, d, logw = self._posterior_parts(x_t, sigma)
        means = ((s - a * self.s0**2) * xk - s * m) / d
        return (logw.exp() * means).sum(1).to(x_t.dtype)

    def nearest_component(self, x: Tensor) -> Tensor:
        """Index of the nearest component mean (for 2D data, ``S = ()``): ``(n,)``."""
        return torch.cdist(x.to(F64), self.means).argmin(1)


def ring_gm_data(num: int = 8, radius: float = 3.0, s0: float = 0.3) -> GMData:
    """``num`` components evenly on a circle, with unequal weights ``pi_k ∝ k + 1``."""
    ang = 2 * math.pi * torch.arange(num, dtype=F64) / num
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    logw = torch.log(torch.arange(1, num + 1, dtype=F64))
    return GMData(means, logw, s0)


@dataclass(frozen=True)
class GaussianData:
    """Data ``x0 ~ N(m, s0^2 I)`` over ``(C,)`` points: velocity and flow map in closed form.

    The flow ODE ``dx/dsigma = E[u | x]`` preserves ``x_sigma ~ N(alpha m, D I)``, ``D = alpha^2 s0^2 + sigma^2``; being
    affine it is the monotone map ``x_b = alpha_b m + sqrt(D_b / D_a) (x_a - alpha_a m)``. Differentiating
    ``x = alpha m + sqrt(D) eps`` in sigma gives ``E[u | x] = -m + (sigma - alpha s0^2)(x - alpha m) / D``.
    """

    m: Tensor
    s0: float

    def velocity(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        x = x_t.to(F64)
        s = per_sample(sigma, x.dim())
        a = 1 - s
        m = self.m.to(F64)
        d = a.square() * self.s0**2 + s.square()
        return (-m + (s - a * self.s0**2) * (x - a * m) / d).to(x_t.dtype)

    def flow(self, x_a: Tensor, sigma_a: float, sigma_b: float) -> Tensor:
        """Exact ODE solution from ``(x_a, sigma_a)`` to ``sigma_b`` (float64)."""
        a_a, a_b = 1 - sigma_a, 1 - sigma_b
        d_a = a_a**2 * self.s0**2 + sigma_a**2
        d_b = a_b**2 * self.s0**2 + sigma_b**2
        m = self.m.to(F64)
        return a_b * m + math.sqrt(d_b / d_a) * (x_a.to(F64) - a_a * m)


# ---------------------------------------------------------------------------------------------------------------------
# Brute force in float64 (numpy)
# ---------------------------------------------------------------------------------------------------------------------


def np64(t: Tensor) -> np.ndarray:
    return t.detach().to(F64).cpu().numpy()


def pixel_gm(gm: GaussianMixture, b: int, pix: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray, float]:
    """One pixel's mixture as numpy: means ``(K, C)``, weights ``(K,)`` (normalised here), std."""
    idx = (b, slice(None), slice(None), *pix)
    means = np64(gm.means[idx])
    lw = np64(gm.logweights[idx])[:, 0]
    w = np.exp(lw - logsumexp(lw))
    return means, w, float(np.exp(np64(gm.logstds).reshape(gm.logstds.shape[0], -1)[b, 0]))


def iso_logpdf(x: np.ndarray, mean: np.ndarray, var: float) -> np.ndarray:
    """``log N(x; mean, var I)`` for points ``x (..., C)``: ``(...)``."""
    c = x.shape[-1]
    return -0.5 * (np.sum((x - mean) ** 2, axis=-1) / var + c * np.log(2 * np.pi * var))


def gm_component_logpdfs(x: np.ndarray, means: np.ndarray, w: np.ndarray, std: float) -> np.ndarray:
    """``log(pi_k N(x; mu_k, std^2 I))`` for points ``x (..., C)``: ``(..., K)``."""
    return np.stack([np.log(w[k]) + iso_logpdf(x, means[k], std**2) for k in range(len(w))], axis=-1)


def gm_logpdf(x: np.ndarray, means: np.ndarray, w: np.ndarray, std: float) -> np.ndarray:
    """Log-density of an isotropic GM at points ``x (..., C)`` as the explicit sum of its component densities."""
    return logsumexp(gm_component_logpdfs(x, means, w, std), axis=-1)


def grid_1d(lo: float, hi: float, n: int) -> tuple[np.ndarray, float]:
    """Midpoint grid on ``[lo, hi]``: points ``(n, 1)`` and cell size."""
    h = (hi - lo) / n
    return (lo + h * (np.arange(n) + 0.5))[:, None], h


def grid_2d(lo: float, hi: float, n: int) -> tuple[np.ndarray, float]:
    """Midpoint grid on ``[lo, hi]^2``: points ``(n*n, 2)`` and cell area."""
    g, h = grid_1d(lo, hi, n)
    xx, yy = np.meshgrid(g[:, 0], g[:, 0], indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1), h * h


def normalise_on_grid(logp: np.ndarray, cell: float) -> tuple[np.ndarray, float]:
    """Normalise an unnormalised log-density on a grid: returns the normalised log-density and ``log Z``."""
    log_z = logsumexp(logp) + np.log(cell)
    return logp - log_z, log_z


def grid_moments(points: np.ndarray, logp: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(C,)`` and covariance ``(C, C)`` of a normalised grid density."""
    p = np.exp(logp) * cell
    mean = p @ points
    d = points - mean
    return mean, (d * p[:, None]).T @ d


def mc_tol(std: float | np.ndarray, n: int, z: float = 5.0) -> float | np.ndarray:
    """``z`` standard errors of a Monte Carlo mean of ``n`` samples with standard deviation ``std``."""
    return z * np.asarray(std) / math.sqrt(n)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_gm(b: int, k: int, c: int, spatial: tuple, spread: float, logstd: float, seed: int = 0,
              offset: float = 0.0) -> GaussianMixture:
    """A random float64 GM: means ``offset + spread N(0, 1)``, random weights, and a log-std ``logstd +- 0.3`` that
    differs per sample."""
    g = seeded(seed)
    means = offset + spread * torch.randn(b, k, c, *spatial, generator=g, dtype=F64)
    logweights = torch.log_softmax(torch.randn(b, k, 1, *spatial, generator=g, dtype=F64), dim=1)
    logstds = logstd + 0.3 * (2 * torch.rand(b, 1, 1, *([1] * len(spatial)), generator=g, dtype=F64) - 1)
    return GaussianMixture(means, logweights, logstds)


def probabilistic_guidance_np(means: np.ndarray, logweights: np.ndarray, std: float, m_u: np.ndarray, w: float,
                              o: float = 1.0) -> dict[str, np.ndarray | float]:
    """Probabilistic guidance of ONE sample's x0-space GM in numpy float64 (Sec. 3.3 of Chen et al. 2025).

    ``means (K, C, *S)``, ``logweights (K, 1, *S)``, the shared ``std``, the unconditional mean ``m_u (C, *S)``.
    Surrogate ``m_c``, ``v_c`` = per-pixel ``(1/C) sum_k A_k |mu_k - m_c|^2 + s^2`` averaged over pixels;
    ``Delta = m_c - m_u`` minus ``o`` times its projection on ``m_c`` (means over all entries); bias
    ``b = w sqrt(v_c / mean(Delta^2)) Delta``; the guided GM is each component times the ratio Gaussian
    ``N_tgt / N(m_c, v_c) ∝ N(m_c + b / w^2, v_c (1 - w^2) / w^2)`` (a textbook Gaussian product), renormalised.

    Returns:
        dict with ``bias``, ``m_c``, ``v_c`` and the guided ``means``, ``weights`` ``(K, 1, *S)`` and ``var``.
    """
    wts = np.exp(logweights - logsumexp(logweights, axis=0, keepdims=True))
    m_c = (wts * means).sum(0)
    v_c = float(((wts * (means - m_c) ** 2).sum(0).mean(0)).mean() + std**2)
    d = m_c - m_u
    d = d - o * np.mean(d * m_c) / max(np.mean(m_c * m_c), 1e-6) * m_c
    bias = w * np.sqrt(v_c / max(np.mean(d * d), 1e-6)) * d
    out = {"bias": bias, "m_c": m_c, "v_c": v_c}
    if w == 0:
        return {**out, "means": means, "weights": wts, "var": std**2}
    s2, m_r, v_r = std**2, m_c + bias / w**2, v_c * (1 - w**2) / w**2
    logits = np.log(wts) - ((means - m_r) ** 2).sum(1, keepdims=True) / (2 * (v_r + s2))
    weights = np.exp(logits - logsumexp(logits, axis=0, keepdims=True))
    return {**out, "means": (v_r * means + s2 * m_r) / (v_r + s2), "weights": weights, "var": s2 * v_r / (s2 + v_r)}
