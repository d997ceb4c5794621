"""L2 flow-matching (velocity) loss (docs/method.md, Sec. 6.1; Lipman et al. 2023, Liu et al. 2023)."""

from __future__ import annotations

from torch import Tensor

from gmflow.gm import sample_dims
from gmflow.schedule import add_noise


def fm_pair(x0: Tensor, eps: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Training input ``x_t = (1 - sigma) x0 + sigma eps`` and its target velocity ``u = eps - x0``."""
    return add_noise(x0, eps, sigma), eps - x0


def fm_loss(v_pred: Tensor, u: Tensor) -> Tensor:
    """Per-sample L2 flow-matching loss: squared error summed over channels, averaged over pixels.

    This matches the reduction of the GM transition loss (channels summed, pixels averaged), so that for ``K = 1``,
    ``s = 1`` and ``lambda = 1`` the two differ by a constant and a factor 1/2 only.

    Returns:
        ``(B,)``.
    """
    sq = (v_pred.float() - u.float()).square()
    c = sq.shape[1]
    return sq.mean(sample_dims(sq)) * c
