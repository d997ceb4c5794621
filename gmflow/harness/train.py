"""Training loop shared by GMFlow and flow matching: AdamW, warm-up, EMA, progress bar, resumable checkpoints."""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from gmflow.harness import io, ranges
from gmflow.harness.devices import Autocast, Distributed, barrier, check_precision
from gmflow.harness.losses import LossFn
from gmflow.harness.seeding import stream_generator

STATE_FILE = "state.safetensors"  # resumable training state (safetensors + JSON header; never a pickle)
SINGLE_PROCESS = Distributed()  # a run without torchrun
TRAIN_STREAM = 0x7472  # key of the training data streams: (seed, TRAIN_STREAM, step, shard)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the config schema documents each)."""

    method: str = "gmflow"
    num_components: int = 64
    trans_ratio: float = 0.9
    weight_scale: float = 1.0
    steps: int = 6000
    batch_size: int = 1024
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    ema_gamma: float = 7.0
    ema: str = "power"
    ema_kimg: float = 30000.0
    ema_rampup: float = 0.05
    time_sampler: str = "uniform"
    time_shift: float = 1.0
    checkpoint_every: int = 1000
    seed: int = 0
    label_dropout: float = 0.0
    null_label: int = -1
    spectral_weight: float = 1.0
    grad_clip: float = 0.0
    snapshot_steps: tuple[int, ...] = ()
    micro_batch_size: int = 0
    precision: str = "fp32"

    def __post_init__(self):
        self.snapshot_steps = tuple(sorted({int(k) for k in self.snapshot_steps}))
        if any(not 1 <= k < self.steps for k in self.snapshot_steps):
            raise ValueError(f"snapshot_steps must lie in [1, steps) = [1, {self.steps}), got {self.snapshot_steps}")
        if self.method not in ("gmflow", "fm"):
            raise ValueError(f"method must be 'gmflow' or 'fm', got {self.method!r}")
        self.loop_settings()  # the loop's own checks: steps, batch size, lr, decay, EMA, clipping
        if self.micro_batch_size < 0 or (self.micro_batch_size and self.batch_size % self.micro_batch_size):
            raise ValueError(f"micro_batch_size must divide batch_size = {self.batch_size} (0 = the whole batch), "
                             f"got {self.micro_batch_size}")
        check_precision(self.precision)
        for name in ("trans_ratio", "label_dropout", "weight_scale", "spectral_weight", "time_shift"):
            ranges.check(name, getattr(self, name))

    @property
    def num_shards(self) -> int:
        """Micro-batches per global batch: the unit of data parallelism and gradient accumulation."""
        return self.batch_size // (self.micro_batch_size or self.batch_size)

    def loop_settings(self) -> LoopSettings:
        return LoopSettings(self.steps, self.lr, self.weight_decay, self.warmup_steps, self.ema_gamma, self.grad_clip,
                            self.checkpoint_every, self.ema, self.ema_kimg, self.ema_rampup, self.batch_size)


EMA_KINDS = ("power", "rampup")


def karras_ema_beta(step: int, gamma: float) -> float:
    """Power-function EMA ``beta_n = (1 - 1/n)^(gamma + 1)`` (Karras et al. 2024; the paper's 2D recipe, gamma 7)."""
    return (1 - 1 / step) ** (gamma + 1) if step > 1 else 0.0


def rampup_ema_beta(step: int, batch_size: int, ema_kimg: float = 30000.0, rampup: float = 0.05) -> float:
    """Ramp-up EMA of StyleGAN2-ADA, the paper's ImageNet recipe (ema_kimg 30000, ramp-up 0.05, batch 4096).

    After ``step`` steps of ``batch_size`` images the half-life is ``min(1000 ema_kimg, rampup step batch_size)``
    images and ``beta = 0.5^(batch_size / half-life)``: a short average early in training, then a fixed half-life.
    """
    ema_nimg = min(ema_kimg * 1000, rampup * step * batch_size)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


