"""Command-line entry point, one sub-command per stage: prepare-data, train, sample, evaluate, report.

Example (the 2D checkerboard with GMFlow, K = 64, then GM-ODE 2 at 4 NFE)::

    gmflow-bench prepare-data --dataset checkerboard --num-samples 50000 --out results/2d/checkerboard/reference.npz
    gmflow-bench train --dataset checkerboard --method gmflow --num-components 64 --steps 6000 \\
        --out results/2d/checkerboard/gm-k64
    gmflow-bench sample --run-dir results/2d/checkerboard/gm-k64 --solver gm-ode-2 --nfe 4 \\
        --out results/2d/checkerboard/gm-k64/samples/gm-ode-2_nfe4_gnone_seed0.npz
    gmflow-bench evaluate --samples results/2d/checkerboard/gm-k64/samples/gm-ode-2_nfe4_gnone_seed0.npz \\
        --reference results/2d/checkerboard/reference.npz --out metrics.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gmflow.harness import io, registry
from gmflow.harness.argtypes import nonneg_int as _nonneg_int
from gmflow.harness.argtypes import positive_int as _positive_int
from gmflow.harness.lfm_cli import add_lfm_parsers

TABLE_COLUMNS = ["dataset", "run", "method", "K", "solver", "guidance", "guidance_scale", "orthogonal", "nfe",
                 "nfe_budget", "substeps", "seed", "num_samples", "metric", "value", "feature_extractor",
                 "train_steps"]




def _unit_float(s: str) -> float:
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {s}")
    return v


def _substeps(s: str) -> str | int:
    if s in registry.SUBSTEP_RULES:
        return s
    return _positive_int(s)


def _args(a: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(a).items() if k != "func"}


def _threads(n: int) -> None:
    torch.set_num_threads(n)


def cmd_prepare_data(a) -> None:
    from gmflow.harness.data2d import get_dataset_2d

    ds = get_dataset_2d(a.dataset)
    gen = torch.Generator().manual_seed(10_000 + a.seed)  # disjoint from training streams (seed < 10000)
    x = ds.sample(a.num_samples, gen).numpy()
    out = Path(a.out)
    io.save_npz(out, samples=x)
    io.write_json(io.provenance(_args(a), kind="reference"), out.with_suffix(".json"))


def _build_net(spec: dict) -> torch.nn.Module:
    from gmflow.harness.networks import MLP2D

    if spec["network"] != "mlp2d":
        raise ValueError(f"unknown network {spec['network']!r}; choose one of {registry.NETWORKS}")
    head = "gm" if spec["method"] == "gmflow" else "velocity"
    return MLP2D(head, spec["num_components"], spec["width"], spec["depth"])


def cmd_train(a) -> None:
    from gmflow.harness.data2d import get_dataset_2d
    from gmflow.harness.train import TrainConfig, train

    _threads(a.threads)
    cfg = TrainConfig(method=a.method, num_components=a.num_components, trans_ratio=a.trans_ratio,
                      weight_scale=a.weight_scale, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                      warmup_steps=a.warmup_steps, ema_gamma=a.ema_gamma, ema=a.ema, ema_kimg=a.ema_kimg,
                      ema_rampup=a.ema_rampup, time_sampler=a.time_sampler,
                      checkpoint_every=a.checkpoint_every, seed=a.seed, grad_clip=a.grad_clip,
                      weight_decay=a.weight_decay, spectral_weight=a.spectral_weight,
                      snapshot_steps=tuple(a.snapshot_steps))
    if a.dataset in registry.IMAGE_DATASETS:
        from gmflow.harness.images import image_spec, train_images

        if a.network not in registry.IMAGE_NETWORKS:
            raise ValueError(f"image dataset {a.dataset!r} needs a DiT network; choose from {registry.IMAGE_NETWORKS}")
        spec = image_spec(a.dataset, a.network, a.method, a.num_components, a.spectral, patch_size=a.patch_size,
                          depth=a.dit_depth, width=a.dit_width, num_heads=a.num_heads)
        cfg.label_dropout = a.label_dropout
        record = train_images(spec, cfg, a.out, a.data_root, progress=not a.quiet)
        io.write_json({**spec, **record}, Path(a.out) / "run.json")
        io.write_json(io.provenance(_args(a), kind="train", **record), Path(a.out) / "provenance.json")
        return
    if a.network not in registry.NETWORKS_2D:
        raise ValueError(f"2D dataset {a.dataset!r} needs network 'mlp2d', got {a.network!r}")
    if a.spectral:
        raise ValueError("--spectral applies to image datasets only")
    spec = {"network": a.network, "method": a.method, "num_components": a.num_components if a.method == "gmflow"
            else 0, "width": a.width, "depth": a.depth, "dataset": a.dataset, "sample_shape": [2]}
    torch.manual_seed(a.seed)
    net = _build_net(spec)
    ds = get_dataset_2d(a.dataset)
    torch.manual_seed(a.seed)
    record = train(net, cfg, lambda n, g: ds.sample(n, g), a.out, progress=not a.quiet)
    io.write_json({**spec, **record}, Path(a.out) / "run.json")
    io.write_json(io.provenance(_args(a), kind="train", **record), Path(a.out) / "provenance.json")


def cmd_snapshot_run(a) -> None:
    from gmflow.harness.images import make_snapshot_run

    spec = make_snapshot_run(a.run_dir, a.step, a.out)
    print(f"{a.out}: {spec['snapshot_of']} at step {a.step} ({spec['train_seconds']} s of training)")


def load_run(run_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists():
        raise FileNotFoundError(f"{run_dir} has no run.json: train the run first (gmflow-bench train ...)")
    spec = json.loads((run_dir / "run.json").read_text())
    net = _build_net(spec)
    net.load_state_dict(io.load_safetensors(run_dir / "ema.safetensors"))
    return net.eval(), spec


def _is_image_run(run_dir) -> bool:
    p = Path(run_dir) / "run.json"
    return p.exists() and json.loads(p.read_text())["dataset"] in registry.IMAGE_DATASETS


def cmd_sample(a) -> None:
    from gmflow.harness.sampling import generate

    _threads(a.threads)
    if a.guidance == "none" and a.guidance_scale != 0:
        raise ValueError(f"--guidance-scale {a.guidance_scale} needs --guidance cfg or probabilistic")
    if a.guidance == "probabilistic" and not 0 <= a.guidance_scale < 1:
        raise ValueError(f"probabilistic guidance scale w-tilde must be in [0, 1), got {a.guidance_scale}")
    if _is_image_run(a.run_dir):
        from gmflow.harness.images import sample_images

        out, rec = sample_images(a.run_dir, a.solver, a.nfe, a.num_samples, a.seed, a.block_size, a.substeps,
                                 a.guidance, a.guidance_scale, a.orthogonal, a.spectral, progress=not a.quiet)
        io.save_npz(Path(a.out), **out, record=json.dumps(rec))
        io.write_json(io.provenance(_args(a), kind="sample", **rec), Path(a.out).with_suffix(".json"))
        return
    if a.guidance != "none" or a.spectral:
        raise ValueError("the 2D runs are unconditional: guidance and spectral sampling apply to image runs")
    net, spec = load_run(a.run_dir)
    x, rec = generate(net, spec["method"], a.solver, a.nfe, a.num_samples, tuple(spec["sample_shape"]), a.seed,
                      a.block_size, a.substeps, progress=not a.quiet)
    rec.update(run=Path(a.run_dir).name, dataset=spec["dataset"], method=spec["method"],
               K=spec["num_components"], train_steps=spec["train"]["steps"])
    out = Path(a.out)
    io.save_npz(out, samples=x, record=json.dumps(rec))
    io.write_json(io.provenance(_args(a), kind="sample", **rec), out.with_suffix(".json"))
    if a.metrics_out:  # evaluate in the same process (saves a job start per sample set)
        if not a.reference:
            raise ValueError("--metrics-out needs --reference (the exact reference sample of the dataset)")
        io.save_csv(_metric_rows_2d(x, rec, np.load(a.reference)["samples"], a.knn_points), a.metrics_out)


def _metric_rows_2d(samples: np.ndarray, rec: dict, reference: np.ndarray, knn_points: int) -> pd.DataFrame:
    from gmflow.harness.evaluate2d import metrics_2d

    metrics = metrics_2d(rec["dataset"], samples, reference, knn_points, seed=rec["seed"])
    rows = [{**{k: rec.get(k) for k in TABLE_COLUMNS}, "metric": m, "value": v, "feature_extractor": "coords"}
            for m, v in metrics.items()]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def cmd_evaluate(a) -> None:
    _threads(a.threads)
    data = np.load(a.samples)
    ref = np.load(a.reference)["samples"]
    if "record" in data:
        rec = json.loads(str(data["record"]))
    else:  # an exact sample of the data: the noise floor of every metric at this sample size
        rec = {"dataset": a.dataset, "run": "reference", "method": "data", "K": 0, "solver": "exact",
               "nfe": 0, "nfe_budget": 0, "substeps": 0, "seed": a.seed, "num_samples": len(data["samples"]),
               "guidance": "none", "guidance_scale": 0.0, "orthogonal": 0.0, "train_steps": 0}
    if a.dataset and rec["dataset"] != a.dataset:
        raise ValueError(f"samples are from dataset {rec['dataset']!r} but --dataset is {a.dataset!r}")
    io.save_csv(_metric_rows_2d(data["samples"], rec, ref, a.knn_points), a.out)


def cmd_train_classifier(a) -> None:
    from gmflow.harness.data_images import load_images_uint8
    from gmflow.harness.features import save_classifier, train_classifier

    _threads(a.threads)
    x, y = load_images_uint8(a.dataset, "train", a.data_root)
    xt, yt = load_images_uint8(a.dataset, "test", a.data_root)
    model, acc = train_classifier(x, y, xt, yt, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                  log=print)
    save_classifier(model, a.out, dataset=a.dataset, test_accuracy=f"{acc:.4f}")
    io.write_json(io.provenance(_args(a), kind="classifier", test_accuracy=acc), Path(a.out).with_suffix(".json"))
    print(f"test accuracy {acc:.4f}")


def cmd_reference_features(a) -> None:
    from gmflow.harness.images import reference_features

    _threads(a.threads)
    rec = reference_features(a.dataset, a.extractor, a.out, a.num_images, a.classifier, a.split, a.data_root)
    io.write_json(io.provenance(_args(a), kind="reference-features", **rec), Path(a.out).with_suffix(".json"))


def cmd_evaluate_images(a) -> None:
    from gmflow.harness.images import evaluate_images

    _threads(a.threads)
    df = evaluate_images(a.samples, a.reference, a.extractor, a.classifier, a.features_out, a.kid_subset_size)
    io.save_csv(df, a.out)


def cmd_nll(a) -> None:
    from gmflow.harness.images import TABLE_COLUMNS, heldout_nll

    _threads(a.threads)
    rec = heldout_nll(a.run_dir, a.num_images, a.times_per_image, a.seed, a.data_root)
    spec = json.loads((Path(a.run_dir) / "run.json").read_text())
    row = {"dataset": spec["dataset"], "run": Path(a.run_dir).name, "method": spec["method"],
           "K": spec["num_components"], "trans_ratio": spec["train"]["trans_ratio"], "solver": "", "guidance": "none",
           "guidance_scale": 0.0, "orthogonal": 0.0, "spectral": 0, "nfe": 1, "nfe_budget": 1, "substeps": 0,
           "seed": a.seed, "num_samples": rec["num_images"] * rec["times_per_image"], "metric": "nll_bits_per_dim",
           "value": rec["nll_bits_per_dim"], "feature_extractor": "none", "train_steps": spec["train"]["steps"],
           "sample_set": ""}
    io.save_csv(pd.DataFrame([row], columns=TABLE_COLUMNS), a.out)


def cmd_report(a) -> None:
    frames = [pd.read_csv(p) for p in a.inputs]
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values([c for c in ["dataset", "method", "K", "solver", "guidance", "guidance_scale", "nfe_budget",
                                     "seed", "metric"] if c in df.columns], kind="stable")
    io.save_csv(df, a.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gmflow-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    s = sub.add_parser("prepare-data", help="draw the exact reference sample of a 2D dataset", formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.DATASETS_2D, required=True)
    s.add_argument("--num-samples", type=_positive_int, default=50000)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_prepare_data)

    s = sub.add_parser("train", help="train GMFlow or flow matching on a 2D or image dataset", formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.DATASETS, required=True)
    s.add_argument("--method", choices=registry.METHODS, required=True)
    s.add_argument("--network", choices=registry.NETWORKS, default="mlp2d")
    s.add_argument("--num-components", "-K", type=_positive_int, default=64, help="GM components (gmflow only)")
    s.add_argument("--trans-ratio", type=_unit_float, default=0.9, help="transition ratio lambda; 1 = plain NLL")
    s.add_argument("--weight-scale", type=float, default=1.0)
    s.add_argument("--width", type=_positive_int, default=256, help="MLP width (2D)")
    s.add_argument("--depth", type=_positive_int, default=3, help="MLP depth (2D)")
    s.add_argument("--patch-size", type=_positive_int, default=None, help="DiT patch size (default: the variant's)")
    s.add_argument("--dit-depth", type=_positive_int, default=None, help="DiT blocks (default: the variant's)")
    s.add_argument("--dit-width", type=_positive_int, default=None, help="DiT hidden size (default: the variant's)")
    s.add_argument("--num-heads", type=_positive_int, default=None, help="DiT heads (default: the variant's)")
    s.add_argument("--label-dropout", type=float, default=0.1, help="probability of the null class (images)")
    s.add_argument("--spectral", action="store_true", help="also train the SpectrumMLP (GMFlow on images)")
    s.add_argument("--spectral-weight", type=float, default=1.0)
    s.add_argument("--grad-clip", type=float, default=0.0, help="gradient-norm clip; 0 = off")
    s.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (none on biases and norms)")
    s.add_argument("--data-root", default=None, help="folder of the dataset's files (default: its standard place)")
    s.add_argument("--steps", type=_positive_int, default=6000)
    s.add_argument("--batch-size", type=_positive_int, default=1024)
    s.add_argument("--lr", type=float, default=2e-4)
    s.add_argument("--warmup-steps", type=_nonneg_int, default=500)
    s.add_argument("--ema", choices=("power", "rampup"), default="power",
                   help="EMA: 'power' (beta_n = (1 - 1/n)^(gamma+1)) or 'rampup' (the paper's ImageNet EMA)")
    s.add_argument("--ema-gamma", type=float, default=7.0, help="power EMA exponent gamma")
    s.add_argument("--ema-kimg", type=float, default=30000.0, help="ramp-up EMA half-life in thousands of images")
    s.add_argument("--ema-rampup", type=float, default=0.05,
                   help="ramp-up EMA: half-life at most this fraction of the images seen")
    s.add_argument("--time-sampler", choices=registry.TIME_SAMPLERS, default="uniform")
    s.add_argument("--checkpoint-every", type=_positive_int, default=1000)
    s.add_argument("--snapshot-steps", type=_positive_int, nargs="*", default=[],
                   help="also keep the EMA weights at these steps (snapshots/step{k}/): quality vs training time")
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="run folder")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("snapshot-run", formatter_class=fmt,
                       help="make a run folder of a training snapshot (train --snapshot-steps) to sample it like a run")
    s.add_argument("--run-dir", required=True, help="the trained image run")
    s.add_argument("--step", type=_positive_int, required=True, help="a step of its --snapshot-steps")
    s.add_argument("--out", required=True, help="the snapshot's run folder (usually {run-dir}-at{step})")
    s.set_defaults(func=cmd_snapshot_run)

    s = sub.add_parser("sample", help="draw a sample set from a trained run with one solver", formatter_class=fmt)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--solver", choices=sorted(registry.SOLVERS), required=True)
    s.add_argument("--nfe", type=_positive_int, required=True, help="network-evaluation budget")
    s.add_argument("--num-samples", type=_positive_int, default=50000)
    s.add_argument("--block-size", type=_positive_int, default=10000, help="samples per generator stream")
    s.add_argument("--substeps", type=_substeps, default=registry.DEFAULT_SUBSTEPS,
                   help=f"GM-ODE sub-steps: a rule ({', '.join(registry.SUBSTEP_RULES)}) or an integer")
    s.add_argument("--guidance", choices=registry.GUIDANCE, default="none")
    s.add_argument("--guidance-scale", type=float, default=0.0, help="CFG w, or probabilistic w-tilde in [0, 1)")
    s.add_argument("--orthogonal", type=float, default=1.0, help="orthogonal projection factor (0 = off)")
    s.add_argument("--spectral", action="store_true", help="spectral sampling of x0 in GM-SDE (image runs)")
    s.add_argument("--reference", default=None, help="2D: exact reference sample to evaluate against")
    s.add_argument("--metrics-out", default=None, help="2D: also write the metrics (long-format .csv)")
    s.add_argument("--knn-points", type=_positive_int, default=10000, help="2D: points for k-NN precision/recall")
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("evaluate", help="metrics of a 2D sample set against the exact density", formatter_class=fmt)
    s.add_argument("--samples", required=True)
    s.add_argument("--reference", required=True)
    s.add_argument("--dataset", choices=registry.DATASETS_2D, default=None)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--knn-points", type=_positive_int, default=10000)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--out", required=True, help="output long-format .csv")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("train-classifier", help="train the in-domain feature classifier on an image dataset",
                       formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.IMAGE_DATASETS, required=True)
    s.add_argument("--epochs", type=_positive_int, default=3)
    s.add_argument("--batch-size", type=_positive_int, default=128)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--data-root", default=None)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--out", required=True, help="output .safetensors")
    s.set_defaults(func=cmd_train_classifier)

    s = sub.add_parser("reference-features", help="features and FID statistics of a real reference set",
                       formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.IMAGE_DATASETS, required=True)
    s.add_argument("--extractor", choices=registry.FEATURE_EXTRACTORS[1:], required=True)
    s.add_argument("--classifier", default=None, help="classifier weights (for classifier-* extractors)")
    s.add_argument("--split", choices=("train", "test"), default="test")
    s.add_argument("--num-images", type=_positive_int, default=None, help="class-balanced prefix; default all")
    s.add_argument("--data-root", default=None)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_reference_features)

    s = sub.add_parser("evaluate-images", help="features and metrics of an image sample set", formatter_class=fmt)
    s.add_argument("--samples", required=True)
    s.add_argument("--reference", required=True, help="reference-features output of the same extractor")
    s.add_argument("--extractor", choices=registry.FEATURE_EXTRACTORS[1:], required=True)
    s.add_argument("--classifier", default=None)
    s.add_argument("--kid-subset-size", type=_positive_int, default=1000)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--features-out", required=True, help="output .npz of the sample set's features")
    s.add_argument("--out", required=True, help="output long-format .csv")
    s.set_defaults(func=cmd_evaluate_images)

    s = sub.add_parser("nll", help="held-out velocity NLL in bits/dim of a GMFlow image run", formatter_class=fmt)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--num-images", type=_positive_int, default=1000)
    s.add_argument("--times-per-image", type=_positive_int, default=4)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--data-root", default=None)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_nll)

    add_lfm_parsers(sub, fmt)

    s = sub.add_parser("report", help="concatenate long-format metric files into one table", formatter_class=fmt)
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"gmflow-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
