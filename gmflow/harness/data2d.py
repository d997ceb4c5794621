"""2D datasets with exactly known densities: the 4x4 checkerboard and a ring of isotropic Gaussians.

Each dataset draws samples from an explicit ``torch.Generator`` and gives the exact probability mass of any
axis-aligned histogram bin, its support test and (where it exists) its log-density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import ndtr
from torch import Tensor


def _interval_overlap(a0: np.ndarray, a1: np.ndarray, b0: float, b1: float) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None)


@dataclass(frozen=True)
class Checkerboard:
    """Uniform density on the 8 squares ``(i + j)`` even of a 4x4 board over ``[-4, 4]^2``
    (docs/method.md, Sec. 3.7)."""

    name: str = "checkerboard"
    half_width: float = 4.0
    board: int = 4

    @property
    def cell(self) -> float:
        return 2 * self.half_width / self.board

    def squares(self) -> list[tuple[float, float, float, float]]:
        """The occupied squares as ``(x0, x1, y0, y1)``."""
        c, h = self.cell, self.half_width
        return [(-h + i * c, -h + (i + 1) * c, -h + j * c, -h + (j + 1) * c)
                for i in range(self.board) for j in range(self.board) if (i + j) % 2 == 0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, 2)`` float32 samples."""
        sq = torch.tensor(self.squares(), dtype=torch.float64)
        idx = torch.randint(len(sq), (n,), generator=generator)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        lo = torch.stack([sq[idx, 0], sq[idx, 2]], dim=1)
        return (lo + u * self.cell).float()

    def bin_mass(self, edges: np.ndarray) -> np.ndarray:
        """Exact probability of each bin of the product grid ``edges x edges``: ``(len(edges)-1,)*2``, x first."""
        e0, e1 = edges[:-1], edges[1:]
        area = len(self.squares()) * self.cell**2
        mass = np.zeros((len(e0), len(e0)))
        for x0, x1, y0, y1 in self.squares():
            mass += np.outer(_interval_overlap(e0, e1, x0, x1), _interval_overlap(e0, e1, y0, y1))
        return mass / area

    def in_support(self, x: np.ndarray) -> np.ndarray:
        inside = np.zeros(len(x), dtype=bool)
        for x0, x1, y0, y1 in self.squares():
            inside |= (x[:, 0] >= x0) & (x[:, 0] <= x1) & (x[:, 1] >= y0) & (x[:, 1] <= y1)
        return inside

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        area = len(self.squares()) * self.cell**2
        return np.where(self.in_support(x), -math.log(area), -np.inf)


@dataclass(frozen=True)
class GaussianRing:
    """``num`` isotropic Gaussians of std ``std`` with equal weights on a circle of radius ``radius``.

    Its exact velocity posterior is a Gaussian mixture with a shared variance, so GMFlow can represent it exactly.
    """

    name: str = "gmm2d"
    num: int = 8
    radius: float = 3.0
    std: float = 0.3
    support_radius: float = 3.0  # in units of std: the support test is ``min_k ||x - m_k|| <= 3 std``

    def centers(self) -> np.ndarray:
        a = 2 * np.pi * np.arange(self.num) / self.num
        return self.radius * np.stack([np.cos(a), np.sin(a)], axis=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        c = torch.tensor(self.centers(), dtype=torch.float64)
        idx = torch.randint(self.num, (n,), generator=generator)
        return (c[idx] + self.std * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()

    def bin_mass(self, edges: np.ndarray) -> np.ndarray:
        mass = np.zeros((len(edges) - 1,) * 2)
        for cx, cy in self.centers():
            px = np.diff(ndtr((edges - cx) / self.std))
            py = np.diff(ndtr((edges - cy) / self.std))
            mass += np.outer(px, py)
        return mass / self.num

    def in_support(self, x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None, :] - self.centers()[None], axis=-1).min(1)
        return d <= self.support_radius * self.std

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        sq = ((x[:, None, :] - self.centers()[None]) ** 2).sum(-1)
        comp = -sq / (2 * self.std**2) - math.log(2 * math.pi * self.std**2) - math.log(self.num)
        m = comp.max(1, keepdims=True)
        return (m + np.log(np.exp(comp - m).sum(1, keepdims=True)))[:, 0]


DATASETS_2D = {"checkerboard": Checkerboard(), "gmm2d": GaussianRing()}


def get_dataset_2d(name: str):
    if name not in DATASETS_2D:
        raise ValueError(f"unknown 2D dataset {name!r}; choose one of {sorted(DATASETS_2D)}")
    return DATASETS_2D[name]
