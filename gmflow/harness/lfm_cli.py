"""Sub-commands of Local Flow Matching (SPEC Part B): one block, one push, one student, one sample set at a time.

Two kinds of data: the 2D datasets (the MLP of the 2D experiment, exact NLL) and the image datasets (the DiT of the
image experiment with its velocity head, class-conditional with label dropout; samples evaluated by
``gmflow-bench evaluate-images``). A chain of ``N`` blocks lives in one folder (the workflow's layout,
``workflow/rules/lfm.smk`` and ``lfm_images.smk``)::

    pool_0.npz            the training sample (``prepare-data`` in 2D, ``lfm-image-pool`` for images, with labels)
    block_{n}/            block n, trained on pool_{n-1} (ema.safetensors, run.json, resumable state.safetensors)
    pool_{n}.npz          pool_{n-1} pushed through block n (pool_n = T_n(...T_1(pool_0))), labels carried along
    student_{n}/          one-step student of block n (teacher pairs: pool_n -> pool_{n-1})
    student_{n}-{m}/      one-step student of blocks n..m together (teacher pairs: pool_m -> pool_{n-1})

Example (the 2D checkerboard with 3 blocks; block 3 is the free one)::

    gmflow-bench prepare-data --dataset checkerboard --num-samples 20000 --seed 9000 --out lfm/pool_0.npz
    gmflow-bench lfm-train-block --dataset checkerboard --block 1 --num-blocks 3 --pool lfm/pool_0.npz \\
        --steps 500 --out lfm/block_1
    gmflow-bench lfm-push --block-dir lfm/block_1 --pool lfm/pool_0.npz --out lfm/pool_1.npz
    gmflow-bench lfm-train-block --dataset checkerboard --block 2 --num-blocks 3 --pool lfm/pool_1.npz \\
        --init-from lfm/block_1/ema.safetensors --steps 500 --out lfm/block_2
    ...
    gmflow-bench lfm-sample --blocks lfm/block_1 lfm/block_2 lfm/block_3 --solver heun --nfe-per-block 2 \\
        --out lfm/samples/heun_nfe2_seed0.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gmflow.harness import io
from gmflow.harness.argtypes import nonneg_int as _nonneg_int
from gmflow.harness.argtypes import positive_float as _positive_float
from gmflow.harness.argtypes import positive_int as _positive_int

METHOD = "lfm"
RUN = "lfm"
MLP2D = "mlp2d"
FIXED_STEP_SOLVERS = ("euler", "heun")
SAMPLE_SOLVERS = ("euler", "heun", "dopri5", "distilled")
"""Solver keys of an LFM sample set: the block ODE solvers of :data:`baselines.lfm.SOLVERS` and the chain of one-step
students (tests/test_lfm_workflow.py checks them against the library and the config schema)."""



def _args(a: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(a).items() if k != "func"}


# ---------------------------------------------------------------------------------------------------------------------
# Files of a chain
# ---------------------------------------------------------------------------------------------------------------------


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


def _is_image(dataset: str) -> bool:
    from gmflow.harness import registry

    return dataset in registry.IMAGE_DATASETS


def _net_spec(a) -> dict:
    """The network part of a block's run.json from the sub-command's arguments (2D MLP or image DiT)."""
    if not _is_image(a.dataset):
        if a.network not in (None, MLP2D):
            raise ValueError(f"2D dataset {a.dataset!r} takes the MLP (--width/--depth), not --network {a.network}")
        return {"network": MLP2D, "width": a.width, "depth": a.depth, "sample_shape": [2], "num_classes": 0}
    from gmflow.harness import registry
    from gmflow.harness.images import image_spec

    if a.network not in registry.IMAGE_NETWORKS:
        raise ValueError(f"image dataset {a.dataset!r} needs --network, one of {registry.IMAGE_NETWORKS}")
    spec = image_spec(a.dataset, a.network, "fm", 0, False)
    return {k: spec[k] for k in ("network", "sample_shape", "num_classes")}


def _build_net(spec: dict) -> torch.nn.Module:
    """The velocity network of a block spec: the 2D MLP, or the image DiT with its velocity head."""
    if spec.get("network", MLP2D) == MLP2D:
        from gmflow.harness.networks import MLP2D as Net

        return Net("velocity", 1, spec["width"], spec["depth"])
    from gmflow.harness.images import build_image_net

    net, _ = build_image_net({**spec, "method": "fm", "num_components": 0, "spectral": False})
    return net


def _read_spec(folder: str | Path) -> dict:
    p = Path(folder) / "run.json"
    if not p.exists():
        raise FileNotFoundError(f"{folder} has no run.json: train the block first (gmflow-bench lfm-train-block)")
    return json.loads(p.read_text())


def load_block(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """The EMA network of a trained block folder and its run.json."""
    spec = _read_spec(folder)
    net = _build_net(spec)
    net.load_state_dict(io.load_safetensors(Path(folder) / "ema.safetensors"))
    return net.eval().requires_grad_(False), spec


def load_student(folder: str | Path) -> tuple[torch.nn.Module, dict]:
    """The network of a distilled student folder and its run.json."""
    spec = _read_spec(folder)
    if spec.get("kind") != "student":
        raise ValueError(f"{folder} is not a student folder (kind {spec.get('kind')!r}); run gmflow-bench lfm-distill")
    net = _build_net(spec)
    net.load_state_dict(io.load_safetensors(Path(folder) / "student.safetensors"))
    return net.eval().requires_grad_(False), spec


def _check_chain(specs: list[dict]) -> None:
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
    if len({(s["dataset"], s["interpolant"], s.get("network", MLP2D)) for s in specs}) != 1:
        raise ValueError("the folders of a chain must share one dataset, network and interpolant")


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# lfm-image-pool
# ---------------------------------------------------------------------------------------------------------------------


def cmd_image_pool(a) -> None:
    from gmflow.harness.data_images import load_images
    from gmflow.harness.images import stratified_order

    x, y = load_images(a.dataset, "train", a.data_root)
    if a.num_images is not None:
        order = stratified_order(y)
        if a.num_images > len(order):
            raise ValueError(f"--num-images {a.num_images} > {len(order)}: a class-balanced prefix of the {len(x)} "
                             f"training images of {a.dataset} holds at most {len(order)} (10 x the smallest class); "
                             "leave --num-images out to use them all")
        idx = order[: a.num_images]
        x, y = x[idx], y[idx]
    io.save_npz(a.out, x=x.numpy(), labels=y.numpy())
    counts = np.bincount(y.numpy()).tolist()
    io.write_json(io.provenance(_args(a), kind="lfm-image-pool", pool_size=len(x), class_counts=counts),
                  Path(a.out).with_suffix(".json"))
    print(f"{a.out}: {len(x)} training images of {a.dataset} in [-1, 1], class counts {counts}")


# ---------------------------------------------------------------------------------------------------------------------
# lfm-train-block
# ---------------------------------------------------------------------------------------------------------------------


def block_h(block: int, num_blocks: int, c: float, rho: float) -> float | None:
    """OU step of block ``n`` from the schedule ``h_n = c rho^{n-1}`` (SPEC B.1), ``None`` for the free block ``N``."""
    from baselines.lfm import step_sizes

    if not 1 <= block <= num_blocks:
        raise ValueError(f"block must be in 1..num_blocks = 1..{num_blocks}, got {block}")
    hs = step_sizes(c, rho, num_blocks)
    return hs[block - 1] if block < num_blocks else None


def _resume_or_restart(out: Path, fingerprint: dict, restart: bool) -> str:
    """Keep ``out/state.safetensors`` only if it was trained from the same inputs and settings (all but the step count).

    A job restarted after a crash resumes; a block whose pool, warm start or settings changed (an upstream block was
    retrained, say) starts again, so a stale state is never continued. Returns what was done, for the log.
    """
    from gmflow.harness.train import STATE_FILE

    state, record = out / STATE_FILE, out / "inputs.json"
    previous = json.loads(record.read_text()) if record.exists() else None
    action = "fresh"
    if state.exists():
        if restart or previous != fingerprint:
            state.unlink()
            (out / "train_log.csv").unlink(missing_ok=True)
            action = "restarted (--restart)" if restart else "restarted (inputs or settings changed)"
        else:
            action = "resumed"
    io.write_json(fingerprint, record)
    return action


def cmd_train_block(a) -> None:
    from gmflow.harness.lfm import BlockTrainConfig, load_block_weights, train_block

    torch.set_num_threads(a.threads)
    h = block_h(a.block, a.num_blocks, a.step_c, a.step_rho)
    if a.block == 1 and a.init_from:
        raise ValueError(f"block 1 has no previous block to warm-start from: drop --init-from {a.init_from}")
    image = _is_image(a.dataset)
    cfg = BlockTrainConfig(interpolant=a.interpolant, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                           warmup_steps=a.warmup_steps, ema_gamma=a.ema_gamma, checkpoint_every=a.checkpoint_every,
                           seed=a.seed, label_dropout=a.label_dropout if image else 0.0, grad_clip=a.grad_clip)
    pool, labels = load_pool(a.pool), load_pool_labels(a.pool)
    net_spec = _net_spec(a)
    if list(pool.shape[1:]) != net_spec["sample_shape"]:
        raise ValueError(f"pool {a.pool} holds {tuple(pool.shape[1:])} samples, dataset {a.dataset!r} has "
                         f"{tuple(net_spec['sample_shape'])}")
    if image and labels is None:
        raise ValueError(f"image pool {a.pool} has no labels: make it with gmflow-bench lfm-image-pool")
    torch.manual_seed(a.seed * 1000 + a.block)
    net = _build_net(net_spec)
    init = None
    if a.init_from:
        init = io.load_safetensors(a.init_from)
        load_block_weights(net, a.init_from)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = {"pool_sha256": _digest(pool, *([] if labels is None else [labels])),
                   "init_sha256": _digest(*init.values()) if init else None,
                   "dataset": a.dataset, "block": a.block, "num_blocks": a.num_blocks, "h": h, **net_spec,
                   **{k: v for k, v in vars(cfg).items() if k != "steps"}}
    action = _resume_or_restart(out, fingerprint, a.restart)
    print(f"block {a.block}/{a.num_blocks} ({'free' if h is None else f'h = {h:.6g}'}): {action}", flush=True)
    record = train_block(net, pool, a.block, h, cfg, out, progress=not a.quiet, labels=labels,
                         null_label=getattr(net, "null_label", -1))
    spec = {**net_spec, "method": METHOD, "kind": "block", "dataset": a.dataset, "block": a.block,
            "num_blocks": a.num_blocks, "h": h, "interpolant": a.interpolant, "pool_size": int(pool.shape[0]),
            "batch_size": a.batch_size, "warm_start": a.init_from is not None, "resume": action}
    io.write_json({**spec, **record}, out / "run.json")
    io.write_json(io.provenance(_args(a), kind="lfm-block", **record), out / "provenance.json")


# ---------------------------------------------------------------------------------------------------------------------
# lfm-push
# ---------------------------------------------------------------------------------------------------------------------


def cmd_push(a) -> None:
    from gmflow.harness.lfm import block_velocity, push_pool_cached

    out = Path(a.out)
    if out.exists():  # the cache: a pushed pool is never recomputed (delete it to push again)
        print(f"{out} exists: nothing to do")
        return
    torch.set_num_threads(a.threads)
    net, spec = load_block(a.block_dir)
    pool, labels = load_pool(a.pool), load_pool_labels(a.pool)
    if a.solver == "dopri5" and a.nfe is not None:
        raise ValueError("dopri5 adapts its steps: drop --nfe (or use --solver euler / heun)")
    if a.solver != "dopri5" and a.nfe is None:
        raise ValueError(f"--solver {a.solver} needs --nfe (evaluations per sample through the block)")
    nfe = a.nfe if a.solver != "dopri5" else None
    x, rec = push_pool_cached(block_velocity(net), pool, out, a.solver, nfe, rtol=a.rtol, atol=a.atol,
                              batch_size=a.batch_size, progress=not a.quiet, labels=labels)
    sizes = [min(a.batch_size, len(pool) - i) for i in range(0, len(pool), a.batch_size)]
    rec.update(block=spec["block"], num_blocks=spec["num_blocks"], h=spec["h"], solver=a.solver, rtol=a.rtol,
               atol=a.atol, nfe_per_block=a.nfe, batch_size=a.batch_size, pool_size=int(len(pool)),
               nfe_per_sample=float(np.dot(sizes, rec["nfe_per_batch"]) / len(pool)))
    if x.dim() == 2:  # 2D: the pushed pool's moments (the notebook compares them with the OU marginal)
        rec.update(pool_mean=x.mean(0).tolist(), pool_cov=torch.cov(x.T.double()).tolist())
    else:
        rec.update(pool_pixel_mean=float(x.mean()), pool_pixel_std=float(x.std()))
    io.write_json(io.provenance(_args(a), kind="lfm-push", **rec), out.with_suffix(".json"))


# ---------------------------------------------------------------------------------------------------------------------
# lfm-sample
# ---------------------------------------------------------------------------------------------------------------------


def generate_chain(chain: list[torch.nn.Module], solver: str, nfe_per_block: int | None, num_samples: int, seed: int,
                   block_size: int, rtol: float = 1e-5, atol: float = 1e-5, progress: bool = True,
                   sample_shape: tuple[int, ...] = (2,), labels: torch.Tensor | None = None) -> tuple[np.ndarray, dict]:
    """Draw ``num_samples`` from a chain (blocks, or students for ``solver = "distilled"``), counting every NFE.

    Sample ``i`` starts from the noise of stream ``(seed, i // block_size)`` (:func:`sampling.block_generator`, the
    same noise as the flow-matching and GMFlow samplers of the same shape), conditioned on ``labels[i]`` if given.
    The fixed-step solvers and the students use the same NFE for every sample; dopri5 adapts to each stream's batch,
    so its NFE is averaged over samples (per block and in total). A student of several blocks is one evaluation.

    Returns:
        samples ``(num_samples, *sample_shape)`` float32 and a record with ``nfe`` (per sample, summed over blocks or
        students), ``nfe_per_block`` (block or student 1 first) and ``sample_seconds``.
    """
    import functools

    from tqdm import tqdm

    from baselines.lfm import sample_chain, sample_chain_distilled
    from gmflow.harness.lfm import block_student, block_velocity
    from gmflow.harness.sampling import block_generator

    if solver in FIXED_STEP_SOLVERS and nfe_per_block is None:
        raise ValueError(f"{solver} needs --nfe-per-block")
    if solver in ("dopri5", "distilled") and nfe_per_block is not None:
        raise ValueError(f"{solver} takes no --nfe-per-block (dopri5 adapts; a student is one evaluation)")
    fns = [block_student(n) if solver == "distilled" else block_velocity(n) for n in chain]
    out, per_block, sizes, t0 = [], [], [], time.perf_counter()
    with torch.no_grad():
        for b in tqdm(range(-(-num_samples // block_size)), desc=f"lfm {solver}", disable=not progress, mininterval=5):
            n = min(block_size, num_samples - b * block_size)
            z = torch.randn((n, *sample_shape), generator=block_generator(seed, b))
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


def _table_record(specs: list[dict], rec: dict, run: str = RUN) -> dict:
    """The columns of the 2D and image long tables (``cli.TABLE_COLUMNS``, ``images.TABLE_COLUMNS``) for an LFM
    sample set of a chain of blocks."""
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
    specs = [_read_spec(d) for d in block_dirs]
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


def cmd_sample(a) -> None:
    from gmflow.harness import cli

    torch.set_num_threads(a.threads)
    if a.metrics_out and not a.reference:
        raise ValueError("--metrics-out needs --reference (the exact reference sample of the dataset)")
    loader = load_student if a.solver == "distilled" else load_block
    loaded = [loader(d) for d in a.blocks]
    specs = [s for _, s in loaded]
    _check_chain(specs)
    nfe = a.nfe_per_block if a.solver in FIXED_STEP_SOLVERS else None
    if a.solver not in FIXED_STEP_SOLVERS and a.nfe_per_block is not None:
        raise ValueError(f"--nfe-per-block applies to euler and heun, not {a.solver!r}")
    image = _is_image(specs[0]["dataset"])
    if image and a.metrics_out:
        raise ValueError("image sample sets are evaluated by gmflow-bench evaluate-images, not --metrics-out")
    labels = None
    if image:
        from gmflow.harness.images import balanced_labels

        labels = balanced_labels(a.num_samples, specs[0]["num_classes"])
    x, rec = generate_chain([n for n, _ in loaded], a.solver, nfe, a.num_samples, a.seed, a.block_size, a.rtol,
                            a.atol, progress=not a.quiet, sample_shape=tuple(specs[0]["sample_shape"]),
                            labels=labels)
    rec = _table_record(specs, rec, a.run)
    teachers = a.teacher_blocks or (a.blocks if a.solver != "distilled" else None)
    if a.teacher_blocks:
        tspecs = [_read_spec(d) for d in a.teacher_blocks]
        _check_chain(tspecs)
        if tspecs[0]["num_blocks"] != specs[0]["num_blocks"] or tspecs[0]["dataset"] != specs[0]["dataset"]:
            raise ValueError("--teacher-blocks must be the blocks of the chain the students were distilled from")
    if a.solver == "distilled":
        rec["distill_steps"] = int(sum(s["steps"] for s in specs))
        rec["distill_seconds"] = round(float(sum(s["train_seconds"] for s in specs)), 2)
        rec["train_steps"] = int(sum(s["teacher_steps"] for s in specs))
        rec["num_students"] = len(specs)
    if teachers:
        rec.update(chain_training_cost(teachers))
    if a.solver == "distilled" and a.teacher_blocks:  # the push through the free block serves distillation only
        last = Path(a.teacher_blocks[-1]).parent / f"pool_{len(a.teacher_blocks)}.json"
        if last.exists():
            seconds, evals = push_cost(last)
            rec.update(distill_push_seconds=seconds, distill_push_evaluations=evals)
    out = Path(a.out)
    if image:
        from gmflow.harness.data_images import to_uint8

        images = to_uint8(torch.from_numpy(x)).numpy()
        io.save_npz(out, images=images, labels=labels.numpy(), record=json.dumps(rec))
    else:
        io.save_npz(out, samples=x, record=json.dumps(rec))
    io.write_json(io.provenance(_args(a), kind="lfm-sample", **rec), out.with_suffix(".json"))
    if a.metrics_out:  # evaluate in the same process, as the other 2D samplers
        io.save_csv(cli._metric_rows_2d(x, rec, np.load(a.reference)["samples"], a.knn_points), a.metrics_out)


# ---------------------------------------------------------------------------------------------------------------------
# lfm-nll
# ---------------------------------------------------------------------------------------------------------------------


def chain_nll(chain: list[torch.nn.Module], x: np.ndarray, num_steps: int, method: str = "rk4",
              batch_size: int = 1000, tol: float = 1e-5) -> tuple[np.ndarray, float]:
    """``-log p_model(x)`` (nats) of points ``x (M, 2)`` through the chain's ODE (exact divergence, SPEC B.1), with
    ``num_steps`` fixed steps per block (rk4, euler) or adaptive dopri5 at ``rtol = atol = tol``.

    Returns:
        ``(M,)`` negative log-likelihoods and the counted block evaluations per point (averaged over batches).
    """
    from baselines.lfm import NFECounter, log_likelihood
    from gmflow.harness.lfm import block_velocity

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
    from gmflow.harness import cli

    gap = nll + data_logp
    n = len(nll)
    values = {"nll": nll.mean(), "nll_se": nll.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan"),
              "data_nll": -data_logp.mean(), "kl_estimate": gap.mean(),
              "kl_estimate_se": gap.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")}
    if nll_coarse is not None:
        values["nll_coarse"] = nll_coarse.mean()
        values["nll_coarse_diff_se"] = (nll - nll_coarse).std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    base = {k: rec.get(k) for k in cli.TABLE_COLUMNS}
    rows = [{**base, "dataset": dataset, "metric": m, "value": float(v), "feature_extractor": "exact-density"}
            for m, v in values.items()]
    return pd.DataFrame(rows, columns=cli.TABLE_COLUMNS)


def cmd_nll(a) -> None:
    from gmflow.harness import cli
    from gmflow.harness.data2d import get_dataset_2d

    torch.set_num_threads(a.threads)
    if a.flow_run:  # a flow-matching run is one free block with the linear interpolant (local time = sigma)
        net, spec = cli.load_run(a.flow_run)
        if spec["method"] != "fm":
            raise ValueError(f"{a.flow_run} is a {spec['method']!r} run; --flow-run takes a flow-matching run")
        chain, dataset = [net.requires_grad_(False)], spec["dataset"]
        rec = {"dataset": dataset, "run": Path(a.flow_run).name, "method": "fm", "K": 0, "guidance": "none",
               "guidance_scale": 0.0, "orthogonal": 0.0, "substeps": 1, "train_steps": spec["train"]["steps"]}
    else:
        loaded = [load_block(d) for d in a.blocks]
        specs = [s for _, s in loaded]
        _check_chain(specs)
        chain, dataset = [n for n, _ in loaded], specs[0]["dataset"]
        rec = _table_record(specs, {})
    ds = get_dataset_2d(dataset)
    if not hasattr(ds, "log_prob"):
        raise ValueError(f"dataset {ds.name!r} has no exact log-density: its NLL gap cannot be computed")
    ref = np.load(a.reference)["samples"]
    if a.num_points > len(ref):
        raise ValueError(f"--num-points {a.num_points} > {len(ref)} points in {a.reference}; lower it or draw a "
                         "larger reference sample")
    x = ref[: a.num_points].astype(np.float64)
    data_logp = ds.log_prob(x)
    if not np.isfinite(data_logp).all():
        raise ValueError(f"{a.reference} holds points outside the support of {ds.name!r}: not an exact sample")
    t0 = time.perf_counter()
    nll, nfe = chain_nll(chain, x, a.num_steps, a.method, a.batch_size, a.tol)
    if a.method == "dopri5":
        nll_coarse = chain_nll(chain, x, a.num_steps, a.method, a.batch_size, min(10 * a.tol, 0.1))[0]
    else:
        nll_coarse = chain_nll(chain, x, a.num_steps // 2, a.method, a.batch_size)[0] if a.num_steps >= 2 else None
    rec.update(solver=a.method, nfe=nfe, nfe_budget=nfe, seed=a.seed, num_samples=a.num_points,
               num_steps_per_block=a.num_steps if a.method != "dopri5" else None,
               tol=a.tol if a.method == "dopri5" else None, seconds=round(time.perf_counter() - t0, 2))
    io.save_csv(nll_rows(ds.name, nll, data_logp, rec, nll_coarse), a.out)
    io.write_json(io.provenance(_args(a), kind="lfm-nll", **rec), Path(a.out).with_suffix(".json"))


# ---------------------------------------------------------------------------------------------------------------------
# lfm-distill
# ---------------------------------------------------------------------------------------------------------------------


def cmd_distill(a) -> None:
    from gmflow.harness.lfm import StudentTrainConfig, train_student

    torch.set_num_threads(a.threads)
    teachers = [load_block(d) for d in a.blocks]
    specs = [s for _, s in teachers]
    first, last = specs[0]["block"], specs[-1]["block"]
    if [s["block"] for s in specs] != list(range(first, last + 1)):
        raise ValueError(f"--blocks must be consecutive blocks of one chain, first to last; got blocks "
                         f"{[s['block'] for s in specs]}")
    if len({(s["num_blocks"], s["dataset"], s["network"], s["interpolant"]) for s in specs}) != 1:
        raise ValueError("--blocks must come from one chain (same number of blocks, dataset, network, interpolant)")
    x_data, x_noisy = load_pool(a.pool_in), load_pool(a.pool_out)
    labels, labels_out = load_pool_labels(a.pool_in), load_pool_labels(a.pool_out)
    if list(x_data.shape[1:]) != list(specs[0]["sample_shape"]):
        raise ValueError(f"the pools hold {tuple(x_data.shape[1:])} samples, the blocks take "
                         f"{tuple(specs[0]['sample_shape'])}")
    if x_data.shape != x_noisy.shape:
        raise ValueError(f"--pool-in {tuple(x_data.shape)} and --pool-out {tuple(x_noisy.shape)} differ: pass the "
                         f"group's pool (pool_{first - 1}) and the same pool pushed through it (pool_{last})")
    if (labels is None) != (labels_out is None) or (labels is not None and not torch.equal(labels, labels_out)):
        raise ValueError("--pool-in and --pool-out carry different labels: they are not one pool pushed")
    spec = specs[-1]
    net = _build_net(spec)
    # warm start from the group's last (noisiest) block: a one-block student starts as one Euler step of its teacher
    net.load_state_dict(teachers[-1][0].state_dict())
    cfg = StudentTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps,
                             seed=a.seed)
    record = train_student(net, x_noisy, x_data, first, cfg, a.out, progress=not a.quiet, labels=labels)
    keep = ("network", "dataset", "num_blocks", "interpolant", "width", "depth", "sample_shape", "num_classes")
    out = {**{k: spec[k] for k in keep if k in spec}, "block": first, "last_block": last,
           "h": [s["h"] for s in specs], "method": METHOD, "kind": "student",
           "teacher_steps": int(sum(s["steps"] for s in specs)),
           "teacher_train_seconds": round(float(sum(s["train_seconds"] for s in specs)), 2), **record}
    io.write_json(out, Path(a.out) / "run.json")
    io.write_json(io.provenance(_args(a), kind="lfm-distill", **record), Path(a.out) / "provenance.json")


# ---------------------------------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------------------------------


def add_lfm_parsers(sub, fmt) -> None:
    """Add the LFM sub-commands to the ``gmflow-bench`` sub-parsers ``sub`` (help formatter ``fmt``)."""
    from baselines.lfm import INTERPOLANTS, SOLVERS
    from gmflow.harness import registry

    ex = "example: gmflow-bench {} (see the module docstring of gmflow.harness.lfm_cli for a whole chain)"

    s = sub.add_parser("lfm-train-block", help="LFM: train block n of a chain on its pool (resumable)",
                       formatter_class=fmt, epilog=ex.format(
                           "lfm-train-block --dataset gmm2d --block 2 --num-blocks 9 --pool lfm/pool_1.npz "
                           "--init-from lfm/block_1/ema.safetensors --out lfm/block_2"))
    s.add_argument("--dataset", choices=(*registry.DATASETS_2D, *registry.IMAGE_DATASETS), required=True)
    s.add_argument("--block", type=_positive_int, required=True, help="block index n (1-based); n = N is the free one")
    s.add_argument("--num-blocks", type=_positive_int, required=True, help="N, including the free block")
    s.add_argument("--step-c", type=_positive_float, default=0.025, help="h_n = c rho^(n-1)")
    s.add_argument("--step-rho", type=_positive_float, default=1.25, help="h_n = c rho^(n-1)")
    s.add_argument("--pool", required=True, help="block n's pool .npz (pool_{n-1}; pool_0 = the training sample)")
    s.add_argument("--init-from", default=None, help="warm start: block n-1's ema.safetensors")
    s.add_argument("--interpolant", choices=sorted(INTERPOLANTS), default="linear")
    s.add_argument("--network", default=None, help="image datasets: the DiT variant (velocity head)")
    s.add_argument("--width", type=_positive_int, default=256, help="2D MLP width")
    s.add_argument("--depth", type=_positive_int, default=3, help="2D MLP depth")
    s.add_argument("--label-dropout", type=float, default=0.1, help="images: probability of the null class")
    s.add_argument("--grad-clip", type=float, default=0.0, help="gradient-norm clip; 0 = off")
    s.add_argument("--steps", type=_positive_int, default=667)
    s.add_argument("--batch-size", type=_positive_int, default=1024)
    s.add_argument("--lr", type=_positive_float, default=2e-4)
    s.add_argument("--warmup-steps", type=_nonneg_int, default=50)
    s.add_argument("--ema-gamma", type=float, default=7.0)
    s.add_argument("--checkpoint-every", type=_positive_int, default=1000)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--restart", action="store_true", help="discard a saved state and train from the start")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="block folder")
    s.set_defaults(func=cmd_train_block)

    s = sub.add_parser("lfm-image-pool", help="LFM: the training pool of an image chain (images and labels)",
                       formatter_class=fmt, epilog=ex.format(
                           "lfm-image-pool --dataset fashion-mnist --num-images 10000 --out lfm/pool_0.npz"))
    s.add_argument("--dataset", choices=registry.IMAGE_DATASETS, required=True)
    s.add_argument("--num-images", type=_positive_int, default=None,
                   help="a class-balanced prefix of the training split (default: all of it)")
    s.add_argument("--data-root", default=None, help="folder of the dataset's files (default: its standard place)")
    s.add_argument("--out", required=True, help="pool_0 .npz (x in [-1, 1], labels)")
    s.set_defaults(func=cmd_image_pool)

    s = sub.add_parser("lfm-push", help="LFM: push a pool through a trained block (t: 0 -> 1), cached",
                       formatter_class=fmt, epilog=ex.format(
                           "lfm-push --block-dir lfm/block_1 --pool lfm/pool_0.npz --out lfm/pool_1.npz"))
    s.add_argument("--block-dir", required=True)
    s.add_argument("--pool", required=True, help="the block's pool .npz")
    s.add_argument("--solver", choices=SOLVERS, default="dopri5")
    s.add_argument("--nfe", type=_positive_int, default=None, help="evaluations per block (euler / heun only)")
    s.add_argument("--rtol", type=_positive_float, default=1e-5)
    s.add_argument("--atol", type=_positive_float, default=1e-5)
    s.add_argument("--batch-size", type=_positive_int, default=10000, help="points per dopri5 solve")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="next pool .npz (left alone if it exists)")
    s.set_defaults(func=cmd_push)

    s = sub.add_parser("lfm-sample", help="LFM: sample a chain (blocks N..1), counting every NFE",
                       formatter_class=fmt, epilog=ex.format(
                           "lfm-sample --blocks lfm/block_1 lfm/block_2 --solver heun --nfe-per-block 2 "
                           "--reference ref.npz --metrics-out m.csv --out s.npz"))
    s.add_argument("--blocks", nargs="+", required=True,
                   help="block folders (students for 'distilled') of blocks 1..N, block 1 first")
    s.add_argument("--solver", choices=SAMPLE_SOLVERS, required=True)
    s.add_argument("--nfe-per-block", type=_positive_int, default=None, help="euler / heun: evaluations per block")
    s.add_argument("--rtol", type=_positive_float, default=1e-5, help="dopri5")
    s.add_argument("--atol", type=_positive_float, default=1e-5, help="dopri5")
    s.add_argument("--teacher-blocks", nargs="+", default=None,
                   help="distilled: the teachers' block folders (for the chain's training cost in the record)")
    s.add_argument("--run", default=RUN, help="the chain's name in the tables")
    s.add_argument("--num-samples", type=_positive_int, default=50000)
    s.add_argument("--block-size", type=_positive_int, default=10000, help="samples per noise stream")
    s.add_argument("--reference", default=None, help="exact reference sample to evaluate against")
    s.add_argument("--metrics-out", default=None, help="also write the 2D metrics (long-format .csv)")
    s.add_argument("--knn-points", type=_positive_int, default=10000)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("lfm-nll", help="LFM: exact NLL of held-out data points and its gap to the data entropy",
                       formatter_class=fmt, epilog=ex.format(
                           "lfm-nll --blocks lfm/block_1 lfm/block_2 --reference ref.npz --out nll.csv"))
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--blocks", nargs="+", help="block folders of blocks 1..N, block 1 first")
    g.add_argument("--flow-run", help="instead: a flow-matching run folder (one flow over sigma 0 -> 1), to compare")
    s.add_argument("--reference", required=True, help="exact data sample (held out from the training pool)")
    s.add_argument("--num-points", type=_positive_int, default=2000, help="the reference's first points")
    s.add_argument("--num-steps", type=_positive_int, default=10,
                   help="fixed ODE steps per block (also reported at half as many, a convergence check)")
    s.add_argument("--method", choices=("rk4", "euler", "dopri5"), default="rk4")
    s.add_argument("--tol", type=_positive_float, default=1e-5, help="dopri5: rtol = atol (the coarse check uses 10x)")
    s.add_argument("--batch-size", type=_positive_int, default=1000)
    s.add_argument("--seed", type=_nonneg_int, default=0, help="the reference's seed (a table column)")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--out", required=True, help="output long-format .csv")
    s.set_defaults(func=cmd_nll)

    s = sub.add_parser("lfm-distill", help="LFM: distil one block (or consecutive blocks) into a one-step student",
                       formatter_class=fmt, epilog=ex.format(
                           "lfm-distill --blocks lfm/block_2 --pool-in lfm/pool_1.npz --pool-out lfm/pool_2.npz "
                           "--out lfm/student_2"))
    s.add_argument("--blocks", nargs="+", required=True,
                   help="the teacher block folder, or consecutive blocks n..m first to last (one student for all)")
    s.add_argument("--pool-in", required=True, help="the group's pool pool_{n-1} (data side: the t = 0 endpoints)")
    s.add_argument("--pool-out", required=True, help="that pool pushed through blocks n..m, pool_m (t = 1 inputs)")
    s.add_argument("--steps", type=_positive_int, default=300)
    s.add_argument("--batch-size", type=_positive_int, default=1024)
    s.add_argument("--lr", type=_positive_float, default=2e-4)
    s.add_argument("--warmup-steps", type=_nonneg_int, default=20)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="student folder")
    s.set_defaults(func=cmd_distill)
