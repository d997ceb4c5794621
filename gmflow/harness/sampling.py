"""The block sampling driver: sample sets whose sample ``i`` depends only on ``(seed, i // block_size)``, never on
batch or worker count, with every network evaluation counted (:mod:`gmflow.harness.adapters`)."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from gmflow.harness import registry
from gmflow.harness.adapters import Counted, NetworkFn, model_fn
from gmflow.harness.seeding import stream_generator
from gmflow.schedule import sigma_grid


@torch.no_grad()
def generate(net: nn.Module, method: str, solver: str, nfe: int, num_samples: int, sample_shape: tuple[int, ...],
             seed: int = 0, block_size: int = 10000, substeps: str | int = registry.DEFAULT_SUBSTEPS,
             guidance: str = "none", scale: float = 0.0, orthogonal: float = 1.0, labels: Tensor | None = None,
             null_label: int | None = None, progress: bool = True,
             spectrum_net: nn.Module | None = None) -> tuple[np.ndarray, dict]:
    """Draw ``num_samples`` with ``solver`` at an NFE budget ``nfe``.

    ``labels (num_samples,)`` condition sample ``i`` on ``labels[i]``; ``spectrum_net`` switches GM-SDE to spectral
    sampling of ``x0^`` (docs/method.md, Sec. 5). A GMFlow model with a flow solver is driven through its GM mean.

    Returns:
        samples ``(N, *sample_shape)`` float32 and a record with the measured NFE per sample, forwards and seconds.
    """
    registry.check_solver(method, solver)
    fn = registry.SOLVERS[solver]
    steps = registry.steps_for_nfe(solver, nfe)
    sigmas = sigma_grid(steps)
    kwargs = {}
    if solver in registry.GM_ODE_SOLVERS:
        kwargs["substeps"] = registry.substeps_for_nfe(nfe, substeps)
    if spectrum_net is not None:
        if solver not in registry.GM_SDE_SOLVERS:
            raise ValueError(f"spectral sampling applies to GM-SDE solvers only, not {solver!r}")
        from gmflow.spectral import spectral_x0_sampler

        kwargs["x0_sampler"] = spectral_x0_sampler(spectrum_net.eval())
    net.eval()
    out, nfes, forwards, t0 = [], set(), 0, time.perf_counter()
    blocks = range(-(-num_samples // block_size))
    for b in tqdm(blocks, desc=f"{solver} nfe={nfe}", disable=not progress, mininterval=5):
        n = min(block_size, num_samples - b * block_size)
        gen = stream_generator(seed, b)
        y = None if labels is None else labels[b * block_size : b * block_size + n]
        network = Counted(NetworkFn(net))
        model = model_fn(network, method, solver, guidance, scale, orthogonal, y, null_label)
        x_init = torch.randn((n, *sample_shape), generator=gen)
        x = fn(model, x_init, sigmas, generator=gen, **kwargs).float()
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x.flatten(1)).all(1)).sum())
            raise FloatingPointError(f"{solver} at NFE {nfe} gave {bad} of {n} non-finite samples in block {b} of seed "
                                     f"{seed}: the weights or the guidance settings are broken; nothing was written")
        out.append(x.numpy())
        nfes.add(model.calls)
        forwards += network.calls
    if len(nfes) != 1:
        raise RuntimeError(f"NFE differed between blocks: {sorted(nfes)}")
    record = {"solver": solver, "nfe_budget": nfe, "nfe": nfes.pop(), "steps": steps,
              "substeps": kwargs.get("substeps", 1), "network_forwards": forwards,
              "sample_seconds": round(time.perf_counter() - t0, 3), "num_samples": num_samples,
              "block_size": block_size, "seed": seed, "guidance": guidance, "guidance_scale": scale,
              "orthogonal": orthogonal if guidance != "none" else 0.0, "spectral": int(spectrum_net is not None)}
    return np.concatenate(out), record
