"""Local Flow Matching (LFM; Xu, Cheng and Xie, ICLR 2025): sub-flows trained one after another
(docs/method.md, Sec. 7).

The forward process is the Ornstein-Uhlenbeck (OU) process ``dX = -X dt + sqrt(2) dW``. The data is carried to
``N(0, I)`` by ``N`` sub-flows ``T_1..T_N``: block ``n < N`` is a flow-matching model between the pool ``x0`` (the data
pushed through ``T_1..T_{n-1}``) and one OU step of length ``h_n`` applied to it; the last, "free" block ``N`` is plain
flow matching from its pool to an independent ``N(0, I)`` sample.

Local time. Every block has its own time ``t in [0, 1]``: ``t = 0`` is its data side and ``t = 1`` its noisier side,
the same direction as the project's ``sigma`` (``sigma = 1`` noise). A block's velocity callable is ``v(x, t)`` with
``x (B, C, *S)`` and ``t (B,)`` local times; its ODE is ``dx/dt = v(x, t)``. Sampling runs the blocks ``N, ..., 1``,
each from ``t = 1`` to ``t = 0``; pushing a pool runs one block from ``t = 0`` to ``t = 1``. The only conversion out of
local time is :func:`local_time_to_timestep` (the network input, ``1000 t``, the units of
:func:`gmflow.schedule.sigma_to_timestep`). For the free block with the linear interpolant, local time IS ``sigma``:
``lfm_pair(x0, t, "linear", None, eps)`` equals ``baselines.fm.fm_pair(x0, eps, t)`` (tested).

Blocks are given as a list ``[v_1, ..., v_N]`` in training order. Solvers only integrate a callable and never know
how it was trained; every evaluation is counted by :class:`NFECounter`. The exact likelihood of a chain is in
:mod:`baselines.lfm_likelihood`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torchdiffeq
from torch import Tensor

from gmflow.gm import bcast, sample_dims
from gmflow.schedule import NUM_TIMESTEPS

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``v(x (B, C, *S), t (B,)) -> (B, C, *S)``: a block's velocity at local time ``t``."""

StudentFn = Callable[[Tensor, Tensor], Tensor]
"""``student(x (B, C, *S), t (B,)) -> (B, C, *S)``: a distilled block. Given the state at grid time ``t_j`` of
:func:`student_time_grid` it returns the state at the next grid time ``t_{j+1}`` (one call = one NFE)."""

SOLVERS = ("euler", "heun", "dopri5")
"""Block ODE solvers of :func:`push`: fixed-step Euler and Heun (``nfe`` exact) and adaptive dopri5 (torchdiffeq)."""


# ---------------------------------------------------------------------------------------------------------------------
# Forward process and schedule
# ---------------------------------------------------------------------------------------------------------------------


def ou_step(x0: Tensor, h: float | Tensor, eps: Tensor) -> Tensor:
    """One exact step of length ``h`` of the OU process ``dX = -X dt + sqrt(2) dW`` (docs/method.md, Sec. 7.1).

    ``X_h = e^{-h} x0 + sqrt(1 - e^{-2h}) eps``, so ``X_h | x0 ~ N(e^{-h} x0, (1 - e^{-2h}) I)``.

    Args:
        x0: ``(B, C, *S)`` starting points.
        h: step length ``> 0``, a float or per-sample ``(B,)``.
        eps: ``(B, C, *S)`` standard normal noise.

    Returns:
        ``(B, C, *S)``.
    """
    h = bcast(torch.as_tensor(h, dtype=x0.dtype, device=x0.device), x0.dim())
    return torch.exp(-h) * x0 + torch.sqrt(-torch.expm1(-2 * h)) * eps


