"""Networks: the 2D toy MLP of docs/method.md, Sec. 2.4, with a GM head or a velocity head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gmflow.gm import GaussianMixture

MIN_PERIOD = 5e-3
"""The finest period of the position features: the paper's toy value (docs/method.md, Sec. 2.4)."""
MAX_PERIOD = 50.0
"""The coarsest period of the position features."""


def timestep_embedding(t: Tensor, dim: int = 256, flip_sin_to_cos: bool = True, shift: float = 1.0) -> Tensor:
    """Sinusoidal embedding of continuous timesteps ``t (B,)`` in [0, 1000] (the diffusers ``Timesteps`` layout).

    Frequencies ``exp(-log(10000) i / (dim/2 - shift))``, ``i = 0..dim/2-1``; output ``[cos, sin]`` when flipped.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - shift))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


def position_features(x: Tensor, num_freqs: int = 64, min_period: float = MIN_PERIOD,
                      max_period: float = MAX_PERIOD) -> Tensor:
    """Fourier features of coordinates ``x (B, D)``: ``num_freqs`` periods log-spaced in [min_period, max_period],
    ``P_i = min_period (max_period / min_period)^(i / (num_freqs - 1))`` (docs/method.md, Sec. 2.4). ``min_period``
    is the network's bandwidth: the finest spatial scale its velocity can resolve.

    Returns:
        ``(B, D * 2 * num_freqs)``: ``[sin(2 pi x / P), cos(2 pi x / P)]`` per coordinate.
    """
    periods = torch.logspace(math.log10(min_period), math.log10(max_period), num_freqs, device=x.device)
    args = 2 * math.pi * x.float()[:, :, None] / periods  # (B, D, F)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).flatten(1)


class MLP2D(nn.Module):
    """Toy MLP over 2D points (docs/method.md, Sec. 2.4): time and position embeddings,
    ``depth`` x (Linear, SiLU) of ``width``.

    Head ``"gm"`` returns a velocity-space :class:`GaussianMixture` with K components (means ``(B, K, 2)``,
    logweights ``(B, K, 1)``, logstds ``(B, 1, 1)``, the log-std depending on x_t as in the reference toy);
    head ``"velocity"`` returns ``(B, 2)``. Kaiming-normal weights, zero biases, zero logits and log-std heads.
    ``min_period`` is the finest period of the position features (:func:`position_features`; the paper's 0.005 by
    default); it has no weights, so a run's ``run.json`` records it (:mod:`gmflow.harness.runs`).
    """

    def __init__(self, head: str = "gm", num_components: int = 64, width: int = 512, depth: int = 5,
                 num_freqs: int = 64, time_dim: int = 256, data_dim: int = 2, min_period: float = MIN_PERIOD):
        super().__init__()
        if head not in ("gm", "velocity"):
            raise ValueError(f"head must be 'gm' or 'velocity', got {head!r}")
        if not (math.isfinite(min_period) and 0 < min_period < MAX_PERIOD):
            raise ValueError(f"min_period must be a finite number in (0, {MAX_PERIOD:g}) (the coarsest period), "
                             f"got {min_period!r}")
        self.head, self.K, self.data_dim = head, num_components, data_dim
        self.num_freqs, self.time_dim, self.min_period = num_freqs, time_dim, float(min_period)
        layers, d_in = [], time_dim + data_dim * 2 * num_freqs
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.SiLU()]
            d_in = width
        self.trunk = nn.Sequential(*layers)
        if head == "gm":
            self.means = nn.Linear(width, num_components * data_dim)
            self.logits = nn.Linear(width, num_components)
            self.logstd = nn.Linear(width, 1)
        else:
            self.velocity = nn.Linear(width, data_dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        if head == "gm":
            nn.init.zeros_(self.logits.weight)
            nn.init.zeros_(self.logstd.weight)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> GaussianMixture | Tensor:
        """Args: ``x_t (B, 2)``; ``t (B,)`` timesteps in [0, 1000]; ``y`` unused (unconditional toy)."""
        h = torch.cat([timestep_embedding(t, self.time_dim), position_features(x_t, self.num_freqs, self.min_period)],
                      dim=-1)  # (B, time_dim + 2 * 2 * num_freqs)
        h = self.trunk(h)  # (B, width)
        if self.head == "velocity":
            return self.velocity(h)  # (B, 2)
        b = x_t.shape[0]
        means = self.means(h).view(b, self.K, self.data_dim)  # (B, K, 2)
        logweights = torch.log_softmax(self.logits(h), dim=-1).view(b, self.K, 1)  # (B, K, 1)
        logstds = self.logstd(h).view(b, 1, 1)  # (B, 1, 1)
        return GaussianMixture(means, logweights, logstds)
