"""Where the work runs: the device setting, mixed precision of the network alone, and the process group of a
``torchrun`` launch.

- ``device``: ``auto`` (the first CUDA GPU, else Apple ``mps``, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or
  ``mps``. Under ``torchrun`` a ``cuda`` device means the local rank's GPU.
- ``precision``: ``fp32`` or ``bf16``. ``bf16`` autocasts the network's forward only (:class:`Autocast`); its outputs
  return in float32, so the GM algebra, the losses and the solvers always run in float32, as in the paper's code.
- Randomness never depends on the device: generators stay on the CPU and their draws move to the device
  (:func:`randn`), so a sample set is the same on every device up to floating-point error.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

DEVICES = ("auto", "cpu", "cuda", "mps")  # plus "cuda:N"
PRECISIONS = ("fp32", "bf16")


def check_device_name(name: str) -> str:
    """``name`` if it is a device setting this project accepts (raises ``ValueError`` naming the choices)."""
    base, _, index = str(name).partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be one of {DEVICES} or cuda:N, got {name!r}")
    return str(name)


def resolve_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` of a device setting; refuses a GPU that this machine does not have."""
    name = check_device_name(name)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but this machine has no CUDA GPU; use device 'cpu' "
                             "or 'auto'")
        index = int(name.split(":")[1]) if ":" in name else local_rank % torch.cuda.device_count()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(index)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convolutions, as the paper's training
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda", index)
    if name == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' was asked for but is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast_context(device: torch.device, precision: str):
    """A bf16 autocast region on ``device`` for ``precision = 'bf16'``, else a no-op context."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_float32(out):
    from gmflow.gm import GaussianMixture

    if isinstance(out, GaussianMixture):
        return out.to(torch.float32)
    if isinstance(out, Tensor):
        return out.float()
    return out


class Autocast(nn.Module):
    """``net`` with its forward in ``precision`` on ``device`` and its outputs (a tensor or a GaussianMixture) in
    float32. Holds no parameters of its own: ``state_dict`` keys are the wrapped network's under ``net.``, so save
    ``wrapper.net``."""

    def __init__(self, net: nn.Module, device: torch.device, precision: str = "fp32"):
        super().__init__()
        self.net, self.device, self.precision = net, device, check_precision(precision)

    def forward(self, *args, **kwargs):
        with autocast_context(self.device, self.precision):
            out = self.net(*args, **kwargs)
        return _to_float32(out)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("net"), name)  # null_label, config, head, ... of the network


def randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """Standard normal noise drawn on the CPU from ``generator`` and moved to ``device`` (device-independent)."""
    return torch.randn(shape, generator=generator).to(device)


@dataclass(frozen=True)
class Distributed:
    """The process group of this process: ``world_size`` processes, this one ``rank`` (1 and 0 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group of a ``torchrun`` launch (NCCL on CUDA, gloo on the CPU); a plain run is rank 0 of 1.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous address; nothing is initialised for
    a world of one.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def barrier(group: Distributed) -> None:
    if group.enabled:
        import torch.distributed as dist

        dist.barrier()


def launch(device: str = "auto") -> tuple[torch.device, Distributed]:
    """The device and the process group of a training or sampling command (one call at the start of a command)."""
    dev = resolve_device(device)
    return dev, init_distributed(dev)
