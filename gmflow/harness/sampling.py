"""Sampling driver: one model wrapper that conditions, guides and COUNTS network evaluations, and a generator of
sample sets whose sample ``i`` depends only on ``(seed, i // block_size)``, never on batch or worker count."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from baselines.samplers import cfg_velocity
from gmflow.gm import GaussianMixture
from gmflow.guidance import guided_gm_prediction
from gmflow.harness import registry
from gmflow.schedule import sigma_grid, sigma_to_timestep


class CountingModel:
    """``model_fn(x_t, sigma)`` over a network, for any solver of either family.

    Converts sigma to the network's timestep ``1000 sigma``, applies guidance (probabilistic or CFG on GMs, CFG on
    velocities; the conditional and unconditional passes run as one batched forward) and counts:
    ``nfe`` = calls by the solver (the NFE of the tables), ``forwards`` = network forward passes.
    """

    def __init__(self, net: nn.Module, method: str, guidance: str = "none", scale: float = 0.0,
                 orthogonal: float = 1.0, y: Tensor | None = None, null_label: int | None = None,
                 as_velocity: bool = False):
        if guidance not in registry.GUIDANCE:
            raise ValueError(f"unknown guidance {guidance!r}; choose one of {registry.GUIDANCE}")
        if guidance != "none" and (y is None or null_label is None):
            raise ValueError("guidance needs class labels y and the null label of an unconditional pass")
        if method == "fm" and guidance == "probabilistic":
            raise ValueError("probabilistic guidance needs a GM model (method 'gmflow'); use 'cfg' for 'fm'")
        self.net, self.method, self.guidance = net, method, guidance
        self.scale, self.orthogonal, self.y, self.null_label = scale, orthogonal, y, null_label
        self.as_velocity = as_velocity and method == "gmflow"
        self.nfe = 0
        self.forwards = 0

    def _forward(self, x_t: Tensor, sigma: Tensor, y: Tensor | None):
        self.forwards += 1
        return self.net(x_t, sigma_to_timestep(sigma), y)

    def __call__(self, x_t: Tensor, sigma: Tensor):
        out = self._call(x_t, sigma)
        if not self.as_velocity:
            return out
        # a flow solver on a GM model: the velocity of the (guided) x0-space GM mean, u = (x_t - E[x0]) / sigma
        s = sigma.view(-1, *([1] * (x_t.dim() - 1))).float()
        if isinstance(out, GaussianMixture):
            return out.mean()
        return (x_t.float() - out.gm.mean()) / s.clamp(min=1e-6)

    def _call(self, x_t: Tensor, sigma: Tensor):
        self.nfe += 1
        y = None if self.y is None else self.y[: x_t.shape[0]]
        if self.guidance == "none":
            out = self._forward(x_t, sigma, y)
            return out.to(torch.float32) if isinstance(out, GaussianMixture) else out.float()
        b = x_t.shape[0]
        out = self._forward(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]),
                            torch.cat([y, torch.full_like(y, self.null_label)]))
        if self.method == "gmflow":
            cond = GaussianMixture(out.means[:b], out.logweights[:b], out.logstds[:b])
            uncond = GaussianMixture(out.means[b:], out.logweights[b:], out.logstds[b:])
            return guided_gm_prediction(cond, uncond, x_t, sigma, self.guidance, self.scale, self.orthogonal)
        return cfg_velocity(out[:b].float(), out[b:].float(), self.scale, self.orthogonal)


def block_generator(seed: int, block: int) -> torch.Generator:
    """The generator of sample block ``block`` of seed ``seed`` (independent streams via SeedSequence)."""
    state = np.random.SeedSequence([seed, block]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1] >> 1))


@torch.no_grad()
def generate(net: nn.Module, method: str, solver: str, nfe: int, num_samples: int, sample_shape: tuple[int, ...],
             seed: int = 0, block_size: int = 10000, substeps: str | int = registry.DEFAULT_SUBSTEPS,
             guidance: str = "none", scale: float = 0.0, orthogonal: float = 1.0, labels: Tensor | None = None,
             null_label: int | None = None, progress: bool = True,
             spectrum_net: nn.Module | None = None) -> tuple[np.ndarray, dict]:
    """Draw ``num_samples`` with ``solver`` at an NFE budget ``nfe``.

    ``labels (num_samples,)`` condition sample ``i`` on ``labels[i]``; ``spectrum_net`` switches GM-SDE to spectral
    sampling of ``x0^`` (SPEC Sec. 5). A GMFlow model with a flow solver is driven through its GM mean.

    Returns:
        samples ``(N, *sample_shape)`` float32 and a record with the measured NFE per sample, forwards and seconds.
    """
    registry.check_solver(method, solver)
    fn = registry.SOLVERS[solver]
    steps = registry.steps_for_nfe(solver, nfe)
    sigmas = sigma_grid(steps)
    kwargs = {}
    if solver in ("gm-ode", "gm-ode-2"):
        kwargs["substeps"] = registry.substeps_for_nfe(nfe, substeps)
    if spectrum_net is not None:
        if solver not in ("gm-sde", "gm-sde-2"):
            raise ValueError(f"spectral sampling applies to GM-SDE solvers only, not {solver!r}")
        from gmflow.spectral import spectral_x0_sampler

        kwargs["x0_sampler"] = spectral_x0_sampler(spectrum_net.eval())
    as_velocity = method == "gmflow" and solver not in registry.GM_SOLVERS_KEYS
    net.eval()
    out, nfes, forwards, t0 = [], set(), 0, time.perf_counter()
    blocks = range(-(-num_samples // block_size))
    for b in tqdm(blocks, desc=f"{solver} nfe={nfe}", disable=not progress, mininterval=5):
        n = min(block_size, num_samples - b * block_size)
        gen = block_generator(seed, b)
        y = None if labels is None else labels[b * block_size : b * block_size + n]
        model = CountingModel(net, method, guidance, scale, orthogonal, y, null_label, as_velocity)
        x_init = torch.randn((n, *sample_shape), generator=gen)
        out.append(fn(model, x_init, sigmas, generator=gen, **kwargs).float().numpy())
        nfes.add(model.nfe)
        forwards += model.forwards
    if len(nfes) != 1:
        raise RuntimeError(f"NFE differed between blocks: {sorted(nfes)}")
    record = {"solver": solver, "nfe_budget": nfe, "nfe": nfes.pop(), "steps": steps,
              "substeps": kwargs.get("substeps", 1), "network_forwards": forwards,
              "sample_seconds": round(time.perf_counter() - t0, 3), "num_samples": num_samples,
              "block_size": block_size, "seed": seed, "guidance": guidance, "guidance_scale": scale,
              "orthogonal": orthogonal if guidance != "none" else 0.0, "spectral": int(spectrum_net is not None)}
    return np.concatenate(out), record
