"""Knothe-Rosenblatt (KR) transport between a standard normal field and a pixel-wise Gaussian mixture with one shared
variance ("axis_aligned" mode; Appendix A.3 of Chen et al. 2025, docs/method.md Sec. 5).

Per sample, one rotation ``R`` (eigenvectors of the pixel-averaged channel covariance, descending) makes the channels
of every component independent; along each rotated axis the conditional 1D mixture given the earlier axes has closed
form weights, so :func:`gaussian_to_gm` maps ``N(0, I)`` onto the GM by 1D inverse CDFs (Newton) and
:func:`gm_to_gaussian` maps GM samples back by 1D CDFs. Works for any channel count ``C`` and spatial shape ``*S``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gmflow.gm import EPS, GaussianMixture

SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------------------------------
# Knothe-Rosenblatt transport ("axis_aligned" mode)
# ------------------------------------------------------------------------------------------------------------------


def _flat(gm: GaussianMixture) -> tuple[Tensor, Tensor, Tensor]:
    """GM fields with pixels flattened, in at least float32: means ``(B, K, C, N)``, logweights ``(B, K, N)``,
    stds ``(B, 1, 1)``."""
    dtype = torch.promote_types(gm.means.dtype, torch.float32)
    b, k, c = gm.means.shape[:3]
    means = gm.means.to(dtype).reshape(b, k, c, -1)  # (B, K, C, N)
    logweights = gm.logweights.to(dtype).reshape(b, k, -1)  # (B, K, N)
    stds = torch.exp(gm.logstds.to(dtype)).reshape(gm.logstds.shape[0], 1, 1)  # (B, 1, 1)
    return means, logweights, stds


def kr_rotation(gm: GaussianMixture) -> Tensor:
    """Shared KR rotation of each sample (docs/method.md, Sec. 5.3).

    The per-pixel channel covariance ``Sigma_p = sum_k A_k (mu_k - m_p)(mu_k - m_p)^T + s^2 I`` is averaged over pixels
    to ``Sigma_bar`` (C x C); ``R`` holds its eigenvectors as columns, eigenvalues in DESCENDING order. Rotated
    coordinates are ``y = R^T x``. Eigenvector signs are not fixed by the method; here each column is flipped so that
    its largest-magnitude entry is positive, which makes samples reproducible across LAPACK back-ends and makes the
    ``C = 1`` transport the increasing inverse CDF (``R = [[1]]``). Signs do not change any spectral statistic.

    Args:
        gm: ``(B, K, C, *S)`` GM.

    Returns:
        ``R`` ``(B, C, C)`` orthogonal, in at least float32.
    """
    means, logweights, stds = _flat(gm)
    c, n = means.shape[2], means.shape[3]
    w = torch.softmax(logweights, dim=1).unsqueeze(2)  # (B, K, 1, N)
    d = means - (w * means).sum(1, keepdim=True)  # (B, K, C, N)
    cov = torch.einsum("bkcn,bkdn->bcd", w * d, d) / n  # (B, C, C)
    cov = cov + stds.square() * torch.eye(c, dtype=cov.dtype, device=cov.device)
    _, eigvecs = torch.linalg.eigh(cov)  # (B, C, C), ascending eigenvalues
    rot = eigvecs.flip(-1)  # descending eigenvalues
    pivot = torch.gather(rot, 1, rot.abs().argmax(dim=1, keepdim=True))  # (B, 1, C): largest entry of each column
    return rot * torch.sign(pivot)


def _conditional_logweights(logweights: Tensor, sq_dist: Tensor) -> Tensor:
    """KR conditional log-weights ``log A_k - sum_{j<d} (y_j - mu~_{k,j})^2 / (2 s^2)``, normalised over k."""
    return torch.log_softmax(logweights - 0.5 * sq_dist, dim=1)


def _gm1d_cdf_pdf(weights: Tensor, means: Tensor, stds: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Scaled CDF ``F~(y) = sum_k w_k erf((y - mu_k) / (sqrt(2) s)) = 2 CDF(y) - 1`` and density of a 1D GM.

    Args:
        weights, means: ``(B, K, N)``.
        stds: broadcastable to ``(B, 1, N)``.
        y: ``(B, N)``.

    Returns:
        ``(F~(y), pdf(y))``, each ``(B, N)``.
    """
    z = (y.unsqueeze(1) - means) / stds  # (B, K, N)
    cdf = (weights * torch.erf(z / SQRT2)).sum(1)
    pdf = (weights * torch.exp(-0.5 * z.square()) / (math.sqrt(2 * math.pi) * stds)).sum(1)
    return cdf, pdf


