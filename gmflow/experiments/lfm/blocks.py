"""Local Flow Matching harness: train one block on its pool, push pools with an on-disk cache (docs/method.md, Sec. 7).

A pipeline trains block ``n`` with :func:`train_block` on pool ``n`` (pool 1 is the training set), pushes pool ``n``
through the block's EMA velocity with :func:`push_pool_cached` to get pool ``n + 1``, warm-starts block ``n + 1`` from
block ``n``'s weights (:func:`load_block_weights`; optimiser and EMA restart) and repeats; the last block is the free
one (``h = None``). The math lives in :mod:`baselines.lfm`.

Distillation (paper Sec. 5.2): :func:`train_student` fits a one-step student :func:`block_student` of one block to
teacher pairs ``(noisy side, data side)`` of that block's ODE; students of all blocks chain into an ``N``-NFE sampler
(:func:`baselines.lfm.sample_chain_distilled`).

Networks: any ``net(x, timestep)`` over the project's timestep units, e.g. :class:`gmflow.harness.mlp2d.MLP2D`
with ``head="velocity"``, or a class-conditional ``net(x, timestep, y)`` such as the image DiT with its velocity
head: then the pool carries labels, training drops them to the null class with probability ``label_dropout`` (as
the image runs), and pushing, distillation and sampling condition every sample on its label. Local time
``t in [0, 1]`` is fed as ``timestep = 1000 t`` (:func:`baselines.lfm.local_time_to_timestep`), so block ``t = 1``
sits where ``sigma = 1`` does for flow matching.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from baselines.lfm import (
    INTERPOLANTS,
    StudentFn,
    VelocityFn,
    distill_loss,
    lfm_loss,
    lfm_pair,
    local_time_to_timestep,
    push_pool,
)
from gmflow.harness import io
from gmflow.harness.seeding import stream_generator
from gmflow.harness.train import LoopSettings, drop_labels, optimise


@dataclass
class BlockTrainConfig:
    """Hyper-parameters of one LFM block (the same for every block of a run)."""

    interpolant: str = "linear"
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_gamma: float = 7.0
    checkpoint_every: int = 1000
    seed: int = 0
    label_dropout: float = 0.0
    grad_clip: float = 0.0

    def __post_init__(self):
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.interpolant not in INTERPOLANTS:
            raise ValueError(f"interpolant must be one of {sorted(INTERPOLANTS)}, got {self.interpolant!r}")
        self.loop_settings()  # the loop's own checks: steps, batch size, lr, decay, EMA, clipping

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(self.steps, self.lr, self.weight_decay, self.warmup_steps, self.ema_gamma, self.grad_clip,
                            self.checkpoint_every, batch_size=self.batch_size)


def block_velocity(net: nn.Module) -> VelocityFn:
    """The block velocity ``v(x, t) = net(x, 1000 t)`` of a network over timesteps (``t (B,)`` local times).

    ``v(x, t, y)`` conditions a class-conditional network on labels ``y (B,)``; bind them with
    ``functools.partial(v, y=y)`` to get a :data:`VelocityFn`.
    """

    def v(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        ts = local_time_to_timestep(t)
        return net(x, ts) if y is None else net(x, ts, y)

    return v


def load_block_weights(net: nn.Module, path: str | Path) -> nn.Module:
    """Load a block's safetensors weights into ``net`` (warm start of the next block, or sampling)."""
    net.load_state_dict(io.load_safetensors(path))
    return net


