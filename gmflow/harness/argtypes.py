"""Typed, ranged argparse values shared by the command-line entry points."""

from __future__ import annotations

import argparse
import math


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def positive_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {s}")
    return v


def unit_interval(s: str) -> float:
    """A number in (0, 1]."""
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def substeps(s: str) -> str | int:
    """GM-ODE sub-steps: a rule name of the registry or a positive integer."""
    from gmflow.harness import registry

    if s in registry.SUBSTEP_RULES:
        return s
    v = positive_int(s)
    if v > registry.MAX_SUBSTEPS:
        raise argparse.ArgumentTypeError(f"must be a rule ({', '.join(registry.SUBSTEP_RULES)}) or an integer in "
                                         f"[1, {registry.MAX_SUBSTEPS}], got {s}")
    return v


DIT_SHAPE_FLAGS = (("patch_size", "--patch-size", "patch size"), ("depth", "--dit-depth", "blocks"),
                   ("width", "--dit-width", "hidden size"), ("num_heads", "--num-heads", "heads"))
"""A DiT's shape overrides (DiTConfig field, command-line flag, what it sets): the image trainer's, the LFM image
blocks', the speed benchmarks' and the workflow's one table."""


def add_dit_shape_args(s: argparse.ArgumentParser, help_prefix: str = "") -> None:
    """``--patch-size``, ``--dit-depth``, ``--dit-width``, ``--num-heads`` (positive; None keeps the variant's)."""
    for _, flag, what in DIT_SHAPE_FLAGS:
        s.add_argument(flag, type=positive_int, default=None, help=f"{help_prefix}DiT {what} (default: the variant's)")


def dit_shape_overrides(a: argparse.Namespace) -> dict:
    """The DiTConfig fields set by :func:`add_dit_shape_args`'s flags (the unset ones left out)."""
    given = {field: getattr(a, flag[2:].replace("-", "_")) for field, flag, _ in DIT_SHAPE_FLAGS}
    return {k: v for k, v in given.items() if v is not None}


def device_name(s: str) -> str:
    """A device setting: auto, cpu, cuda, cuda:N or mps."""
    from gmflow.harness.devices import check_device_name

    try:
        return check_device_name(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_device_args(s: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision`` (:mod:`gmflow.harness.devices`)."""
    from gmflow.harness.devices import PRECISIONS

    s.add_argument("--device", type=device_name, default="auto",
                   help="auto (a GPU when present), cpu, cuda, cuda:N or mps (under torchrun: the local rank's GPU)")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16 autocasts the network's forward only; the GM algebra, losses and solvers stay float32")


def args_record(a: argparse.Namespace) -> dict:
    """The parsed arguments of a sub-command, for provenance records."""
    return {k: v for k, v in vars(a).items() if k != "func"}


def ranged(name: str):
    """The argparse type of a numeric training setting (:data:`gmflow.harness.ranges.RANGES`)."""
    from gmflow.harness.ranges import argtype

    return argtype(name)


def add_training_args(s: argparse.ArgumentParser, *, steps: int, batch_size: int, lr: float, warmup_steps: int,
                      checkpoint_every: int) -> None:
    """The options of the shared training loop (:func:`gmflow.harness.train.optimise`) and the loss."""
    from gmflow.harness import registry

    s.add_argument("--method", choices=registry.METHODS, required=True)
    s.add_argument("--num-components", "-K", type=positive_int, default=64, help="GM components (gmflow only)")
    s.add_argument("--trans-ratio", type=ranged("trans_ratio"), default=0.9,
                   help="transition ratio lambda; 1 = plain NLL")
    s.add_argument("--weight-scale", type=ranged("weight_scale"), default=1.0)
    s.add_argument("--grad-clip", type=ranged("grad_clip"), default=0.0, help="gradient-norm clip; 0 = off")
    s.add_argument("--weight-decay", type=ranged("weight_decay"), default=0.0,
                   help="AdamW weight decay (none on biases and norms)")
    s.add_argument("--steps", type=positive_int, default=steps)
    s.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="global batch per optimisation step (all processes and accumulation steps together)")
    s.add_argument("--micro-batch-size", type=nonneg_int, default=0,
                   help="samples per forward pass; batch-size / micro-batch-size micro-batches are shared by the "
                   "torchrun processes and accumulated; 0 = the whole batch in one pass")
    s.add_argument("--lr", type=ranged("lr"), default=lr)
    s.add_argument("--warmup-steps", type=nonneg_int, default=warmup_steps)
    s.add_argument("--ema", choices=("power", "rampup"), default="power",
                   help="EMA: 'power' (beta_n = (1 - 1/n)^(gamma+1)) or 'rampup' (the paper's ImageNet EMA)")
    s.add_argument("--ema-gamma", type=ranged("ema_gamma"), default=7.0, help="power EMA exponent gamma")
    s.add_argument("--ema-kimg", type=ranged("ema_kimg"), default=30000.0,
                   help="ramp-up EMA half-life in thousands of images")
    s.add_argument("--ema-rampup", type=ranged("ema_rampup"), default=0.05,
                   help="ramp-up EMA: half-life at most this fraction of the images seen")
    s.add_argument("--time-sampler", choices=registry.TIME_SAMPLERS, default="uniform")
    s.add_argument("--checkpoint-every", type=positive_int, default=checkpoint_every)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--threads", type=positive_int, default=1)
    add_device_args(s)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="run folder")


def train_config(a: argparse.Namespace, **extra):
    """The :class:`gmflow.harness.train.TrainConfig` of parsed :func:`add_training_args` options."""
    from gmflow.harness.train import TrainConfig

    return TrainConfig(method=a.method, num_components=a.num_components, trans_ratio=a.trans_ratio,
                       weight_scale=a.weight_scale, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                       warmup_steps=a.warmup_steps, ema_gamma=a.ema_gamma, ema=a.ema, ema_kimg=a.ema_kimg,
                       ema_rampup=a.ema_rampup, time_sampler=a.time_sampler, checkpoint_every=a.checkpoint_every,
                       seed=a.seed, grad_clip=a.grad_clip, weight_decay=a.weight_decay,
                       micro_batch_size=a.micro_batch_size, precision=a.precision, **extra)


def add_sampling_args(s: argparse.ArgumentParser, *, num_samples: int, block_size: int) -> None:
    """The options of one sample set of a trained run (the block sampling driver)."""
    from gmflow.harness import registry

    s.add_argument("--run-dir", required=True)
    s.add_argument("--solver", choices=sorted(registry.SOLVERS), required=True)
    s.add_argument("--nfe", type=positive_int, required=True, help="network-evaluation budget")
    s.add_argument("--num-samples", type=positive_int, default=num_samples)
    s.add_argument("--block-size", type=positive_int, default=block_size, help="samples per generator stream")
    s.add_argument("--substeps", type=substeps, default=registry.DEFAULT_SUBSTEPS,
                   help=f"GM-ODE sub-steps: a rule ({', '.join(registry.SUBSTEP_RULES)}) or an integer")
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--threads", type=positive_int, default=1)
    add_device_args(s)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="output .npz")