def gm1d_inverse_cdf(
    weights: Tensor,
    means: Tensor,
    stds: Tensor,
    zeta: Tensor,
    num_steps: int = 16,
    max_step: float = 1.5,
    pdf_floor: float = EPS,
) -> Tensor:
    """Solve ``CDF(y) = Phi(zeta)`` for a 1D GM per pixel by clamped Newton (docs/method.md, Sec. 5.4).

    With the scaled CDF ``F~(y) = sum_k w_k erf((y - mu_k) / (sqrt(2) s))`` and target ``u = erf(zeta / sqrt(2))``:
    init ``y = m + sqrt(v) zeta`` from the GM mean ``m`` and variance ``v``, then ``num_steps`` iterations of
    ``y <- y - clip((F~(y) - u) / (2 max(pdf(y), pdf_floor)), -max_step s, max_step s)``.

    Limits of this fixed budget (the reference algorithm, kept as is): the solution is reached to float64 round-off when
    the components overlap (e.g. K = 3, means spread ~5 s, ``|zeta| <= 4``), but ``num_steps * max_step = 24 s`` bounds
    the travel, so with components ~10 s apart about 0.1 % of pixels stop short; and where ``pdf < pdf_floor``
    (``|zeta|`` beyond ~5) the steps shrink and the deep tail is not resolved. Both are the KR error the paper notes
    for large K (Fig. 7).

    Args:
        weights: ``(B, K, N)``, normalised over K.
        means: ``(B, K, N)``.
        stds: shared std ``s`` broadcastable to ``(B, 1, N)``.
        zeta: standard-normal values ``(B, N)``.

    Returns:
        ``y`` ``(B, N)``.
    """
    target = torch.erf(zeta / SQRT2)  # (B, N)
    m = (weights * means).sum(1)  # (B, N)
    v = (weights * (means - m.unsqueeze(1)).square()).sum(1) + stds.squeeze(1).square()  # (B, N)
    y = m + v.sqrt() * zeta  # (B, N)
    step_max = max_step * stds.squeeze(1)  # (B, 1) or (B, N)
    for _ in range(num_steps):
        cdf, pdf = _gm1d_cdf_pdf(weights, means, stds, y)  # (B, N) each
        step = (cdf - target) / (2 * pdf.clamp(min=pdf_floor))
        y = y - torch.maximum(torch.minimum(step, step_max), -step_max)
    return y


