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
from gmflow.harness.devices import Autocast, Distributed, randn
from gmflow.harness.seeding import stream_generator
from gmflow.schedule import sigma_grid


@torch.no_grad()
def generate(net: nn.Module, method: str, solver: str, nfe: int, num_samples: int, sample_shape: tuple[int, ...],
             seed: int = 0, block_size: int = 10000, substeps: str | int = registry.DEFAULT_SUBSTEPS,
             guidance: str = "none", scale: float = 0.0, orthogonal: float = 1.0, labels: Tensor | None = None,
             null_label: int | None = None, progress: bool = True,
             spectrum_net: nn.Module | None = None, device: torch.device | str = "cpu",
             precision: str = "fp32", group: Distributed | None = None) -> tuple[np.ndarray, dict]:
    """Draw ``num_samples`` with ``solver`` at an NFE budget ``nfe``.

    Sample ``i`` depends only on ``(seed, i // block_size)``: a partial last block costs a whole block's work
    (choose a ``block_size`` that divides ``num_samples`` to avoid it). ``labels (num_samples,)`` condition sample
    ``i`` on ``labels[i]``; ``spectrum_net`` switches GM-SDE to spectral
    sampling of ``x0^`` (docs/method.md, Sec. 5). A GMFlow model with a flow solver is driven through its GM mean.
    The networks run on ``device`` (``precision`` ``bf16`` autocasts their forward only); every random draw comes from
    a CPU generator, so a set is the same on every device up to floating-point error. Under ``torchrun``
    (``group``) process ``r`` of ``W`` draws blocks ``r, r + W, ...`` and every process returns the whole set in block
    order, equal bit for bit to a single process's on the same device.

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

        kwargs["x0_sampler"] = spectral_x0_sampler(spectrum_net.to(device).eval())
    device = torch.device(device)
    net = Autocast(net.to(device).eval(), device, precision)
    group = group or Distributed()
    out, nfes, forwards, t0 = {}, set(), 0, time.perf_counter()
    blocks = range(-(-num_samples // block_size))[group.rank :: group.world_size]
    for b in tqdm(blocks, desc=f"{solver} nfe={nfe}", disable=not progress or not group.is_main, mininterval=5):
        n = min(block_size, num_samples - b * block_size)
        gen = stream_generator(seed, b)
        # A partial last block is drawn whole and cut: every draw (and the batch size of every kernel) is that of a
        # full block, so sample i depends on (seed, i // block_size) alone, never on num_samples.
        y = None if labels is None else _block_labels(labels, b, block_size).to(device)
        network = Counted(NetworkFn(net))
        model = model_fn(network, method, solver, guidance, scale, orthogonal, y, null_label)
        x_init = randn((block_size, *sample_shape), gen, device)
        x = fn(model, x_init, sigmas, generator=gen, **kwargs).float()[:n]
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x.flatten(1)).all(1)).sum())
            raise FloatingPointError(f"{solver} at NFE {nfe} gave {bad} of {n} non-finite samples in block {b} of seed "
                                     f"{seed}: the weights or the guidance settings are broken; nothing was written")
        out[b] = x.cpu().numpy()
        nfes.add(model.calls)
        forwards += network.calls
    if group.enabled:  # every process gets every block
        import torch.distributed as dist

        parts = [None] * group.world_size
        dist.all_gather_object(parts, (out, nfes, forwards))
        out, nfes, forwards = {}, set(), 0
        for o, n, f in parts:
            out.update(o)
            nfes |= n
            forwards += f
    if len(nfes) != 1:
        raise RuntimeError(f"NFE differed between blocks: {sorted(nfes)}")
    record = {"solver": solver, "nfe_budget": nfe, "nfe": nfes.pop(), "steps": steps,
              "substeps": kwargs.get("substeps", 1), "network_forwards": forwards,
              "sample_seconds": round(time.perf_counter() - t0, 3), "num_samples": num_samples,
              "block_size": block_size, "seed": seed, "guidance": guidance, "guidance_scale": scale,
              "orthogonal": orthogonal if guidance != "none" else 0.0, "spectral": int(spectrum_net is not None),
              "device": str(device), "precision": precision, "processes": group.world_size}
    return np.concatenate([out[b] for b in sorted(out)]), record


def _block_labels(labels: Tensor, b: int, block_size: int) -> Tensor:
    """The labels of block ``b``, padded to ``block_size`` by repeating the set's labels (padded samples are cut)."""
    idx = torch.arange(b * block_size, (b + 1) * block_size) % len(labels)
    return labels[idx]