def decay_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on weights, none on biases and normalisation parameters.

    The paper's recipe sets the decay of every parameter named ``bias`` to zero; its DiT has no affine normalisation
    layers, and the parameters of any that a network here has (LayerNorm, GroupNorm, BatchNorm) are exempt as well.
    """
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)
    no_decay = {id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
    decay, exempt = [], []
    for name, p in model.named_parameters():
        (exempt if name.endswith("bias") or id(p) in no_decay else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def drop_labels(y: Tensor, p: float, null_label: int, generator: torch.Generator) -> Tensor:
    """Replace each label by ``null_label`` with probability ``p``
    (docs/method.md, Sec. 3.6: 10% dropout, in the data path)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


class _Bundle(nn.Module):
    """The trained modules: the network and, for spectral sampling, the SpectrumMLP (one optimiser, one EMA)."""

    def __init__(self, net: nn.Module, spectrum: nn.Module | None):
        super().__init__()
        self.net, self.spectrum = net, spectrum


@dataclass(frozen=True)
class LoopSettings:
    """What the optimisation loop needs besides the loss: steps, AdamW, warm-up, EMA, clipping, checkpoints."""

    steps: int
    lr: float
    weight_decay: float
    warmup_steps: int
    ema_gamma: float
    grad_clip: float
    checkpoint_every: int
    ema: str = "power"
    ema_kimg: float = 30000.0
    ema_rampup: float = 0.05
    batch_size: int = 1
    schedule: str = "constant"

    def __post_init__(self):
        for name in ("lr", "weight_decay", "ema_gamma", "grad_clip", "ema_kimg", "ema_rampup"):
            ranges.check(name, getattr(self, name))  # a NaN is refused too
        if self.steps < 1 or self.warmup_steps < 0 or self.checkpoint_every < 1 or self.batch_size < 1:
            raise ValueError(f"need steps, checkpoint_every, batch_size >= 1 and warmup_steps >= 0; got {self.steps}, "
                             f"{self.checkpoint_every}, {self.batch_size}, {self.warmup_steps}")
        if self.ema not in EMA_KINDS or self.schedule not in ("constant", "cosine"):
            raise ValueError(f"ema must be one of {EMA_KINDS} and schedule constant or cosine, got {self.ema!r}, "
                             f"{self.schedule!r}")

    def lr_factor(self, i: int) -> float:
        """Learning-rate factor after ``i`` steps: linear warm-up from 0.001x, then constant or a cosine decay to 0."""
        warm = max(self.warmup_steps, 1)
        if i < warm or self.schedule == "constant":
            return min(1.0, 0.001 + (1 - 0.001) * i / warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warm) / max(self.steps - warm, 1))))

    def ema_beta(self, step: int) -> float:
        """The EMA decay after ``step`` steps: power function of ``ema_gamma`` or ramp-up over images seen."""
        if self.ema == "rampup":
            return rampup_ema_beta(step, self.batch_size, self.ema_kimg, self.ema_rampup)
        return karras_ema_beta(step, self.ema_gamma)


def check_finite(module: nn.Module, what: str, step: int) -> None:
    """Raise ``FloatingPointError`` naming the first parameter of ``module`` with a non-finite value (checked before
    every checkpoint, so the last checkpoint on disk stays a good one)."""
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            raise FloatingPointError(f"non-finite {what} at step {step}: parameter {name!r} holds NaN or Inf; the "
                                     "last checkpoint was kept; lower the learning rate or check the settings")


@dataclass
class LoopResult:
    """The EMA copy of the trained module, the first step of this call, the loss of the last step and the training
    seconds of all calls together (resumed runs included)."""

    ema: nn.Module
    start: int
    loss: float
    elapsed: float
    losses: list[float]