def step_sizes(c: float, rho: float, num_blocks: int) -> tuple[float, ...]:
    """Exponential OU step schedule ``h_n = c rho^{n-1}``, ``n = 1..N-1`` (docs/method.md, Sec. 7.1;
    2D: c = 0.025, rho = 1.25, N = 9).

    Block ``N`` is the free block (to ``N(0, I)``) and has no step size.

    Args:
        c: first step length, ``> 0``.
        rho: growth ratio, ``> 0``.
        num_blocks: total number of blocks ``N >= 1`` including the free block.

    Returns:
        ``N - 1`` step lengths (empty for ``N = 1``: plain flow matching).
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be an integer >= 1 (the last block is the free one), got {num_blocks!r}")
    for name, val in (("c", c), ("rho", rho)):
        if isinstance(val, bool) or not isinstance(val, numbers.Real) or not (math.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {val!r}")
    return tuple(float(c * rho ** (n - 1)) for n in range(1, num_blocks))


def local_time_to_timestep(t: Tensor) -> Tensor:
    """Network timestep ``1000 t`` of local time ``t in [0, 1]`` (the units of the project's networks).

    Local ``t = 1`` (a block's noisy side) maps to ``1000``, as ``sigma = 1`` does in
    :func:`gmflow.schedule.sigma_to_timestep`.
    """
    return t * NUM_TIMESTEPS


# ---------------------------------------------------------------------------------------------------------------------
# Interpolants and training pairs
# ---------------------------------------------------------------------------------------------------------------------


def _linear(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)


def _trig(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    a = 0.5 * math.pi * t
    return torch.cos(a), torch.sin(a), -0.5 * math.pi * torch.sin(a), 0.5 * math.pi * torch.cos(a)


INTERPOLANTS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]] = {"linear": _linear, "trig": _trig}
"""``kind -> t -> (a_t, b_t, da/dt, db/dt)`` with ``I_t = a_t x0 + b_t x1`` (docs/method.md, Sec. 7.3)."""


def interpolant(kind: str, x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Interpolant ``I_t`` between the data side ``x0`` and the noisy side ``x1`` and its velocity ``dI_t/dt``.

    - ``"linear"``: ``I_t = (1 - t) x0 + t x1``, target ``x1 - x0``.
    - ``"trig"``: ``I_t = cos(pi t/2) x0 + sin(pi t/2) x1``, target ``(pi/2)(cos(pi t/2) x1 - sin(pi t/2) x0)``.

    Args:
        kind: a key of :data:`INTERPOLANTS`.
        x0, x1: ``(B, C, *S)``.
        t: ``(B,)`` local times in ``[0, 1]``.

    Returns:
        ``I_t`` and the target velocity, both ``(B, C, *S)``.
    """
    if kind not in INTERPOLANTS:
        raise ValueError(f"unknown interpolant {kind!r}; choose one of {sorted(INTERPOLANTS)}")
    a, b, da, db = (bcast(c, x0.dim()).to(x0) for c in INTERPOLANTS[kind](torch.as_tensor(t)))
    return a * x0 + b * x1, da * x0 + db * x1


def lfm_pair(x0: Tensor, t: Tensor, kind: str, h: float | None, eps: Tensor) -> tuple[Tensor, Tensor]:
    """Training input and target of one block (docs/method.md, Sec. 7.2-7.3).

    The right endpoint is ``x1 = ou_step(x0, h, eps)`` for an OU block, or ``x1 = eps`` (independent of ``x0``) for
    the free block (``h = None``); then ``(I_t, dI_t/dt) = interpolant(kind, x0, x1, t)``.

    Args:
        x0: ``(B, C, *S)`` pool samples (the block's data side).
        t: ``(B,)`` local times.
        kind: interpolant key.
        h: the block's OU step length ``> 0``, or ``None`` for the free block.
        eps: ``(B, C, *S)`` standard normal noise.

    Returns:
        ``(I_t, target)``, both ``(B, C, *S)``.
    """
    if h is not None and not h > 0:
        raise ValueError(f"h must be > 0 for an OU block or None for the free block, got {h!r}")
    x1 = eps if h is None else ou_step(x0, h, eps)
    return interpolant(kind, x0, x1, t)


def lfm_loss(v_pred: Tensor, target: Tensor) -> Tensor:
    """Per-sample mean squared error ``mean_{C,*S} (v_pred - target)^2`` (docs/method.md, Sec. 7.3).

    A mean over channels too, as in the LFM code; :func:`baselines.fm.fm_loss` sums channels (a factor ``C``).

    Returns:
        ``(B,)``.
    """
    return (v_pred.float() - target.float()).square().mean(sample_dims(v_pred))


# ---------------------------------------------------------------------------------------------------------------------
# Block solvers
# ---------------------------------------------------------------------------------------------------------------------


class NFECounter:
    """Wraps ``fn(x, t)`` (a block velocity or a student) and counts its calls: ``nfe``.

    One call on a batch is one network function evaluation, whichever solver makes it (including dopri5's
    step-size selection and rejected steps).
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]):
        self.fn = fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        return self.fn(x, t)


def local_time_grid(t_from: float, t_to: float, num_steps: int, dtype=torch.float64, device=None) -> Tensor:
    """Uniform grid of ``num_steps + 1`` local times from ``t_from`` to ``t_to`` (either direction)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return torch.linspace(t_from, t_to, num_steps + 1, dtype=dtype, device=device)


def _t(t: Tensor, x: Tensor) -> Tensor:
    return t.to(x).expand(x.shape[0])


def _euler(v: VelocityFn, x: Tensor, ts: Tensor) -> Tensor:
    for i in range(len(ts) - 1):
        x = x + (ts[i + 1] - ts[i]) * v(x, _t(ts[i], x))
    return x


def _heun(v: VelocityFn, x: Tensor, ts: Tensor) -> Tensor:
    for i in range(len(ts) - 1):
        dt = ts[i + 1] - ts[i]
        d = v(x, _t(ts[i], x))
        d2 = v(x + dt * d, _t(ts[i + 1], x))
        x = x + 0.5 * dt * (d + d2)
    return x


def steps_for_block_nfe(solver: str, nfe: int) -> int:
    """Fixed-step solver steps that use exactly ``nfe`` evaluations: Euler ``nfe``; Heun ``nfe / 2``.

    Heun here takes full second-order steps, including the last one (a block's velocity is finite at ``t = 0``, so
    the Euler last step of :func:`baselines.samplers.heun` is not needed): ``K`` steps cost ``2K`` evaluations.
    """
    if solver == "euler":
        if nfe < 1:
            raise ValueError(f"euler needs nfe >= 1 per block, got {nfe}")
        return nfe
    if solver == "heun":
        if nfe < 2 or nfe % 2:
            raise ValueError(f"heun uses 2 evaluations per step: nfe per block must be even and >= 2, got {nfe}")
        return nfe // 2
    raise ValueError(f"{solver!r} is not a fixed-step solver; use 'euler' or 'heun'")


@torch.no_grad()
def push(v: VelocityFn, x: Tensor, t_from: float, t_to: float, solver: str = "euler", nfe: int | None = None, *,
         rtol: float = 1e-5, atol: float = 1e-5) -> tuple[Tensor, int]:
    """Integrate one block's ODE ``dx/dt = v(x, t)`` from local time ``t_from`` to ``t_to``.

    Args:
        v: the block's velocity callable.
        x: ``(B, C, *S)`` state at ``t_from``.
        t_from, t_to: local times in ``[0, 1]`` (``1 -> 0`` samples, ``0 -> 1`` pushes a pool).
        solver: ``"euler"``, ``"heun"`` (fixed uniform steps, :func:`steps_for_block_nfe`) or ``"dopri5"``
            (adaptive, ``torchdiffeq.odeint`` with ``rtol``, ``atol``; ``nfe`` must be ``None``).
        nfe: exact number of evaluations for the fixed-step solvers.
        rtol, atol: dopri5 tolerances (the LFM repos use 1e-5 or 1e-3).

    Returns:
        The state at ``t_to`` ``(B, C, *S)`` and the counted number of evaluations of ``v``.
    """
    counted = NFECounter(v)
    if solver in ("euler", "heun"):
        if nfe is None:
            raise ValueError(f"{solver} needs nfe (evaluations per block), got None")
        ts = local_time_grid(t_from, t_to, steps_for_block_nfe(solver, nfe), device=x.device)
        out = (_euler if solver == "euler" else _heun)(counted, x, ts)
    elif solver == "dopri5":
        if nfe is not None:
            raise ValueError(f"dopri5 is adaptive: pass nfe=None and set rtol/atol (got nfe={nfe})")
        ts = torch.tensor([t_from, t_to], dtype=x.dtype, device=x.device)
        out = torchdiffeq.odeint(lambda t, y: counted(y, _t(t, y)), x, ts, rtol=rtol, atol=atol, method="dopri5")[-1]
    else:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    return out, counted.nfe


@dataclass(frozen=True)
class ChainOutput:
    """Samples of a chain of blocks and the evaluations it counted.

    Attributes:
        x: ``(B, C, *S)`` samples.
        nfe: total evaluations over all blocks.
        nfe_per_block: evaluations of blocks ``1..N`` (index 0 is block 1).
    """

    x: Tensor
    nfe: int
    nfe_per_block: tuple[int, ...]


def _per_block(value, n: int, name: str) -> list:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} blocks; give one per block or a single value")
        return list(value)
    return [value] * n


def sample_chain(blocks: Sequence[VelocityFn], z: Tensor, solver: str = "heun",
                 nfe_per_block: int | Sequence[int | None] | None = None, *, rtol: float = 1e-5,
                 atol: float = 1e-5) -> ChainOutput:
    """Generate: run blocks ``N, ..., 1`` (``blocks = [v_1, ..., v_N]``), each from ``t = 1`` to ``t = 0``
    (docs/method.md, Sec. 7.4).

    Args:
        blocks: the block velocities in training order.
        z: ``(B, C, *S)`` standard normal draws.
        solver, rtol, atol: see :func:`push`.
        nfe_per_block: one value for every block or one per block (block 1 first); ``None`` for dopri5.

    Returns:
        A :class:`ChainOutput` with the samples and the counted evaluations.
    """
    if len(blocks) < 1:
        raise ValueError("sample_chain needs at least one block")
    nfes = _per_block(nfe_per_block, len(blocks), "nfe_per_block")
    x, counts = z, [0] * len(blocks)
    for n in reversed(range(len(blocks))):
        x, counts[n] = push(blocks[n], x, 1.0, 0.0, solver, nfes[n], rtol=rtol, atol=atol)
    return ChainOutput(x, sum(counts), tuple(counts))


def push_pool(block: VelocityFn, x: Tensor, solver: str = "dopri5", nfe: int | None = None, *, rtol: float = 1e-5,
              atol: float = 1e-5) -> tuple[Tensor, int]:
    """Next pool: push block ``n``'s pool from its data side to its noisy side (``t: 0 -> 1``,
    docs/method.md, Sec. 7.2).

    Returns:
        ``(B, C, *S)`` pushed samples and the counted evaluations. (dopri5 adapts its steps to the whole batch, so the
        result depends slightly on how a pool is split into batches.)
    """
    return push(block, x, 0.0, 1.0, solver, nfe, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------------------------
# Distillation (paper Sec. 5.2; no public code: each block distilled independently, students chained)
# ---------------------------------------------------------------------------------------------------------------------


def student_time_grid(num_steps: int = 1, dtype=torch.float64, device=None) -> Tensor:
    """The fixed local-time grid of a ``k``-step student: ``1 = t_0 > t_1 > ... > t_k = 0`` (uniform)."""
    return local_time_grid(1.0, 0.0, num_steps, dtype=dtype, device=device)


def distillation_pairs(block: VelocityFn, x_in: Tensor, num_student_steps: int = 1, solver: str = "dopri5",
                       nfe: int | None = None, *, rtol: float = 1e-5, atol: float = 1e-5) -> tuple[Tensor, int]:
    """Teacher trajectories of one block for a ``k``-step student.

    The teacher solves the block's ODE from ``t = 1`` (``x_in``, the block's noisy side: the next pool or samples of the
    chain above this block) to ``t = 0`` through the grid of :func:`student_time_grid`. Student step ``j`` learns
    ``states[j] -> states[j + 1]`` at time ``t_j``; ``k = 1`` is endpoint regression.

    Args:
        block: the teacher block's velocity.
        x_in: ``(B, C, *S)`` noisy-side inputs.
        num_student_steps: ``k >= 1``.
        solver, nfe, rtol, atol: teacher solver (see :func:`push`); ``nfe`` is per grid interval.

    Returns:
        ``states (k + 1, B, C, *S)`` with ``states[0] = x_in`` and ``states[k]`` the data-side endpoint, and the
        teacher's counted evaluations.
    """
    ts = student_time_grid(num_student_steps)
    states, total, x = [x_in], 0, x_in
    for j in range(num_student_steps):
        x, n = push(block, x, float(ts[j]), float(ts[j + 1]), solver, nfe, rtol=rtol, atol=atol)
        states.append(x)
        total += n
    return torch.stack(states), total


def distill_loss(student_out: Tensor, teacher_out: Tensor) -> Tensor:
    """Per-sample mean squared error between a student step and the teacher state, ``(B,)`` (as :func:`lfm_loss`)."""
    return lfm_loss(student_out, teacher_out)


@torch.no_grad()
def sample_chain_distilled(students: Sequence[StudentFn], z: Tensor, num_student_steps: int = 1) -> ChainOutput:
    """Generate with distilled blocks: students ``N, ..., 1`` (``students = [s_1, ..., s_N]``), ``k`` calls each.

    Student call ``j`` gets ``(x, t_j)`` on :func:`student_time_grid` and returns the state at ``t_{j+1}``. Total NFE is
    ``N k``, counted.

    Returns:
        A :class:`ChainOutput`.
    """
    if len(students) < 1:
        raise ValueError("sample_chain_distilled needs at least one student")
    ts = student_time_grid(num_student_steps, device=z.device)
    x, counts = z, [0] * len(students)
    for n in reversed(range(len(students))):
        counted = NFECounter(students[n])
        for j in range(num_student_steps):
            x = counted(x, _t(ts[j], x))
        counts[n] = counted.nfe
    return ChainOutput(x, sum(counts), tuple(counts))
