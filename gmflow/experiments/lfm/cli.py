"""``gmflow-bench lfm ...``: Local Flow Matching, one block, one push, one student, one sample set at a time.

Two kinds of data: the 2D datasets (the MLP of the 2D experiment, exact NLL) and the image datasets (the DiT of the
image experiment with its velocity head, class-conditional with label dropout; samples evaluated by
``gmflow-bench images evaluate``). A chain of ``N`` blocks lives in one folder (the workflow's layout,
``workflow/rules/lfm.smk`` and ``lfm_images.smk``)::

    pool_0.npz            the training sample (``2d prepare-data``; ``lfm image-pool`` for images, with labels)
    block_{n}/            block n, trained on pool_{n-1} (ema.safetensors, run.json, resumable state.safetensors)
    pool_{n}.npz          pool_{n-1} pushed through block n (pool_n = T_n(...T_1(pool_0))), labels carried along
    student_{n}/          one-step student of block n (teacher pairs: pool_n -> pool_{n-1})
    student_{n}-{m}/      one-step student of blocks n..m together (teacher pairs: pool_m -> pool_{n-1})

Example (the 2D checkerboard with 3 blocks; block 3 is the free one)::

    gmflow-bench 2d prepare-data --dataset checkerboard --num-samples 20000 --seed 9000 --out lfm/pool_0.npz
    gmflow-bench lfm train-block --dataset checkerboard --block 1 --num-blocks 3 --pool lfm/pool_0.npz \\
        --steps 500 --out lfm/block_1
    gmflow-bench lfm push --block-dir lfm/block_1 --pool lfm/pool_0.npz --out lfm/pool_1.npz
    gmflow-bench lfm train-block --dataset checkerboard --block 2 --num-blocks 3 --pool lfm/pool_1.npz \\
        --init-from lfm/block_1/ema.safetensors --steps 500 --out lfm/block_2
    ...
    gmflow-bench lfm sample --blocks lfm/block_1 lfm/block_2 lfm/block_3 --solver heun --nfe-per-block 2 \\
        --out lfm/samples/heun_nfe2_seed0.npz
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from gmflow.experiments.lfm.chain import (
    FIXED_STEP_SOLVERS,
    METHOD,
    RUN,
    build_block_net,
    chain_nll,
    chain_training_cost,
    check_chain,
    digest,
    generate_chain,
    load_block,
    load_pool,
    load_pool_labels,
    load_student,
    nll_rows,
    push_cost,
    read_block_spec,
    table_record,
)
from gmflow.harness import io
from gmflow.harness.argtypes import DIT_SHAPE_FLAGS, dit_shape_overrides
from gmflow.harness.argtypes import args_record as _args
from gmflow.harness.datasets import dataset_info
from gmflow.harness.runs import network_spec

NETWORK_KEYS = ("network", "width", "depth", "min_period", "patch_size", "num_heads", "sample_shape", "num_classes")
"""The network fields of a block's run.json, carried into its students' (each is rebuilt from its own run.json): the
2D MLP's width, depth and min_period, or a DiT's overrides (patch_size, depth, width, num_heads; None = the
variant's)."""


def _net_spec(a, info) -> dict:
    """The network part of a block's run.json: the dataset's network (the 2D MLP's width, depth and min_period; the
    DiT variant named by --network with the image runs' shape overrides --patch-size, --dit-depth, --dit-width and
    --num-heads), with the velocity head."""
    if a.network is None and len(info.networks) > 1:
        raise ValueError(f"dataset {a.dataset!r} needs --network, one of {list(info.networks)}")
    network = a.network or info.networks[0]
    dit = dit_shape_overrides(a)
    if network == "mlp2d":
        if dit:
            given = [flag for field, flag, _ in DIT_SHAPE_FLAGS if field in dit]
            raise ValueError(f"{given} set a DiT's shape; dataset {a.dataset!r} uses the 2D MLP (--width, --depth)")
        spec = network_spec(a.dataset, network, "fm", 0, width=a.width, depth=a.depth, min_period=a.min_period)
    else:
        spec = network_spec(a.dataset, network, "fm", 0, min_period=a.min_period, dit=dit)
    return {k: spec[k] for k in NETWORK_KEYS if k in spec}


# ---------------------------------------------------------------------------------------------------------------------
# lfm-image-pool
# ---------------------------------------------------------------------------------------------------------------------


def cmd_image_pool(a) -> None:
    from gmflow.harness.data_images import load_images, stratified_order

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
    """OU step of block ``n`` from the schedule ``h_n = c rho^{n-1}`` (docs/method.md, Sec. 7.1),
    ``None`` for the free block ``N``."""
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
    from gmflow.experiments.lfm.blocks import BlockTrainConfig, load_block_weights, train_block

    torch.set_num_threads(a.threads)
    h = block_h(a.block, a.num_blocks, a.step_c, a.step_rho)
    if a.block == 1 and a.init_from:
        raise ValueError(f"block 1 has no previous block to warm-start from: drop --init-from {a.init_from}")
    info = dataset_info(a.dataset)
    cfg = BlockTrainConfig(interpolant=a.interpolant, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                           warmup_steps=a.warmup_steps, ema_gamma=a.ema_gamma, checkpoint_every=a.checkpoint_every,
                           seed=a.seed, label_dropout=a.label_dropout if info.num_classes else 0.0,
                           grad_clip=a.grad_clip)
    pool, labels = load_pool(a.pool), load_pool_labels(a.pool)
    net_spec = _net_spec(a, info)
    if list(pool.shape[1:]) != net_spec["sample_shape"]:
        raise ValueError(f"pool {a.pool} holds {tuple(pool.shape[1:])} samples, dataset {a.dataset!r} has "
                         f"{tuple(net_spec['sample_shape'])}")
    if info.num_classes and labels is None:
        raise ValueError(f"image pool {a.pool} has no labels: make it with gmflow-bench lfm image-pool")
    torch.manual_seed(a.seed * 1000 + a.block)
    net = build_block_net(net_spec)
    init = None
    if a.init_from:
        init = io.load_safetensors(a.init_from)
        load_block_weights(net, a.init_from)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = {"pool_sha256": digest(pool, *([] if labels is None else [labels])),
                   "init_sha256": digest(*init.values()) if init else None,
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
    from gmflow.experiments.lfm.blocks import block_velocity, push_pool_cached

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


def cmd_sample(a) -> None:
    torch.set_num_threads(a.threads)
    if a.metrics_out and not a.reference:
        raise ValueError("--metrics-out needs --reference (the exact reference sample of the dataset)")
    loader = load_student if a.solver == "distilled" else load_block
    loaded = [loader(d) for d in a.blocks]
    specs = [s for _, s in loaded]
    check_chain(specs)
    nfe = a.nfe_per_block if a.solver in FIXED_STEP_SOLVERS else None
    if a.solver not in FIXED_STEP_SOLVERS and a.nfe_per_block is not None:
        raise ValueError(f"--nfe-per-block applies to euler and heun, not {a.solver!r}")
    info = dataset_info(specs[0]["dataset"])
    if info.num_classes and a.metrics_out:
        raise ValueError("image sample sets are evaluated by gmflow-bench images evaluate, not --metrics-out")
    labels = info.labels(a.num_samples)
    x, rec = generate_chain([n for n, _ in loaded], a.solver, nfe, a.num_samples, a.seed, a.block_size, a.rtol,
                            a.atol, progress=not a.quiet, sample_shape=tuple(specs[0]["sample_shape"]),
                            labels=labels)
    rec = table_record(specs, rec, a.run)
    teachers = a.teacher_blocks or (a.blocks if a.solver != "distilled" else None)
    if a.teacher_blocks:
        tspecs = [read_block_spec(d) for d in a.teacher_blocks]
        check_chain(tspecs)
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
    io.save_npz(out, **info.sample_arrays(x, labels), record=json.dumps(rec))
    io.write_json(io.provenance(_args(a), kind="lfm-sample", **rec), out.with_suffix(".json"))
    if a.metrics_out:  # evaluate in the same process, as the other 2D samplers
        from gmflow.harness.metrics2d import metric_rows_2d

        io.save_csv(metric_rows_2d(x, rec, np.load(a.reference)["samples"], a.knn_points), a.metrics_out)


# ---------------------------------------------------------------------------------------------------------------------
# lfm-nll
# ---------------------------------------------------------------------------------------------------------------------


def cmd_nll(a) -> None:
    from gmflow.harness.data2d import get_dataset_2d
    from gmflow.harness.runs import load_run

    torch.set_num_threads(a.threads)
    if a.flow_run:  # a flow-matching run is one free block with the linear interpolant (local time = sigma)
        if a.run is not None:
            raise ValueError(f"--run {a.run} names a chain of --blocks; a --flow-run is named by its folder: drop it")
        net, _, spec = load_run(a.flow_run)
        if spec["method"] != "fm":
            raise ValueError(f"{a.flow_run} is a {spec['method']!r} run; --flow-run takes a flow-matching run")
        chain, dataset = [net.requires_grad_(False)], spec["dataset"]
        rec = {"dataset": dataset, "run": Path(a.flow_run).name, "method": "fm", "K": 0, "guidance": "none",
               "guidance_scale": 0.0, "orthogonal": 0.0, "substeps": 1, "train_steps": spec["train"]["steps"]}
    else:
        loaded = [load_block(d) for d in a.blocks]
        specs = [s for _, s in loaded]
        check_chain(specs)
        chain, dataset = [n for n, _ in loaded], specs[0]["dataset"]
        rec = table_record(specs, {}, a.run or RUN)
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
    from gmflow.experiments.lfm.blocks import StudentTrainConfig, train_student

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
    net = build_block_net(spec)
    # warm start from the group's last (noisiest) block: a one-block student starts as one Euler step of its teacher
    net.load_state_dict(teachers[-1][0].state_dict())
    cfg = StudentTrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup_steps=a.warmup_steps,
                             seed=a.seed)
    record = train_student(net, x_noisy, x_data, first, cfg, a.out, progress=not a.quiet, labels=labels)
    keep = (*NETWORK_KEYS, "dataset", "num_blocks", "interpolant")
    out = {**{k: spec[k] for k in keep if k in spec}, "block": first, "last_block": last,
           "h": [s["h"] for s in specs], "method": METHOD, "kind": "student",
           "teacher_steps": int(sum(s["steps"] for s in specs)),
           "teacher_train_seconds": round(float(sum(s["train_seconds"] for s in specs)), 2), **record}
    io.write_json(out, Path(a.out) / "run.json")
    io.write_json(io.provenance(_args(a), kind="lfm-distill", **record), Path(a.out) / "provenance.json")
