"""Multistep samplers driven by diffusers schedulers on the flow schedule (docs/method.md, Sec. 6.4).

Same signature as :mod:`baselines.samplers`: ``sample(model_fn, x_init, sigmas, *, generator=None) -> x0`` with
``model_fn(x_t (B, ...), sigma (B,)) -> v``, ``v`` an estimate of ``E[eps - x0 | x_t]`` on the path
``x_t = (1 - sigma) x0 + sigma eps``. ``sigmas`` is the caller's grid, decreasing from 1 to exactly 0 with NFE + 1
entries: the network is evaluated once per step at ``sigmas[0], ..., sigmas[NFE - 1]`` and nowhere else.

Every call builds a fresh scheduler (they are stateful), so calls never share state.

How each diffusers 0.42.1 scheduler is made to run on the caller's grid:

- DPM-Solver++ 2M (ODE and SDE): ``DPMSolverMultistepScheduler(use_flow_sigmas=True,
  prediction_type="flow_prediction", solver_order=2, solver_type="midpoint", lower_order_final=True,
  final_sigmas_type="zero")``. Its ``set_timesteps`` takes no ``sigmas`` argument, its ``timesteps=`` path fails
  with ``use_flow_sigmas`` (it still builds the flow grid from ``num_inference_steps``, which is then ``None``),
  and its own flow grid is ``0.999 (1 - i/N)`` (it starts at ``1 - 1/num_train_timesteps``, not 1). So
  :func:`dpm_scheduler` calls ``set_timesteps(N)`` to size the solver state and then installs the caller's
  grid, final 0 included, as the scheduler's ``sigmas`` (float32, as diffusers stores them). ``sigma = 1`` is kept
  exactly: there ``alpha = 0`` and ``lambda = log(alpha / sigma) = -inf``; the scheduler's formulas take the right
  limits (``exp(-h) = 0``, the second-order correction ``D1 = (m0 - m1) / r0 -> 0``), so the first step is the DDIM
  step ``x' = sigma' x + alpha' x0^`` and no value is non-finite (tested).
- UniPC: ``UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=2,
  solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")`` (diffusers' UniPC
  defaults plus flow sigmas). ``set_timesteps(sigmas=...)`` takes the grid without its final 0 (it appends
  0) as a NumPy array (a list fails), and lowers a first sigma within 1e-6 of 1 to ``1 - 1e-6``: UniPC's
  coefficient solve would otherwise meet ``lambda = -inf``. So UniPC's *scheduler* sees ``1 - 1e-6`` at the
  first node (its ``x0^ = x - (1 - 1e-6) v`` differs by ``1e-6 |v|``), while the network sees exactly 1. The
  integer ``timesteps`` it derives (``int(1000 sigma)``) are never used: the step index starts at 0 explicitly.
- DDIM: ``DDIMScheduler`` is variance-preserving only, so the flow path is converted at the edge
  (:func:`flow_to_vp`): ``x_vp = x_t / sqrt(alpha^2 + sigma^2)`` and ``alpha_bar = alpha^2 / (alpha^2 + sigma^2)``
  (``= 1 / (1 + sigma_VE^2)`` with the paper's ``sigma_VE = sigma / alpha``), and the velocity is handed over as
  ``prediction_type="sample"`` (``x0^ = x_t - sigma v``, which the rescaling leaves unchanged and which is finite at
  ``sigma = 1`` where ``alpha_bar = 0``). Its step size is the fixed stride ``num_train_timesteps //
  num_inference_steps``, which with 1000 training steps does not match the "trailing" timesteps unless N divides 1000
  (e.g. N = 32: stride 31, spacing 31.25; diffusers issues #9261, #12633), and integer timesteps would quantize
  sigma to multiples of 1e-3. :func:`ddim_scheduler` therefore builds the table with one training timestep per grid
  node (``num_train_timesteps = N``, :func:`ddim_betas`): "trailing" spacing then yields timesteps ``N-1, ..., 0``,
  the stride is exactly 1 and every DDIM step runs between consecutive grid nodes, with no quantization. On the flow
  path DDIM is Euler (tested against :func:`baselines.samplers.euler` and :func:`baselines.samplers.ddim`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from baselines.samplers import VelocityFn, velocity_to_x0
from gmflow.schedule import sigma_to_timestep

if TYPE_CHECKING:  # diffusers is imported lazily: it costs ~2 s at start-up of every job
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

GeneratorArg = torch.Generator | list[torch.Generator] | None


def check_sigma_grid(sigmas: Tensor) -> None:
    """Raise ``ValueError`` unless ``sigmas`` is 1-D, finite, strictly decreasing, within [0, 1] and ends at 0."""
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with NFE + 1 >= 2 entries, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all() or sigmas[0] > 1 or sigmas[-1] != 0:
        raise ValueError(
            f"sigmas must run from at most 1 down to exactly 0, got first {sigmas[0].item()} and last "
            f"{sigmas[-1].item()}; build the grid with gmflow.schedule.sigma_grid(nfe)"
        )
    if not (sigmas[1:] < sigmas[:-1]).all():
        raise ValueError(f"sigmas must be strictly decreasing, got {sigmas.tolist()}")


def flow_to_vp(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Convert flow noise levels to the variance-preserving (DDPM/DDIM) parameterization.

    With ``alpha = 1 - sigma`` and ``scale = sqrt(alpha^2 + sigma^2)``, the flow state ``x_t = alpha x0 + sigma eps``
    rescales to ``x_vp = x_t / scale = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps`` with
    ``alpha_bar = alpha^2 / scale^2 = 1 / (1 + sigma_VE^2)``, ``sigma_VE = sigma / alpha`` (the rescaling with which
    the paper runs VP/VE schedulers on the flow path). Both outputs are finite on [0, 1]: ``sigma = 1``
    gives ``alpha_bar = 0``, ``scale = 1`` (where ``sigma_VE`` is infinite); ``sigma = 0`` gives ``alpha_bar = 1``,
    ``scale = 1``.

    Args:
        sigma: flow noise levels, any shape.

    Returns:
        ``(alpha_bar, scale)``, each of ``sigma``'s shape and dtype.
    """
    alpha = 1 - sigma
    scale_sq = alpha.square() + sigma.square()
    return alpha.square() / scale_sq, scale_sq.sqrt()