def gaussian_to_gm(
    gm: GaussianMixture, zeta: Tensor, num_steps: int = 16, max_step: float = 1.5, pdf_floor: float = EPS
) -> Tensor:
    """Inverse KR transport: push standard-normal ``zeta`` to a sample of the GM
    (docs/method.md, Sec. 5.4; Appendix A.3).

    ``zeta`` is taken as already in rotated coordinates. For axis ``d = 1..C`` the conditional 1D GM of
    ``y_d | y_{<d}`` has means ``mu~_{k,d} = (R^T mu_k)_d``, std ``s`` and log-weights
    ``log A_k - sum_{j<d} (y_j - mu~_{k,j})^2 / (2 s^2)``; ``y_d`` solves its CDF equation by
    :func:`gm1d_inverse_cdf`. The sample is ``x = R y``. If ``zeta ~ N(0, I)`` then ``x`` follows the GM exactly (up
    to the Newton tolerance); ``K = 1`` gives ``x = mu + s R zeta``. Computed in at least float32.

    Args:
        gm: GM ``(B, K, C, *S)``.
        zeta: ``(B, C, *S)``.

    Returns:
        ``(B, C, *S)``.
    """
    means, logweights, stds = _flat(gm)
    b, _, c, n = means.shape
    if tuple(zeta.shape) != (b, c, *gm.means.shape[3:]):
        raise ValueError(f"zeta must have shape {(b, c, *gm.means.shape[3:])} to match the GM, got {tuple(zeta.shape)}")
    rot = kr_rotation(gm)  # (B, C, C)
    means_rot = torch.einsum("bkcn,bcd->bkdn", means, rot)  # (B, K, C, N): mu~ = R^T mu
    zeta = zeta.to(means.dtype).reshape(b, c, n)  # (B, C, N)
    sq_dist = torch.zeros_like(logweights)  # (B, K, N): sum_{j<d} ((y_j - mu~_{k,j}) / s)^2
    ys = []
    for d in range(c):
        w = torch.exp(_conditional_logweights(logweights, sq_dist))  # (B, K, N)
        y = gm1d_inverse_cdf(w, means_rot[:, :, d], stds, zeta[:, d], num_steps, max_step, pdf_floor)  # (B, N)
        sq_dist = sq_dist + ((y.unsqueeze(1) - means_rot[:, :, d]) / stds).square()
        ys.append(y)
    y = torch.stack(ys, dim=1)  # (B, C, N)
    x = torch.einsum("bcd,bdn->bcn", rot, y)  # (B, C, N): x = R y
    return x.reshape(b, c, *gm.means.shape[3:])


def gm_to_gaussian(gm: GaussianMixture, x: Tensor, clip: float = EPS) -> Tensor:
    """Forward KR transport: map a GM sample to a standard-normal-like ``zeta`` (docs/method.md, Sec. 5.5).

    ``y = R^T x``; axis 1 uses the unconditional weights, later axes the conditional weights given the actual
    ``y_{<d}``; ``zeta_d = sqrt(2) erfinv(clip(F~_d(y_d), -1 + clip, 1 - clip))``. The result stays in rotated
    coordinates. It inverts :func:`gaussian_to_gm`. Computed in at least float32.

    Args:
        gm: GM ``(B, K, C, *S)``.
        x: ``(B, C, *S)``.

    Returns:
        ``zeta`` ``(B, C, *S)``, rotated coordinates.
    """
    means, logweights, stds = _flat(gm)
    b, _, c, n = means.shape
    if tuple(x.shape) != (b, c, *gm.means.shape[3:]):
        raise ValueError(f"x must have shape {(b, c, *gm.means.shape[3:])} to match the GM, got {tuple(x.shape)}")
    rot = kr_rotation(gm)  # (B, C, C)
    means_rot = torch.einsum("bkcn,bcd->bkdn", means, rot)  # (B, K, C, N)
    y = torch.einsum("bcn,bcd->bdn", x.to(means.dtype).reshape(b, c, n), rot)  # (B, C, N): y = R^T x
    sq_dist = torch.zeros_like(logweights)  # (B, K, N)
    zetas = []
    for d in range(c):
        w = torch.exp(_conditional_logweights(logweights, sq_dist))  # (B, K, N)
        u, _ = _gm1d_cdf_pdf(w, means_rot[:, :, d], stds, y[:, d])  # (B, N)
        zetas.append(SQRT2 * torch.erfinv(u.clamp(min=-1 + clip, max=1 - clip)))
        sq_dist = sq_dist + ((y[:, d].unsqueeze(1) - means_rot[:, :, d]) / stds).square()
    return torch.stack(zetas, dim=1).reshape(b, c, *gm.means.shape[3:])