def train_block(net: nn.Module, pool: Tensor, block_index: int, h: float | None, cfg: BlockTrainConfig,
                out_dir: str | Path, progress: bool = True, labels: Tensor | None = None,
                null_label: int = -1) -> dict:
    """Train LFM block ``block_index`` (1-based) on ``pool (M, C, *S)``; write ``out_dir/{model,ema}.safetensors``.

    Each step draws pool rows uniformly with replacement, ``t ~ U[0, 1)`` and ``eps ~ N(0, I)``, builds
    ``(I_t, target) = lfm_pair(x0, t, cfg.interpolant, h, eps)`` and minimises ``lfm_loss(net(I_t, 1000 t), target)``
    with AdamW, a linear warm-up from 0.001x and a power-function EMA (as :func:`gmflow.harness.train.train`).
    ``h = None`` trains the free block. A warm start is the caller's: load the previous block into ``net`` first.
    With ``labels (M,)`` the network is class-conditional: each drawn row's label, dropped to ``null_label`` with
    probability ``cfg.label_dropout``, is its third argument. ``cfg.grad_clip > 0`` clips the gradient norm.

    Resumable (:func:`gmflow.harness.train.optimise`): a killed run started again, or a finished run called again
    with a larger ``cfg.steps``, continues to the same weights as one uninterrupted run. Other settings must not
    change (a state of other settings raises).

    Returns:
        A record: block, h, config, steps, train_seconds, seconds_per_step, num_parameters, final_loss.
    """
    if block_index < 1:
        raise ValueError(f"block_index is 1-based, got {block_index}")
    if h is not None and not h > 0:
        raise ValueError(f"h must be > 0 for an OU block or None for the free block, got {h!r}")
    pool = torch.as_tensor(pool, dtype=torch.float32)
    if pool.dim() < 2 or pool.shape[0] < 1:
        raise ValueError(f"pool must be (M, C, *S) with M >= 1, got shape {tuple(pool.shape)}")
    if labels is not None and labels.shape != pool.shape[:1]:
        raise ValueError(f"labels must be (M,) = ({pool.shape[0]},), got {tuple(labels.shape)}")
    if cfg.label_dropout > 0 and (labels is None or null_label < 0):
        raise ValueError("label_dropout needs labels and the network's null_label")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    identity = {k: v for k, v in asdict(cfg).items() if k != "steps"} | {"block": block_index, "h": h}
    gen = stream_generator(cfg.seed, block_index)

    def step_loss(step: int, micro: int) -> Tensor:  # one micro-batch per step, drawn from gen
        idx = torch.randint(pool.shape[0], (cfg.batch_size,), generator=gen)
        x0 = pool[idx]
        t = torch.rand(cfg.batch_size, generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        x_t, target = lfm_pair(x0, t, cfg.interpolant, h, eps)
        cond = () if labels is None else (drop_labels(labels[idx], cfg.label_dropout, null_label, gen),)
        return lfm_loss(net(x_t, local_time_to_timestep(t), *cond), target).mean()

    kind = "free" if h is None else f"h={h:.4g}"
    res = optimise(net, step_loss, cfg.loop_settings(), gen, out_dir, desc=f"LFM block {block_index} ({kind})",
                   progress=progress, identity=identity, what=f" of block {block_index}")
    ema, elapsed, loss_value = res.ema, res.elapsed, res.loss
    meta = {"block": block_index, "h": h, "interpolant": cfg.interpolant, "steps": cfg.steps,
            "train_seconds": round(elapsed, 2)}
    io.save_safetensors(net.state_dict(), out_dir / "model.safetensors", meta)
    io.save_safetensors(ema.state_dict(), out_dir / "ema.safetensors", meta)
    return {"block": block_index, "h": h, "train": asdict(cfg), "steps": cfg.steps, "train_seconds": round(elapsed, 2),
            "seconds_per_step": round(elapsed / max(cfg.steps, 1), 5),
            "num_parameters": sum(p.numel() for p in net.parameters()), "final_loss": loss_value}


def push_pool_cached(v: VelocityFn, pool: Tensor, path: str | Path, solver: str = "dopri5", nfe: int | None = None,
                     *, rtol: float = 1e-5, atol: float = 1e-5, batch_size: int | None = None,
                     progress: bool = True, labels: Tensor | None = None) -> tuple[Tensor, dict]:
    """Next pool ``T_n(pool)`` (block ``t: 0 -> 1``), cached at ``path`` (``.npz`` with ``x``, ``nfe``, ``seconds``).

    If ``path`` exists it is loaded and nothing is integrated. Otherwise the pool is pushed in batches of
    ``batch_size`` (all at once if ``None``; dopri5's adaptive steps depend on the batch) and written atomically.
    With ``labels (M,)`` every row is pushed conditioned on its label (``v(x, t, y)``) and the labels are stored too.

    Args:
        v: the block velocity (usually :func:`block_velocity` of the EMA network).
        pool: ``(M, C, *S)``.
        path: the cache file.
        solver, nfe, rtol, atol: see :func:`baselines.lfm.push`.

    Returns:
        The pushed pool and a record: cached, nfe (summed over batches), nfe_per_batch, seconds.
    """
    path = Path(path)
    if path.exists():
        with np.load(path) as f:
            x, nfes, seconds = torch.from_numpy(f["x"]), f["nfe"].tolist(), float(f["seconds"])
        return x, {"cached": True, "nfe": int(sum(nfes)), "nfe_per_batch": nfes, "seconds": seconds}
    pool = torch.as_tensor(pool)
    size = pool.shape[0] if batch_size is None else batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    out, nfes, t0 = [], [], time.perf_counter()
    for i in tqdm(range(0, pool.shape[0], size), desc=f"push pool -> {path.name}", disable=not progress,
                  mininterval=5):
        fn = v if labels is None else functools.partial(v, y=labels[i : i + size])
        x, n = push_pool(fn, pool[i : i + size], solver, nfe, rtol=rtol, atol=atol)
        out.append(x)
        nfes.append(n)
    x, seconds = torch.cat(out), time.perf_counter() - t0
    extra = {} if labels is None else {"labels": np.asarray(labels, dtype=np.int64)}
    io.save_npz(path, x=x.cpu().numpy(), nfe=np.asarray(nfes, dtype=np.int64), seconds=np.float64(seconds), **extra)
    return x, {"cached": False, "nfe": int(sum(nfes)), "nfe_per_batch": nfes, "seconds": round(seconds, 3)}


@dataclass
class StudentTrainConfig:
    """Hyper-parameters of the one-step student of one block (the same for every block of a run)."""

    steps: int = 500
    batch_size: int = 1024
    lr: float = 2e-4
    warmup_steps: int = 50
    seed: int = 0

    def __post_init__(self):
        self.loop_settings()  # the loop's own checks: steps, batch size, lr, warm-up

    def loop_settings(self) -> LoopSettings:
        """Warm-up then a cosine decay to 0; no weight decay or clipping; one checkpoint at the end."""
        return LoopSettings(self.steps, self.lr, 0.0, self.warmup_steps, 0.0, 0.0, self.steps,
                            batch_size=self.batch_size, schedule="cosine")


def block_student(net: nn.Module, num_steps: int = 1) -> StudentFn:
    """A ``k``-step student of a block over a network: ``s(x, t_j) = x - (t_j - t_{j+1}) net(x, 1000 t_j)``.

    The grid is :func:`baselines.lfm.student_time_grid` (uniform, ``t_j - t_{j+1} = 1/k``). The network predicts the
    mean velocity over the step, so a student warm-started from its teacher's weights starts as one Euler step of the
    teacher (``k = 1``: ``x_0 = x_1 - v(x_1, 1)``).
    """
    dt = 1.0 / num_steps
    v = block_velocity(net)

    def s(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return x - dt * v(x, t, y)

    return s


def train_student(net: nn.Module, x_noisy: Tensor, x_data: Tensor, block_index: int, cfg: StudentTrainConfig,
                  out_dir: str | Path, progress: bool = True, labels: Tensor | None = None) -> dict:
    """Distil block ``block_index`` into the one-step student ``block_student(net)``; write ``student.safetensors``.

    Teacher pairs are rows of ``x_noisy (M, C, *S)`` (the block's state at local ``t = 1``) and ``x_data (M, C, *S)``
    (the teacher ODE's endpoint at ``t = 0`` from that state). Each step draws rows uniformly with replacement and
    minimises ``distill_loss(student(x_noisy, 1), x_data)`` in the shared loop (:func:`gmflow.harness.train.optimise`)
    with a linear warm-up from 0.001x and a cosine decay to 0 (the last weights are the student, not the EMA).
    Warm-start ``net`` from the teacher's weights first. ``labels (M,)`` condition each pair on its label (no
    dropout: the student serves conditional sampling). A student of a group of blocks ``n..m`` takes pairs
    ``(pool_m, pool_{n-1})``; ``block_index`` is then ``n``.

    Returns:
        A record: block, config, steps, train_seconds, num_pairs, initial_loss (the warm start, i.e. one Euler step
        of the teacher when warm-started), final_loss (mean over the last 10% of steps).
    """
    x_noisy, x_data = (torch.as_tensor(a, dtype=torch.float32) for a in (x_noisy, x_data))
    if x_noisy.shape != x_data.shape or x_noisy.dim() < 2 or x_noisy.shape[0] < 1:
        raise ValueError(f"teacher pairs must be two (M, C, *S) arrays of one shape with M >= 1, got "
                         f"{tuple(x_noisy.shape)} and {tuple(x_data.shape)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = stream_generator(cfg.seed, block_index, 1)  # not the teacher's stream
    student = block_student(net)
    with torch.no_grad():
        n = min(4096, x_noisy.shape[0])
        y0 = None if labels is None else labels[:n]
        initial = distill_loss(student(x_noisy[:n], torch.ones(n), y0), x_data[:n]).mean().item()

    def step_loss(step: int, micro: int) -> Tensor:  # one micro-batch per step, drawn from gen
        idx = torch.randint(x_noisy.shape[0], (cfg.batch_size,), generator=gen)
        y = None if labels is None else labels[idx]
        return distill_loss(student(x_noisy[idx], torch.ones(cfg.batch_size), y), x_data[idx]).mean()

    identity = {**asdict(cfg), "block": block_index, "kind": "student"}
    res = optimise(net, step_loss, cfg.loop_settings(), gen, out_dir, desc=f"distil block {block_index}",
                   progress=progress, identity=identity, on_other_run="restart",
                   what=f" (distillation of block {block_index})")
    elapsed = res.elapsed
    tail = res.losses[-max(1, len(res.losses) // 10) :]
    meta = {"block": block_index, "kind": "student", "student_steps": 1, "steps": cfg.steps,
            "train_seconds": round(elapsed, 2)}
    io.save_safetensors(net.state_dict(), out_dir / "student.safetensors", meta)
    return {"block": block_index, "distill": asdict(cfg), "steps": cfg.steps, "train_seconds": round(elapsed, 2),
            "num_pairs": int(x_noisy.shape[0]), "initial_loss": initial, "final_loss": float(np.mean(tail))}
