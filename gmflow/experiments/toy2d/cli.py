"""``gmflow-bench 2d ...``: the stages of the 2D experiment.

Example (the checkerboard with GMFlow, K = 64, then GM-ODE 2 at 4 NFE; the second run is flow matching with coarser
position features, docs/method.md, Sec. 2.4)::

    gmflow-bench 2d prepare-data --dataset checkerboard --num-samples 50000 --out results/2d/checkerboard/reference.npz
    gmflow-bench 2d train --dataset checkerboard --method gmflow --num-components 64 --steps 6000 \\
        --out results/2d/checkerboard/gm-k64
    gmflow-bench 2d train --dataset checkerboard --method fm --min-period 0.1 --out results/2d/checkerboard/fm-mp0p1
    gmflow-bench 2d sample --run-dir results/2d/checkerboard/gm-k64 --solver gm-ode-2 --nfe 4 \\
        --out results/2d/checkerboard/gm-k64/samples/gm-ode-2_nfe4_gnone_seed0.npz
    gmflow-bench 2d evaluate --samples results/2d/checkerboard/gm-k64/samples/gm-ode-2_nfe4_gnone_seed0.npz \\
        --reference results/2d/checkerboard/reference.npz --out metrics.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gmflow.harness import io, registry
from gmflow.harness.argtypes import (
    add_sampling_args,
    add_training_args,
    args_record,
    nonneg_int,
    positive_int,
    ranged,
    train_config,
)
from gmflow.harness.mlp2d import MIN_PERIOD


def cmd_prepare_data(a) -> None:
    from gmflow.experiments.toy2d.stages import reference_sample

    out = Path(a.out)
    io.save_npz(out, samples=reference_sample(a.dataset, a.num_samples, a.seed))
    io.write_json(io.provenance(args_record(a), kind="reference"), out.with_suffix(".json"))


def cmd_train(a) -> None:
    from gmflow.experiments.toy2d.stages import train_2d
    from gmflow.harness.devices import launch
    from gmflow.harness.runs import network_spec

    torch.set_num_threads(a.threads)
    cfg = train_config(a)
    spec = network_spec(a.dataset, a.network, a.method, a.num_components, width=a.width, depth=a.depth,
                        min_period=a.min_period)
    io.check_output_path(Path(a.out) / "run.json")
    device, group = launch(a.device)
    record = train_2d(spec, cfg, a.out, progress=not a.quiet, device=device, group=group)
    if group.is_main:
        io.write_json({**spec, **record}, Path(a.out) / "run.json")
        io.write_json(io.provenance(args_record(a), kind="train", **record), Path(a.out) / "provenance.json")


def cmd_sample(a) -> None:
    from gmflow.experiments.toy2d.stages import sample_2d, save_samples
    from gmflow.harness.metrics2d import metric_rows_2d

    torch.set_num_threads(a.threads)
    if a.metrics_out and not a.reference:
        raise ValueError("--metrics-out needs --reference (the exact reference sample of the dataset)")
    for path in (a.out, a.metrics_out):  # refuse an unwritable place before sampling, not after
        if path:
            io.check_output_path(path)
    from gmflow.harness.devices import launch

    device, group = launch(a.device)
    x, rec = sample_2d(a.run_dir, a.solver, a.nfe, a.num_samples, a.seed, a.block_size, a.substeps,
                       progress=not a.quiet, device=device, precision=a.precision, group=group)
    if not group.is_main:
        return
    save_samples(a.out, x, rec, io.provenance(args_record(a), kind="sample", **rec))
    if a.metrics_out:  # evaluate in the same process (saves a job start per sample set)
        io.save_csv(metric_rows_2d(x, rec, np.load(a.reference)["samples"], a.knn_points), a.metrics_out)


def cmd_evaluate(a) -> None:
    from gmflow.experiments.toy2d.stages import reference_record
    from gmflow.harness.metrics2d import metric_rows_2d

    torch.set_num_threads(a.threads)
    data = io.load_npz(a.samples, ("samples",))
    ref = io.load_npz(a.reference, ("samples",))["samples"]
    if "record" in data:
        rec = json.loads(str(data["record"]))
    else:  # an exact sample of the data: the noise floor of every metric at this sample size
        rec = reference_record(a.dataset, len(data["samples"]), a.seed)
    if a.dataset and rec["dataset"] != a.dataset:
        raise ValueError(f"samples are from dataset {rec['dataset']!r} but --dataset is {a.dataset!r}")
    io.save_csv(metric_rows_2d(data["samples"], rec, ref, a.knn_points), a.out)


def add_parsers(sub, fmt) -> None:
    """The ``2d`` group of sub-commands."""
    group = sub.add_parser("2d", help="the 2D experiment: exact reference, train, sample, evaluate",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = group.add_subparsers(dest="stage", required=True)

    s = cmds.add_parser("prepare-data", help="draw the exact reference sample of a 2D dataset", formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.DATASETS_2D, required=True)
    s.add_argument("--num-samples", type=positive_int, default=50000)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_prepare_data)

    s = cmds.add_parser("train", help="train GMFlow or flow matching on a 2D dataset", formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.DATASETS_2D, required=True)
    s.add_argument("--network", choices=registry.NETWORKS_2D, default="mlp2d")
    s.add_argument("--width", type=positive_int, default=256, help="MLP width")
    s.add_argument("--depth", type=positive_int, default=3, help="MLP depth")
    s.add_argument("--min-period", type=ranged("min_period"), default=MIN_PERIOD,
                   help="finest period of the MLP's position features, in (0, 50) (the paper's 0.005; coarser = "
                   "smoother velocity fields)")
    add_training_args(s, steps=6000, batch_size=1024, lr=2e-4, warmup_steps=500, checkpoint_every=1000)
    s.set_defaults(func=cmd_train)

    s = cmds.add_parser("sample", help="draw a sample set from a trained 2D run with one solver", formatter_class=fmt)
    add_sampling_args(s, num_samples=50000, block_size=10000)
    s.add_argument("--reference", default=None, help="exact reference sample to evaluate against")
    s.add_argument("--metrics-out", default=None, help="also write the metrics (long-format .csv)")
    s.add_argument("--knn-points", type=positive_int, default=10000, help="points for k-NN precision/recall")
    s.set_defaults(func=cmd_sample)

    s = cmds.add_parser("evaluate", help="metrics of a 2D sample set against the exact density", formatter_class=fmt)
    s.add_argument("--samples", required=True)
    s.add_argument("--reference", required=True)
    s.add_argument("--dataset", choices=registry.DATASETS_2D, default=None)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--knn-points", type=positive_int, default=10000)
    s.add_argument("--threads", type=positive_int, default=1)
    s.add_argument("--out", required=True, help="output long-format .csv")
    s.set_defaults(func=cmd_evaluate)