def ddim_betas(sigmas: Tensor) -> Tensor:
    """``trained_betas`` of a DDIM table with one training timestep per grid node.

    Training timestep ``k = 0..N-1`` is the node ``sigma_{N-1-k}`` (so ``k = N-1`` is ``sigma_0``), with
    ``alpha_bar_k`` from :func:`flow_to_vp` and ``beta_k = 1 - alpha_bar_k / alpha_bar_{k-1}`` (``alpha_bar_{-1} = 1``).
    ``sigma_0 = 1`` gives ``alpha_bar = 0`` and ``beta = 1``; the final node ``sigma_N = 0`` is DDIM's
    ``final_alpha_cumprod = 1``.

    Args:
        sigmas: ``(N + 1,)`` decreasing grid ending at 0.

    Returns:
        ``(N,)`` float64 betas.
    """
    alpha_bar = flow_to_vp(sigmas[:-1].double().flip(0))[0]
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / alpha_bar_prev


def dpm_scheduler(sigmas: Tensor, algorithm_type: str = "dpmsolver++") -> DPMSolverMultistepScheduler:
    """A fresh DPM-Solver++ 2M scheduler on the flow path whose sigmas are exactly ``sigmas`` (float32).

    Args:
        sigmas: ``(N + 1,)`` decreasing grid from (at most) 1 to 0.
        algorithm_type: ``"dpmsolver++"`` (ODE) or ``"sde-dpmsolver++"`` (SDE).
    """
    from diffusers import DPMSolverMultistepScheduler

    check_sigma_grid(sigmas)
    sched = DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        algorithm_type=algorithm_type,
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sched.set_timesteps(num_inference_steps=len(sigmas) - 1)  # sizes the solver state; its grid is replaced below
    sched.sigmas = sigmas.detach().to("cpu", torch.float32).clone()
    sched.timesteps = sigma_to_timestep(sched.sigmas[:-1])
    sched.set_begin_index(0)
    return sched


def unipc_scheduler(sigmas: Tensor) -> UniPCMultistepScheduler:
    """A fresh UniPC-bh2 (order 2) scheduler on the flow path, given ``sigmas`` through ``set_timesteps``.

    Its ``sigmas`` equal the grid in float32 except a first node of 1, which diffusers lowers to ``1 - 1e-6``.
    """
    from diffusers import UniPCMultistepScheduler

    check_sigma_grid(sigmas)
    sched = UniPCMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    sched.set_timesteps(sigmas=sigmas[:-1].detach().to("cpu", torch.float64).numpy().copy())
    sched.set_begin_index(0)
    return sched


def ddim_scheduler(sigmas: Tensor) -> DDIMScheduler:
    """A fresh deterministic DDIM scheduler (VP form, "trailing" spacing) whose steps are the grid's intervals.

    The table has one training timestep per grid node (:func:`ddim_betas`), so ``set_timesteps(N)`` gives
    timesteps ``N-1, ..., 0`` and each ``step`` moves from node ``i`` to node ``i + 1``.
    """
    from diffusers import DDIMScheduler

    check_sigma_grid(sigmas)
    n = len(sigmas) - 1
    sched = DDIMScheduler(
        num_train_timesteps=n,
        trained_betas=ddim_betas(sigmas).numpy(),
        timestep_spacing="trailing",
        prediction_type="sample",
        clip_sample=False,
        thresholding=False,
        set_alpha_to_one=True,
        steps_offset=0,
    )
    sched.set_timesteps(n)
    if sched.timesteps.tolist() != list(range(n - 1, -1, -1)):
        raise RuntimeError(f"DDIMScheduler gave timesteps {sched.timesteps.tolist()}, expected {n - 1}..0")
    return sched