def optimise(
    model: nn.Module,
    step_loss: Callable[[int, int], Tensor],
    settings: LoopSettings,
    gen: torch.Generator | None,
    out_dir: Path,
    *,
    desc: str,
    progress: bool = True,
    identity: dict | None = None,
    on_other_run: str = "raise",
    at_step: Callable[[int, nn.Module, float], None] | None = None,
    what: str = "",
    micro_steps: int = 1,
    group: Distributed = SINGLE_PROCESS,
    sync_module: nn.Module | None = None,
) -> LoopResult:
    """The optimisation loop shared by every trainer: AdamW (no decay on biases and norms) with a linear warm-up from
    0.001x (then constant or cosine, ``settings.schedule``), gradient-norm clipping, an EMA (power-function or
    ramp-up), a progress bar, ``train_log.csv`` and a resumable ``out_dir/state.safetensors``.

    ``step_loss(step, j)`` draws micro-batch ``j`` of this process for optimisation step ``step`` (0-based) and
    returns its mean loss; the gradients of the ``micro_steps`` micro-batches are accumulated (each scaled by
    ``1 / micro_steps``). Under data parallelism (``group``) ``sync_module`` is the ``DistributedDataParallel``
    wrapper that ``step_loss`` calls: it averages the gradients over processes at the last micro-batch (``no_sync``
    before), every process then takes the same optimiser step, and process 0 alone writes files. ``at_step(step,
    ema, seconds)`` runs after each step's EMA update (snapshots).

    Resuming: ``state.safetensors`` (atomic, no pickle, every ``checkpoint_every`` steps and at the end) holds the
    weights, EMA, optimiser, schedule, ``gen``'s state (when the batches come from ``gen``) and ``identity`` (the
    settings that must not change). A killed run started again, or a finished one called again with more steps,
    continues to the weights of one uninterrupted run, with any number of processes when the batches come from
    per-step streams. A state of another identity raises (``on_other_run="raise"``) or is discarded with a notice
    (``"restart"``).
    """
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(decay_param_groups(model, settings.weight_decay), lr=settings.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: settings.lr_factor(i))
    start, elapsed, loss_value = 0, 0.0, float("nan")
    state_path, log_path = out_dir / STATE_FILE, out_dir / "train_log.csv"
    if (out_dir / "state.pt").exists() and group.is_main:
        print(f"{out_dir / 'state.pt'} is a pickle from an older version and is never loaded (a pickle can run code); "
              f"resuming needs {STATE_FILE}", flush=True)
    state = io.load_state(state_path) if state_path.exists() else None
    barrier(group)  # every process has read the state before process 0 may replace or delete it
    if state is not None and identity is not None and state.get("identity") != identity:
        if on_other_run != "restart":
            raise ValueError(f"{state_path} belongs to another run ({state.get('identity')}), not {identity}; "
                             "use a new out_dir or delete the old one")
        if group.is_main:
            print(f"{state_path} belongs to other settings: training from the start", flush=True)
            state_path.unlink()
            log_path.unlink(missing_ok=True)
        state = None
    if state is not None:
        if state["step"] > settings.steps:
            raise ValueError(f"{state_path} is at step {state['step']} > steps = {settings.steps}")
        model.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        if gen is not None:
            gen.set_state(state["gen"])
        start, elapsed, loss_value = state["step"], state["elapsed"], state.get("loss", float("nan"))

    def checkpoint(step: int, seconds: float) -> None:
        check_finite(model, "weights", step)
        check_finite(ema, "EMA weights", step)
        if group.is_main:
            io.save_state({"net": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                           "sched": sched.state_dict(), "gen": None if gen is None else gen.get_state(),
                           "step": step, "elapsed": seconds, "loss": loss_value, "identity": identity}, state_path)

    pbar = tqdm(range(start, settings.steps), initial=start, total=settings.steps,
                disable=not progress or not group.is_main, desc=desc, mininterval=5)
    log_rows, losses, t0 = [], [], time.perf_counter()
    for step in pbar:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for j in range(micro_steps):
            last = j == micro_steps - 1
            with sync_module.no_sync() if sync_module is not None and not last else contextlib.nullcontext():
                loss = step_loss(step, j)
                (loss / micro_steps).backward()
            total = total + loss.detach().float()
        loss_value = _mean_over(total / micro_steps, group)
        losses.append(loss_value)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss {loss_value} at step {step + 1}{what}")
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        opt.step()
        sched.step()
        beta = settings.ema_beta(step + 1)
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(p, 1 - beta)
        if (step + 1) % 50 == 0 or step == start:
            log_rows.append((step + 1, loss_value, elapsed + time.perf_counter() - t0))
            pbar.set_postfix(loss=f"{loss_value:.4f}")
        if at_step is not None:
            at_step(step + 1, ema, elapsed + time.perf_counter() - t0)
        if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
            if group.is_main:
                _append_log(log_path, log_rows)
            log_rows = []
            checkpoint(step + 1, elapsed + time.perf_counter() - t0)
    elapsed += time.perf_counter() - t0
    if group.is_main:
        _append_log(log_path, log_rows)
    if settings.steps > start:
        checkpoint(settings.steps, elapsed)
    barrier(group)
    return LoopResult(ema, start, loss_value, elapsed, losses)


