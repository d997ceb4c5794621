"""Training losses as callables: ``loss_fn(net, x0, y, generator) -> (B,)``, one value per sample.

The training loop never looks at the method: it receives one of these. Both draw the noise level and the noise in
the same order from the batch's generator, so a GMFlow run and a flow-matching run of the same seed see the same
``sigma`` and ``eps`` for the same batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from baselines.fm import fm_loss, fm_pair
from gmflow.loss import sample_transition_pair, transition_loss
from gmflow.schedule import shift_sigma, sigma_to_timestep

LossFn = Callable[[nn.Module, Tensor, "Tensor | None", torch.Generator], Tensor]


def sample_sigma(n: int, kind: str, shift: float, generator: torch.Generator) -> Tensor:
    """Training noise levels (docs/method.md, Sec. 3.1): ``1 - U[0,1)`` or ``sigmoid(N(0,1))``,
    shifted, clamped >= 1e-4."""
    if kind == "uniform":
        s = 1 - torch.rand(n, generator=generator)
    elif kind == "logit-normal":
        s = torch.sigmoid(torch.randn(n, generator=generator))
    else:
        raise ValueError(f"unknown time sampler {kind!r}; use 'uniform' or 'logit-normal'")
    return shift_sigma(s, shift).clamp(min=1e-4, max=1.0)


@dataclass(frozen=True)
class FlowMatchingLoss:
    """L2 flow matching: ``|| v(x_t, t) - (eps - x0) ||^2`` (the baseline of the paper)."""

    time_sampler: str = "uniform"
    time_shift: float = 1.0

    def __call__(self, net: nn.Module, x0: Tensor, y: Tensor | None, generator: torch.Generator) -> Tensor:
        sigma = sample_sigma(x0.shape[0], self.time_sampler, self.time_shift, generator).to(x0)
        eps = torch.randn(x0.shape, generator=generator).to(x0)
        x_t, u = fm_pair(x0, eps, sigma)
        return fm_loss(net(x_t, sigma_to_timestep(sigma), *(() if y is None else (y,))), u)


@dataclass(frozen=True)
class GMFlowLoss:
    """The transition loss of Sec. 3.4 of the paper at ratio ``trans_ratio``, times ``weight_scale``; with a
    ``spectrum_net`` the spectral loss (A.3) is added, whose gradient reaches only that network."""

    trans_ratio: float = 0.9
    weight_scale: float = 1.0
    time_sampler: str = "uniform"
    time_shift: float = 1.0
    spectrum_net: nn.Module | None = None
    spectral_weight: float = 1.0

    def __call__(self, net: nn.Module, x0: Tensor, y: Tensor | None, generator: torch.Generator) -> Tensor:
        sigma = sample_sigma(x0.shape[0], self.time_sampler, self.time_shift, generator).to(x0)
        eps0 = torch.randn(x0.shape, generator=generator).to(x0)
        eps1 = torch.randn(x0.shape, generator=generator).to(x0)
        pair = sample_transition_pair(x0, sigma, self.trans_ratio, eps0, eps1)
        gm_u = net(pair.x_high, sigma_to_timestep(sigma), *(() if y is None else (y,)))
        loss = transition_loss(gm_u, pair) * self.weight_scale
        if self.spectrum_net is not None:
            from gmflow.spectral import spectral_training_loss

            loss = loss + spectral_training_loss(self.spectrum_net, gm_u, x0, pair.x_high, sigma,
                                                 self.spectral_weight)
        return loss


def make_loss(cfg, spectrum_net: nn.Module | None = None) -> LossFn:
    """The loss of a :class:`gmflow.harness.train.TrainConfig`'s method."""
    if cfg.method == "fm":
        if spectrum_net is not None:
            raise ValueError("the spectral loss needs a GM model: method 'gmflow'")
        return FlowMatchingLoss(cfg.time_sampler, cfg.time_shift)
    if cfg.method == "gmflow":
        return GMFlowLoss(cfg.trans_ratio, cfg.weight_scale, cfg.time_sampler, cfg.time_shift, spectrum_net,
                          cfg.spectral_weight)
    raise ValueError(f"unknown method {cfg.method!r}; choose gmflow or fm")