def _velocity(model_fn: VelocityFn, x: Tensor, sigma: Tensor) -> Tensor:
    return model_fn(x, sigma.expand(x.shape[0])).float()


def _run_flow_scheduler(sched, model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, **step_kwargs) -> Tensor:
    """One network call per step at ``sigmas[i]``, its velocity passed as ``flow_prediction`` to ``sched.step``."""
    x, sig = x_init.float(), sigmas.to(x_init.device, torch.float32)
    for i in range(len(sig) - 1):
        v = _velocity(model_fn, x, sig[i])  # (B, ...)
        x = sched.step(v, sched.timesteps[i], x, **step_kwargs).prev_sample
    return x.float()


@torch.no_grad()
def dpmpp_2m(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator: GeneratorArg = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) as diffusers' ``DPMSolverMultistepScheduler`` runs it; 1 NFE per step.

    Args:
        model_fn: ``(x_t (B, ...), sigma (B,)) -> v (B, ...)``.
        x_init: ``(B, ...)`` noise at ``sigmas[0]``.
        sigmas: ``(N + 1,)`` decreasing grid ending at 0.
        generator: unused (deterministic).

    Returns:
        ``(B, ...)`` float32 samples at sigma = 0.
    """
    return _run_flow_scheduler(dpm_scheduler(sigmas, "dpmsolver++"), model_fn, x_init, sigmas)


@torch.no_grad()
def dpmpp_2m_sde(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator: GeneratorArg = None) -> Tensor:
    """DPM-Solver++(2M) SDE (``algorithm_type="sde-dpmsolver++"``); 1 NFE per step.

    ``generator`` (a ``torch.Generator``, or a list of B of them for one stream per sample) draws every step's noise
    through diffusers' ``randn_tensor`` (one draw per step; the last step, to sigma = 0, gives it zero weight). From
    ``sigma = 1`` (``alpha = 0``) the first step's weight on ``x`` is ``(sigma' / sigma) e^{-h} = 0``: it is
    ``x' = alpha' x0^ + sigma' z``, so the initial noise enters only through the network's ``x0^``.
    """
    sched = dpm_scheduler(sigmas, "sde-dpmsolver++")
    return _run_flow_scheduler(sched, model_fn, x_init, sigmas, generator=generator)


@torch.no_grad()
def unipc(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator: GeneratorArg = None) -> Tensor:
    """UniPC (Zhao et al. 2023), B(h) = bh2, order 2, predictor-corrector on data predictions; 1 NFE per step.

    The corrector reuses the next step's evaluation, so no extra NFE; the last step is first order and uncorrected.
    ``generator`` is unused (deterministic).
    """
    return _run_flow_scheduler(unipc_scheduler(sigmas), model_fn, x_init, sigmas)


@torch.no_grad()
def ddim_diffusers(model_fn: VelocityFn, x_init: Tensor, sigmas: Tensor, *, generator: GeneratorArg = None) -> Tensor:
    """Deterministic DDIM (eta = 0) as diffusers' ``DDIMScheduler`` runs it in VP form; 1 NFE per step.

    The scheduler's state is ``x_vp = x_t / scale``; the network gets ``x_t = scale x_vp`` and its velocity goes back
    as ``x0^ = x_t - sigma v`` (:func:`flow_to_vp`). ``scale = 1`` at both ends of the grid. ``generator`` is unused.
    """
    sched = ddim_scheduler(sigmas)
    sig = sigmas.to(x_init.device, torch.float32)
    scale = flow_to_vp(sig)[1]  # (N + 1,)
    x_vp = x_init.float() / scale[0]
    for i, t in enumerate(sched.timesteps):
        x = scale[i] * x_vp  # flow state at sigmas[i]
        x0 = velocity_to_x0(x, _velocity(model_fn, x, sig[i]), sig[i])
        x_vp = sched.step(x0, t, x_vp, eta=0.0).prev_sample
    return (scale[-1] * x_vp).float()


DIFFUSERS_SOLVERS = {
    "dpm++-2m": dpmpp_2m,
    "dpm++-2m-sde": dpmpp_2m_sde,
    "unipc": unipc,
    "ddim-diffusers": ddim_diffusers,
}