def _mean_over(value: Tensor, group: Distributed) -> float:
    """The mean of a scalar over the processes of ``group`` (the loss of the whole global batch)."""
    if group.enabled:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= group.world_size
    return float(value)


class _LossOf(nn.Module):
    """The trained modules with the loss as their forward, so that ``DistributedDataParallel`` sees every parameter
    the loss uses (the network, under autocast, and a SpectrumMLP)."""

    def __init__(self, bundle: _Bundle, loss_fn: LossFn, precision: str, device: torch.device):
        super().__init__()
        self.bundle, self.loss_fn = bundle, loss_fn
        self.net = Autocast(bundle.net, device, precision)

    def forward(self, x0: Tensor, y: Tensor | None, gen: torch.Generator) -> Tensor:
        return self.loss_fn(self.net, x0, y, gen).mean()


def train(
    net: nn.Module,
    cfg: TrainConfig,
    sample_batch: Callable[[int, torch.Generator], Tensor | tuple[Tensor, Tensor]],
    out_dir: str | Path,
    loss_fn: LossFn,
    progress: bool = True,
    spectrum_net: nn.Module | None = None,
    run_spec: dict | None = None,
    device: torch.device | str = "cpu",
    group: Distributed = SINGLE_PROCESS,
) -> dict:
    """Train ``net`` with ``loss_fn`` (:mod:`gmflow.harness.losses`) and write ``out_dir/{model,ema}.safetensors``
    and ``train_log.csv``.

    ``sample_batch(n, generator)`` returns ``x0`` or ``(x0, labels)`` on the CPU; labels are dropped to
    ``cfg.null_label`` with probability ``cfg.label_dropout``. A ``spectrum_net`` (which ``loss_fn`` trains) shares the
    optimiser and the EMA and is saved as ``spectrum_ema.safetensors``.

    Batches: the global batch of ``cfg.batch_size`` consists of ``cfg.num_shards`` micro-batches of
    ``cfg.micro_batch_size``; micro-batch ``j`` of step ``s`` is drawn from the stream ``(seed, TRAIN_STREAM, s, j)``
    (:func:`gmflow.harness.seeding.stream_generator`). Under ``torchrun`` (``group``, gloo on the CPU, NCCL on GPUs)
    process ``r`` of ``W`` computes micro-batches ``r, r + W, ...`` and ``DistributedDataParallel`` averages the
    gradients, so any world size dividing ``num_shards`` trains the same model (equal up to floating-point error)
    and a run resumes with another world size. ``device`` runs the network and the loss; ``cfg.precision`` ``bf16``
    autocasts the network's forward only (the GM algebra and the losses stay in float32).

    Resumable (:func:`optimise`): a killed run started again continues from its last checkpoint; a state saved with
    other settings (all but ``steps``, ``checkpoint_every`` and ``snapshot_steps``) or of another ``run_spec``
    (dataset, network, data) is discarded, not continued.

    Snapshots: at each step ``k`` of ``cfg.snapshot_steps`` the EMA weights go to
    ``out_dir/snapshots/step{k}/ema.safetensors`` (and ``spectrum_ema.safetensors``) with the training seconds so
    far. The learning rate is constant after warm-up and the power-function EMA depends only on the step index, so a
    snapshot at step ``k`` holds the weights a run of ``k`` steps would end with (quality vs training time at no
    extra training).
    """
    if cfg.label_dropout > 0 and cfg.null_label < 0:
        raise ValueError("label_dropout needs the network's null_label (index of the unconditional class)")
    shards = cfg.num_shards
    if shards % group.world_size:
        raise ValueError(f"{group.world_size} processes cannot share {shards} micro-batches per step (batch_size "
                         f"{cfg.batch_size} / micro_batch_size {cfg.micro_batch_size or cfg.batch_size}); choose a "
                         "micro_batch_size that makes batch_size / micro_batch_size a multiple of the process count")
    micro_steps, micro_size = shards // group.world_size, cfg.batch_size // shards
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    bundle = _Bundle(net, spectrum_net).to(device)
    loss_module = _LossOf(bundle, loss_fn, cfg.precision, device)
    sync_module = None
    if group.enabled:
        from torch.nn.parallel import DistributedDataParallel

        sync_module = DistributedDataParallel(loss_module, device_ids=[device.index] if device.type == "cuda" else None)

    def step_loss(step: int, j: int) -> Tensor:
        gen = stream_generator(cfg.seed, TRAIN_STREAM, step, group.rank + j * group.world_size)
        batch = sample_batch(micro_size, gen)
        x0, y = batch if isinstance(batch, tuple) else (batch, None)
        if y is not None:
            y = drop_labels(y, cfg.label_dropout, cfg.null_label, gen).to(device)
        return (sync_module or loss_module)(x0.to(device), y, gen)

    def snapshot(step: int, ema_bundle: nn.Module, seconds: float) -> None:
        if step not in cfg.snapshot_steps or not group.is_main:
            return
        snap = out_dir / "snapshots" / f"step{step}"
        snap.mkdir(parents=True, exist_ok=True)
        meta = {"steps": step, "train_seconds": round(seconds, 2)}
        io.save_safetensors(ema_bundle.net.state_dict(), snap / "ema.safetensors", meta)
        if spectrum_net is not None:
            io.save_safetensors(ema_bundle.spectrum.state_dict(), snap / "spectrum_ema.safetensors", meta)

    settings = cfg.loop_settings()
    identity = {k: v for k, v in asdict(cfg).items() if k not in ("steps", "checkpoint_every", "snapshot_steps")}
    identity["run"] = run_spec  # dataset, network, K, data root: a state of another run is never continued
    res = optimise(bundle, step_loss, settings, None, out_dir, desc=f"train {cfg.method}", progress=progress,
                   identity=identity, on_other_run="restart", at_step=snapshot, micro_steps=micro_steps,
                   group=group, sync_module=sync_module)
    meta = {"steps": cfg.steps, "train_seconds": round(res.elapsed, 2)}
    if group.is_main:
        io.save_safetensors(net.state_dict(), out_dir / "model.safetensors", meta)
        io.save_safetensors(res.ema.net.state_dict(), out_dir / "ema.safetensors", meta)
        if spectrum_net is not None:
            io.save_safetensors(res.ema.spectrum.state_dict(), out_dir / "spectrum_ema.safetensors", meta)
    barrier(group)
    num_params = sum(p.numel() for p in net.parameters())
    return {"train": asdict(cfg), "train_seconds": round(res.elapsed, 2), "num_parameters": num_params,
            "seconds_per_step": round(res.elapsed / max(cfg.steps - res.start, 1), 5),
            "device": str(device), "processes": group.world_size}


def _append_log(path: Path, rows: list) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["step", "loss", "seconds"])
        w.writerows(rows)
