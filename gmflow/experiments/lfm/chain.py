"""A chain of LFM blocks on disk: pools, block and student folders, chained sampling with counted NFE, the exact
NLL of a 2D chain, and the training cost of a chain (the layout is in :mod:`gmflow.experiments.lfm.cli`)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from baselines.lfm import NFECounter, sample_chain, sample_chain_distilled
from baselines.lfm_likelihood import log_likelihood
from gmflow.experiments.lfm.blocks import block_student, block_velocity
from gmflow.harness import io
from gmflow.harness.runs import build_network, read_spec
from gmflow.harness.seeding import stream_generator
from gmflow.harness.tables import COLUMNS_2D

METHOD = "lfm"
RUN = "lfm"
FIXED_STEP_SOLVERS = ("euler", "heun")
SAMPLE_SOLVERS = ("euler", "heun", "dopri5", "distilled")
"""Solver keys of an LFM sample set: the block ODE solvers of :data:`baselines.lfm.SOLVERS` and the chain of one-step
students (tests/test_lfm_workflow.py checks them against the library and the config schema)."""


def load_pool(path: str | Path) -> torch.Tensor:
    """A pool ``(M, C, *S)`` float32 from an ``.npz``: key ``x`` (a pushed or image pool) or ``samples``
    (``prepare-data``)."""
    with np.load(path) as f:
        for key in ("x", "samples"):
            if key in f:
                return torch.from_numpy(np.ascontiguousarray(f[key], dtype=np.float32))
    raise ValueError(f"{path} holds neither 'x' (a pushed pool) nor 'samples' (an exact sample)")


def load_pool_labels(path: str | Path) -> torch.Tensor | None:
    """The class labels ``(M,)`` of an image pool, None for an unlabelled (2D) pool."""
    with np.load(path) as f:
        return torch.from_numpy(f["labels"].astype(np.int64)) if "labels" in f else None


def build_block_net(spec: dict) -> torch.nn.Module:
    """The velocity network of a block or student spec (the network of its dataset, velocity head)."""
    net, _ = build_network({**spec, "method": "fm", "num_components": 0, "spectral": False})
    return net


def read_block_spec(folder: str | Path) -> dict:
    return read_spec(folder, "train the block first (gmflow-bench lfm train-block)")


def load_block(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """The EMA network of a trained block folder and its run.json."""
    spec = read_block_spec(folder)
    net = build_block_net(spec)
    net.load_state_dict(io.load_safetensors(Path(folder) / "ema.safetensors"))
    return net.eval().requires_grad_(False), spec


def load_student(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """The network of a distilled student folder and its run.json."""
    spec = read_block_spec(folder)
    if spec.get("kind") != "student":
        raise ValueError(f"{folder} is not a student folder (kind {spec.get('kind')!r}); run gmflow-bench lfm distill")
    net = build_block_net(spec)
    net.load_state_dict(io.load_safetensors(Path(folder) / "student.safetensors"))
    return net.eval().requires_grad_(False), spec


def check_chain(specs: list[dict]) -> None:
    """Folders must be blocks 1..N of one chain in training order, or students whose groups of blocks cover 1..N in
    order (each student's blocks ``block..last_block``)."""
    n = specs[0]["num_blocks"]
    expected = 1
    for i, s in enumerate(specs, start=1):
        last = s.get("last_block", s["block"])
        if s["block"] != expected or s["num_blocks"] != n:
            raise ValueError(f"folder {i} of the chain covers blocks {s['block']}..{last} of {s['num_blocks']}; pass "
                             f"the folders of one chain in training order (block 1 first), covering blocks 1..{n}")
        expected = last + 1
    if expected != n + 1:
        raise ValueError(f"the folders cover blocks 1..{expected - 1} of a {n}-block chain; pass all of them")
    if len({(s["dataset"], s["interpolant"], s["network"]) for s in specs}) != 1:
        raise ValueError("the folders of a chain must share one dataset, network and interpolant")


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def generate_chain(chain: list[torch.nn.Module], solver: str, nfe_per_block: int | None, num_samples: int, seed: int,
                   block_size: int, rtol: float = 1e-5, atol: float = 1e-5, progress: bool = True,
                   sample_shape: tuple[int, ...] = (2,), labels: torch.Tensor | None = None) -> tuple[np.ndarray, dict]:
    """Draw ``num_samples`` from a chain (blocks, or students for ``solver = "distilled"``), counting every NFE.

    Sample ``i`` starts from the noise of stream ``(seed, i // block_size)``
    (:func:`gmflow.harness.seeding.stream_generator`, the same noise as the flow-matching and GMFlow samplers of the
    same shape), conditioned on ``labels[i]`` if given.
    The fixed-step solvers and the students use the same NFE for every sample; dopri5 adapts to each stream's batch,
    so its NFE is averaged over samples (per block and in total). A student of several blocks is one evaluation.

    Returns:
        samples ``(num_samples, *sample_shape)`` float32 and a record with ``nfe`` (per sample, summed over blocks or
        students), ``nfe_per_block`` (block or student 1 first) and ``sample_seconds``.
    """
    if solver in FIXED_STEP_SOLVERS and nfe_per_block is None:
        raise ValueError(f"{solver} needs --nfe-per-block")
    if solver in ("dopri5", "distilled") and nfe_per_block is not None:
        raise ValueError(f"{solver} takes no --nfe-per-block (dopri5 adapts; a student is one evaluation)")
    fns = [block_student(n) if solver == "distilled" else block_velocity(n) for n in chain]
    out, per_block, sizes, t0 = [], [], [], time.perf_counter()
    with torch.no_grad():
        for b in tqdm(range(-(-num_samples // block_size)), desc=f"lfm {solver}", disable=not progress, mininterval=5):
            n = min(block_size, num_samples - b * block_size)
            z = torch.randn((n, *sample_shape), generator=stream_generator(seed, b))
            bound = fns
            if labels is not None:
                y = labels[b * block_size : b * block_size + n]
                bound = [functools.partial(f, y=y) for f in fns]
            if solver == "distilled":
                res = sample_chain_distilled(bound, z, 1)
            else:
                res = sample_chain(bound, z, solver, nfe_per_block, rtol=rtol, atol=atol)
            out.append(res.x.float().numpy())
            per_block.append(res.nfe_per_block)
            sizes.append(n)
    if solver != "dopri5" and len(set(per_block)) != 1:
        raise RuntimeError(f"NFE differed between sample streams: {sorted(set(per_block))}")
    mean_per_block = np.average(np.asarray(per_block, dtype=np.float64), axis=0, weights=sizes)
    exact = len(set(per_block)) == 1
    per_block_out = [int(v) for v in per_block[0]] if exact else [round(float(v), 2) for v in mean_per_block]
    total = int(sum(per_block[0])) if exact else round(float(mean_per_block.sum()), 2)
    if solver in FIXED_STEP_SOLVERS:
        budget = nfe_per_block
    elif solver == "distilled":
        budget = 1
    else:  # adaptive: the budget is what it used
        budget = 0
    record = {"solver": solver, "nfe": total, "nfe_per_block": per_block_out,
              "nfe_budget": budget * len(chain) if budget else round(float(total)), "nfe_per_block_budget": budget,
              "nfe_min": int(min(sum(p) for p in per_block)), "nfe_max": int(max(sum(p) for p in per_block)),
              "sample_seconds": round(time.perf_counter() - t0, 3), "num_samples": num_samples,
              "block_size": block_size, "seed": seed}
    if solver == "dopri5":
        record.update(rtol=rtol, atol=atol)
    return np.concatenate(out), record


def table_record(specs: list[dict], rec: dict, run: str = RUN) -> dict:
    """The columns of the 2D and image long tables (:mod:`gmflow.harness.tables`) for an LFM sample set of a chain
    of blocks."""
    return {"dataset": specs[0]["dataset"], "run": run, "method": METHOD, "K": 0, "trans_ratio": None,
            "guidance": "none", "guidance_scale": 0.0, "orthogonal": 0.0, "substeps": 1, "spectral": 0,
            "num_blocks": specs[0]["num_blocks"], "interpolant": specs[0]["interpolant"],
            "train_steps": int(sum(s["steps"] for s in specs)), **rec}


def push_cost(record: str | Path) -> tuple[float, int]:
    """Seconds and forward evaluations (pool size x NFE per sample) of one push, from its ``pool_{n}.json``."""
    r = json.loads(Path(record).read_text())
    return float(r["seconds"]), int(round(r["nfe_per_sample"] * r["pool_size"]))


def chain_training_cost(block_dirs: list[str | Path]) -> dict:
    """Training cost of a chain: block training seconds plus the seconds of pushing pools 1..N-1 (the pushes are
    part of training; pool N serves distillation only), read from the block records and the push records beside
    them (``pool_{n}.json``). ``train_seconds`` is None when a push record is missing.

    Also the compute in network evaluations: training samples (steps x batch, each one forward and backward) and
    push evaluations (forward only, pool size x NFE per sample).
    """
    specs = [read_block_spec(d) for d in block_dirs]
    block_seconds = float(sum(s["train_seconds"] for s in specs))
    push_seconds, push_evals = 0.0, 0
    for d, s in zip(block_dirs[:-1], specs[:-1], strict=True):
        record = Path(d).parent / f"pool_{s['block']}.json"
        if not record.exists():
            return {"train_seconds": None, "block_train_seconds": round(block_seconds, 2)}
        seconds, evals = push_cost(record)
        push_seconds += seconds
        push_evals += evals
    return {"train_seconds": round(block_seconds + push_seconds, 2), "block_train_seconds": round(block_seconds, 2),
            "push_seconds": round(push_seconds, 2), "push_evaluations": push_evals,
            "train_samples": int(sum(s["steps"] * s.get("batch_size", 0) for s in specs))}


def chain_nll(chain: list[torch.nn.Module], x: np.ndarray, num_steps: int, method: str = "rk4",
              batch_size: int = 1000, tol: float = 1e-5) -> tuple[np.ndarray, float]:
    """``-log p_model(x)`` (nats) of points ``x (M, 2)`` through the chain's ODE (exact divergence,
    docs/method.md, Sec. 7.5), with ``num_steps`` fixed steps per block (rk4, euler) or adaptive dopri5 at
    ``rtol = atol = tol``.

    Returns:
        ``(M,)`` negative log-likelihoods and the counted block evaluations per point (averaged over batches).
    """
    out, nfes, sizes = [], [], []
    for i in range(0, len(x), batch_size):
        fns = [NFECounter(block_velocity(n)) for n in chain]
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))
        out.append(-log_likelihood(fns, xb, num_steps, method, rtol=tol, atol=tol).double().numpy())
        nfes.append(sum(f.nfe for f in fns))
        sizes.append(len(xb))
    nfe = nfes[0] if len(set(nfes)) == 1 else round(float(np.average(nfes, weights=sizes)), 1)
    return np.concatenate(out), nfe


def nll_rows(dataset: str, nll: np.ndarray, data_logp: np.ndarray, rec: dict,
             nll_coarse: np.ndarray | None = None) -> pd.DataFrame:
    """Long-format rows: model NLL, data NLL (the entropy estimate) and their gap, an estimate of KL(data || model).

    ``E_data[-log p_model] - E_data[-log p_data] = KL(p_data || p_model)``; both means are over the same exact points,
    so the gap's standard error is that of the per-point differences. ``nll_coarse`` (the same points with a coarser
    solve: half the fixed steps, or a 10x looser dopri5 tolerance) gives the rows ``nll_coarse`` and
    ``nll_coarse_diff_se`` (standard error of the per-point differences): far from ``nll`` in those units, the ODE is
    not resolved and ``nll`` is not converged.
    """
    gap = nll + data_logp
    n = len(nll)
    values = {"nll": nll.mean(), "nll_se": nll.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan"),
              "data_nll": -data_logp.mean(), "kl_estimate": gap.mean(),
              "kl_estimate_se": gap.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")}
    if nll_coarse is not None:
        values["nll_coarse"] = nll_coarse.mean()
        values["nll_coarse_diff_se"] = (nll - nll_coarse).std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    base = {k: rec.get(k) for k in COLUMNS_2D}
    rows = [{**base, "dataset": dataset, "metric": m, "value": float(v), "feature_extractor": "exact-density"}
            for m, v in values.items()]
    return pd.DataFrame(rows, columns=COLUMNS_2D)
