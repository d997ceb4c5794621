"""``gmflow-bench images ...``: the stages of the image experiment (class-conditional, or unconditional CIFAR-10).

Example (the digits with GMFlow, K = 4, a classifier for features, then GM-ODE 2 at NFE 4 with guidance)::

    gmflow-bench images train --dataset digits --network dit-digits-tiny --method gmflow -K 4 --steps 600 \\
        --spectral --out runs/gm-k4
    gmflow-bench images train-classifier --dataset digits --out runs/classifier.safetensors
    gmflow-bench images reference-features --dataset digits --extractor classifier-digits \\
        --classifier runs/classifier.safetensors --out runs/reference_classifier.npz
    gmflow-bench images sample --run-dir runs/gm-k4 --solver gm-ode-2 --nfe 4 --guidance probabilistic \\
        --guidance-scale 0.3 --num-samples 1000 --out runs/gm-k4/samples/s.npz
    gmflow-bench images evaluate --samples runs/gm-k4/samples/s.npz --reference runs/reference_classifier.npz \\
        --extractor classifier-digits --classifier runs/classifier.safetensors --features-out f.npz --out m.csv

ImageNet 256 in the SD-VAE latent space (docs/imagenet.md): encode once, train on the cache, decode when sampling::

    gmflow-bench images encode-latents --image-root imagenet/train --vae sd-vae-ft-ema --out cache/imagenet256
    gmflow-bench images train --dataset imagenet256 --network dit-xl-2 --method gmflow -K 8 \\
        --data-root cache/imagenet256 --out runs/gm-k8
    gmflow-bench images sample --run-dir runs/gm-k8 --solver gm-ode-2 --nfe 8 --vae sd-vae-ft-ema --out s.npz
    gmflow-bench images reference-batch --image-root imagenet/train --num-images 10000 --out ref_batch.npz
    gmflow-bench images reference-features --dataset imagenet256 --reference-batch ref_batch.npz \\
        --extractor inception-tf --out ref_inception.npz
Unconditional CIFAR-10 (the paper's Table 5; docs/cifar10.md) takes the same stages with ``--dataset cifar10
--network unet-cifar10 --data-root DIR`` and ``--extractor inception-tf`` (reference ``--split train``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch

from gmflow.harness import io, registry
from gmflow.harness.argtypes import (
    add_dit_shape_args,
    add_sampling_args,
    add_training_args,
    args_record,
    dit_shape_overrides,
    nonneg_int,
    positive_int,
    ranged,
    train_config,
)
from gmflow.harness.devices import check_device_name, launch
from gmflow.harness.tables import COLUMNS_IMAGES


def cmd_train(a) -> None:
    from gmflow.experiments.images.stages import train_images
    from gmflow.harness.runs import network_spec

    torch.set_num_threads(a.threads)
    cfg = train_config(a, spectral_weight=a.spectral_weight, snapshot_steps=tuple(a.snapshot_steps),
                       label_dropout=a.label_dropout)
    dit = dit_shape_overrides(a)
    spec = network_spec(a.dataset, a.network, a.method, a.num_components, spectral=a.spectral, dit=dit,
                        data_root=a.data_root)
    io.check_output_path(Path(a.out) / "run.json")
    device, group = launch(a.device)
    record = train_images(spec, cfg, a.out, a.data_root, progress=not a.quiet, device=device, group=group,
                          grad_checkpointing=a.grad_checkpointing)
    if group.is_main:
        io.write_json({**spec, **record}, Path(a.out) / "run.json")
        io.write_json(io.provenance(args_record(a), kind="train", **record), Path(a.out) / "provenance.json")


def cmd_snapshot_run(a) -> None:
    from gmflow.experiments.images.stages import make_snapshot_run

    spec = make_snapshot_run(a.run_dir, a.step, a.out)
    print(f"{a.out}: {spec['snapshot_of']} at step {a.step} ({spec['train_seconds']} s of training)")


def cmd_sample(a) -> None:
    from gmflow.experiments.images.stages import sample_images

    torch.set_num_threads(a.threads)
    if a.guidance == "none" and a.guidance_scale != 0:
        raise ValueError(f"--guidance-scale {a.guidance_scale} needs --guidance cfg or probabilistic")
    if a.guidance == "probabilistic" and not 0 <= a.guidance_scale < 1:
        raise ValueError(f"probabilistic guidance scale w-tilde must be in [0, 1), got {a.guidance_scale}")
    if a.guidance == "cfg" and not 1 <= a.guidance_scale < math.inf:
        raise ValueError(f"CFG scale w must be a finite number >= 1 (1 = no guidance), got {a.guidance_scale}")
    if not 0 <= a.orthogonal <= 1:
        raise ValueError(f"--orthogonal must be in [0, 1] (0 = no projection, 1 = full), got {a.orthogonal}")
    io.check_output_path(a.out)  # refuse an unwritable place before sampling, not after
    device, group = launch(a.device)
    out, rec = sample_images(a.run_dir, a.solver, a.nfe, a.num_samples, a.seed, a.block_size, a.substeps,
                             a.guidance, a.guidance_scale, a.orthogonal, a.spectral, progress=not a.quiet,
                             device=device, precision=a.precision, group=group, vae=a.vae, vae_device=a.vae_device)
    if not group.is_main:
        return
    io.save_npz(Path(a.out), **out, record=json.dumps(rec))
    io.write_json(io.provenance(args_record(a), kind="sample", **rec), Path(a.out).with_suffix(".json"))


def cmd_train_classifier(a) -> None:
    from gmflow.harness.classifier import save_classifier, train_classifier
    from gmflow.harness.data_images import load_images_uint8

    torch.set_num_threads(a.threads)
    x, y = load_images_uint8(a.dataset, "train", a.data_root)
    xt, yt = load_images_uint8(a.dataset, "test", a.data_root)
    model, acc = train_classifier(x, y, xt, yt, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                  log=print)
    save_classifier(model, a.out, dataset=a.dataset, test_accuracy=f"{acc:.4f}")
    io.write_json(io.provenance(args_record(a), kind="classifier", test_accuracy=acc),
                  Path(a.out).with_suffix(".json"))
    print(f"test accuracy {acc:.4f}")


def cmd_encode_latents(a) -> None:
    from gmflow.experiments.images.stages import encode_latents

    torch.set_num_threads(a.threads)
    index = encode_latents(a.image_root, a.vae, a.out, resolution=a.resolution, batch_size=a.batch_size,
                           shard_size=a.shard_size, device=a.device, dtype=a.dtype, seed=a.seed,
                           variant=a.vae_variant, progress=not a.quiet)
    index.pop("class_names")
    io.write_json(io.provenance(args_record(a), kind="encode-latents", **index), Path(a.out) / "provenance.json")
    print(f"{a.out}: {index['count']} latents {index['latent_shape']} {index['dtype']}, {index['num_classes']} classes")


def cmd_reference_batch(a) -> None:
    from gmflow.experiments.images.stages import make_reference_batch

    rec = make_reference_batch(a.image_root, a.resolution, a.num_images, a.out)
    io.write_json(io.provenance(args_record(a), kind="reference-batch", **rec), Path(a.out).with_suffix(".json"))


def cmd_reference_features(a) -> None:
    from gmflow.experiments.images.stages import reference_batch_features, reference_features

    torch.set_num_threads(a.threads)
    if a.reference_batch is not None:
        rec = reference_batch_features(a.reference_batch, a.extractor, a.out, a.num_images)
    elif a.dataset in registry.LATENT_DATASETS:
        raise ValueError(f"{a.dataset} has no built-in reference set: pass --reference-batch (an ADM reference batch, "
                         "or one made by `gmflow-bench images reference-batch`)")
    else:
        rec = reference_features(a.dataset, a.extractor, a.out, a.num_images, a.classifier, a.split, a.data_root)
    io.write_json(io.provenance(args_record(a), kind="reference-features", **rec), Path(a.out).with_suffix(".json"))


def cmd_synthetic_cifar10(a) -> None:
    from gmflow.harness.data_images import write_synthetic_cifar10

    folder = write_synthetic_cifar10(a.out, a.num_train, a.num_test, a.seed)
    print(f"{folder}: {a.num_train} training and {a.num_test} test images (synthetic, CIFAR-10 binary layout)")


def cmd_evaluate(a) -> None:
    from gmflow.experiments.images.stages import evaluate_images

    torch.set_num_threads(a.threads)
    df = evaluate_images(a.samples, a.reference, a.extractor, a.classifier, a.features_out, a.kid_subset_size,
                         a.bootstrap)
    io.save_csv(df, a.out)


def cmd_evaluate_adm(a) -> None:
    from gmflow.experiments.images.adm import evaluate_adm

    torch.set_num_threads(a.threads)
    rec = evaluate_adm(a.samples, a.reference, batch_size=a.batch_size, device=a.device,
                       sample_features=a.sample_features, reference_features=a.reference_features,
                       softmax_weight=a.softmax_weight, distance_dtype=a.distance_dtype, log=None if a.quiet else print)
    io.write_json(io.provenance(args_record(a), kind="evaluate-adm", **rec), a.out)
    if not a.quiet:
        print(", ".join(f"{k} {rec[k]:.4f}" for k in ("fid", "sfid", "inception_score", "precision", "recall",
                                                       "saturation_diff") if rec[k] is not None))


def cmd_nll(a) -> None:
    from gmflow.experiments.images.stages import heldout_nll
    from gmflow.harness.runs import read_spec

    torch.set_num_threads(a.threads)
    rec = heldout_nll(a.run_dir, a.num_images, a.times_per_image, a.seed, a.data_root)
    spec = read_spec(a.run_dir)
    row = {"dataset": spec["dataset"], "run": Path(a.run_dir).name, "method": spec["method"],
           "K": spec["num_components"], "trans_ratio": spec["train"]["trans_ratio"], "solver": "", "guidance": "none",
           "guidance_scale": 0.0, "orthogonal": 0.0, "spectral": 0, "nfe": 1, "nfe_budget": 1, "substeps": 0,
           "seed": a.seed, "num_samples": rec["num_images"] * rec["times_per_image"], "metric": "nll_bits_per_dim",
           "value": rec["nll_bits_per_dim"], "feature_extractor": "none", "train_steps": spec["train"]["steps"],
           "sample_set": ""}
    io.save_csv(pd.DataFrame([row], columns=COLUMNS_IMAGES), a.out)


def add_parsers(sub, fmt) -> None:
    """The ``images`` group of sub-commands."""
    group = sub.add_parser("images", help="the image experiment: train, sample, features, metrics, NLL",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = group.add_subparsers(dest="stage", required=True)
    extractors = [e for e in registry.FEATURE_EXTRACTORS if e != "coords"]

    s = cmds.add_parser("encode-latents", formatter_class=fmt,
                        help="encode an ImageFolder with a VAE into a latent cache (latent datasets); resumable",
                        description="Example: gmflow-bench images encode-latents --image-root imagenet/train "
                                    "--vae sd-vae-ft-ema --out cache/imagenet256 --device auto")
    s.add_argument("--image-root", required=True, help="ImageFolder root: one sub-folder per class (sorted = labels)")
    s.add_argument("--vae", required=True, help="AutoencoderKL folder, or a hub id already in the local HF cache")
    s.add_argument("--vae-variant", choices=("ema", "mse", "other"), default=None,
                   help="VAE variant to record (default: read from the id, e.g. sd-vae-ft-ema -> ema)")
    s.add_argument("--out", required=True, help="cache folder (shards + index.json)")
    s.add_argument("--resolution", type=positive_int, default=256, help="ADM centre-crop size in pixels")
    s.add_argument("--batch-size", type=positive_int, default=32, help="images per VAE call (does not change latents)")
    s.add_argument("--shard-size", type=positive_int, default=10000, help="images per shard (unit of resuming)")
    s.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage dtype of the latents")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    s.add_argument("--seed", type=nonneg_int, default=0, help="seed of the flips and posterior samples")
    s.add_argument("--threads", type=positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_encode_latents)

    s = cmds.add_parser("reference-batch", formatter_class=fmt,
                        help="ADM-style reference batch npz (arr_0 uint8 NHWC centre crops) of an ImageFolder")
    s.add_argument("--image-root", required=True, help="ImageFolder root: one sub-folder per class")
    s.add_argument("--resolution", type=positive_int, default=256)
    s.add_argument("--num-images", type=positive_int, default=None, help="class-balanced prefix; default all")
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_reference_batch)

    s = cmds.add_parser("train", help="train GMFlow or flow matching on an image dataset", formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.CLASS_IMAGE_DATASETS, required=True)
    s.add_argument("--network", choices=registry.IMAGE_NETWORKS, required=True)
    add_dit_shape_args(s)
    s.add_argument("--label-dropout", type=ranged("label_dropout"), default=0.1,
                   help="probability of the null class (unconditional datasets such as cifar10 have none)")
    s.add_argument("--spectral", action="store_true", help="also train the SpectrumMLP (GMFlow)")
    s.add_argument("--spectral-weight", type=ranged("spectral_weight"), default=1.0)
    s.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each DiT block in the backward pass (less activation memory, about 30%% slower)")
    s.add_argument("--data-root", default=None, help="folder of the dataset's files (default: its standard place)")
    s.add_argument("--snapshot-steps", type=positive_int, nargs="*", default=[],
                   help="also keep the EMA weights at these steps (snapshots/step{k}/): quality vs training time")
    add_training_args(s, steps=3000, batch_size=128, lr=2e-4, warmup_steps=200, checkpoint_every=500)
    s.set_defaults(func=cmd_train)

    s = cmds.add_parser("snapshot-run", formatter_class=fmt,
                        help="make a run folder of a training snapshot (train --snapshot-steps) to sample it")
    s.add_argument("--run-dir", required=True, help="the trained image run")
    s.add_argument("--step", type=positive_int, required=True, help="a step of its --snapshot-steps")
    s.add_argument("--out", required=True, help="the snapshot's run folder (usually {run-dir}-at{step})")
    s.set_defaults(func=cmd_snapshot_run)

    s = cmds.add_parser("sample", help="draw a class-balanced sample set with one solver", formatter_class=fmt)
    add_sampling_args(s, num_samples=1000, block_size=500)
    s.add_argument("--guidance", choices=registry.GUIDANCE, default="none")
    s.add_argument("--guidance-scale", type=float, default=0.0, help="CFG w, or probabilistic w-tilde in [0, 1)")
    s.add_argument("--orthogonal", type=float, default=1.0, help="orthogonal projection factor (0 = off)")
    s.add_argument("--spectral", action="store_true", help="spectral sampling of x0 in GM-SDE")
    s.add_argument("--vae", default=None, help="latent datasets: the VAE that decodes the samples (that of the cache)")
    s.add_argument("--vae-device", default="auto", help="device of the VAE decoder: auto, cpu, cuda[:N], mps")
    s.set_defaults(func=cmd_sample)

    s = cmds.add_parser("train-classifier", help="train the in-domain feature classifier", formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.IMAGE_DATASETS, required=True)
    s.add_argument("--epochs", type=positive_int, default=3)
    s.add_argument("--batch-size", type=positive_int, default=128)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--data-root", default=None)
    s.add_argument("--threads", type=positive_int, default=1)
    s.add_argument("--out", required=True, help="output .safetensors")
    s.set_defaults(func=cmd_train_classifier)

    s = cmds.add_parser("reference-features", help="features and FID statistics of a real reference set",
                        formatter_class=fmt)
    s.add_argument("--dataset", choices=registry.CLASS_IMAGE_DATASETS, required=True)
    s.add_argument("--reference-batch", default=None,
                   help="npz with arr_0 uint8 (N, H, W, 3) real images (ADM's format), instead of the dataset's split")
    s.add_argument("--extractor", choices=extractors, required=True)
    s.add_argument("--classifier", default=None, help="classifier weights (for classifier-* extractors)")
    s.add_argument("--split", choices=("train", "test"), default="test")
    s.add_argument("--num-images", type=positive_int, default=None, help="class-balanced prefix; default all")
    s.add_argument("--data-root", default=None)
    s.add_argument("--threads", type=positive_int, default=1)
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cmd_reference_features)

    s = cmds.add_parser("synthetic-cifar10", formatter_class=fmt,
                        help="write a synthetic stand-in for CIFAR-10 in its binary layout (tests, CPU smoke run)",
                        epilog="example: gmflow-bench images synthetic-cifar10 --out /tmp/cifar-synthetic "
                               "(then --data-root /tmp/cifar-synthetic)")
    s.add_argument("--out", required=True, help="folder; the files go to its cifar-10-batches-bin/")
    s.add_argument("--num-train", type=positive_int, default=500, help="training images (over the 5 batch files)")
    s.add_argument("--num-test", type=positive_int, default=100, help="test images")
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.set_defaults(func=cmd_synthetic_cifar10)

    s = cmds.add_parser("evaluate", help="features and metrics of an image sample set", formatter_class=fmt)
    s.add_argument("--samples", required=True)
    s.add_argument("--reference", required=True, help="reference-features output of the same extractor")
    s.add_argument("--extractor", choices=extractors, required=True)
    s.add_argument("--classifier", default=None)
    s.add_argument("--kid-subset-size", type=positive_int, default=1000)
    s.add_argument("--bootstrap", type=nonneg_int, default=200,
                   help="bootstrap replicates of the 95%% intervals (columns ci_low, ci_high); 0 = none")
    s.add_argument("--threads", type=positive_int, default=1)
    s.add_argument("--features-out", required=True, help="output .npz of the sample set's features")
    s.add_argument("--out", required=True, help="output long-format .csv")
    s.set_defaults(func=cmd_evaluate)

    s = cmds.add_parser(
        "evaluate-adm", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="FID, sFID, IS, precision, recall and saturation of an ADM-layout sample batch (docs/evaluation.md)",
        description="The ADM evaluator's protocol (the paper's ImageNet-256 numbers) on TF-Inception features "
                    "computed once per batch and cached.\n\nExample:\n  gmflow-bench images evaluate-adm "
                    "--samples samples_50000x256x256x3.npz \\\n      --reference VIRTUAL_imagenet256_labeled.npz "
                    "--out metrics.json --device auto")
    s.add_argument("--samples", required=True, help="sample batch .npz: arr_0 uint8 (N, H, W, 3), arr_1 labels")
    s.add_argument("--reference", required=True, help="reference batch .npz: arr_0 and usually mu, sigma, mu_s, "
                   "sigma_s (e.g. VIRTUAL_imagenet256_labeled.npz)")
    s.add_argument("--out", required=True, help="output .json")
    s.add_argument("--batch-size", type=positive_int, default=64, help="images per Inception batch (default: 64)")
    s.add_argument("--device", type=check_device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps "
                   "(default: auto)")
    s.add_argument("--sample-features", default=None,
                   help="feature cache of the samples (default: SAMPLES.inception-tf-adm.npz beside them)")
    s.add_argument("--reference-features", default=None,
                   help="feature cache of the reference (default: REFERENCE.inception-tf-adm.npz beside it)")
    s.add_argument("--softmax-weight", default=None,
                   help="TF-Inception softmax weight for IS: torch-fidelity's weights-inception-2015-12-05-6726825d"
                        ".pth or a (2048, 1008) .npy (default: torch-fidelity's file in the torch hub cache, if any)")
    s.add_argument("--distance-dtype", choices=("adm-float16", "float64"), default="adm-float16",
                   help="precision / recall distances: the evaluator's float16, or exact float64")
    s.add_argument("--threads", type=positive_int, default=2)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_evaluate_adm)

    s = cmds.add_parser("nll", help="held-out velocity NLL in bits/dim of a GMFlow run", formatter_class=fmt)
    s.add_argument("--run-dir", required=True)
    s.add_argument("--num-images", type=positive_int, default=1000)
    s.add_argument("--times-per-image", type=positive_int, default=4)
    s.add_argument("--seed", type=nonneg_int, default=0)
    s.add_argument("--data-root", default=None)
    s.add_argument("--threads", type=positive_int, default=1)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_nll)
