"""The image experiment's stages as functions: train a run on an image dataset, draw class-conditional (or, for an
unconditional dataset, unlabelled) sample sets, compute features and metrics against a real reference set, and the
held-out NLL.

The CLI (``gmflow-bench images ...``) calls these; they read and write only the paths they are given.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gmflow.harness import io, registry
from gmflow.harness.data_images import load_images, load_images_uint8, stratified_order
from gmflow.harness.datasets import dataset_info
from gmflow.harness.metrics_images import (
    feature_set,
    image_metrics_with_intervals,
    load_feature_set,
    reference_statistics,
    save_feature_set,
)
from gmflow.harness.runs import build_network, load_run
from gmflow.harness.tables import COLUMNS_IMAGES, metric_rows
from gmflow.loss import velocity_nll
from gmflow.schedule import add_noise, sigma_to_timestep


def train_images(spec: dict, cfg, out_dir: str | Path, data_root: str | None = None, progress: bool = True,
                 device="cpu", group=None, grad_checkpointing: bool = False) -> dict:
    """Train the run's network on the dataset's training split, class-conditional with label dropout, or
    unconditional for a dataset without classes (``spec["num_classes"]`` 0: labels unused, no label dropout).
    Datasets registered with ``hflip`` mirror each training image with probability 1/2. ``device`` and the torchrun
    ``group``: :func:`gmflow.harness.train.train`; ``grad_checkpointing`` recomputes each DiT block in the backward
    pass, the same gradients with less memory.

    A latent dataset (imagenet256) trains on its latent cache at ``data_root`` exactly as a pixel dataset on its
    images: the cache is read into memory once in its stored dtype (ImageNet 256: 10.5 GB of float16, see
    :func:`gmflow.harness.data_latents.load_latent_cache`) and each batch is converted to float32. The horizontal
    flip was drawn when the cache was made, as in the paper's code, so batches are not flipped here.
    """
    from gmflow.harness.data_images import IMAGE_DATASETS
    from gmflow.harness.datasets import training_arrays
    from gmflow.harness.devices import Distributed
    from gmflow.harness.losses import make_loss
    from gmflow.harness.train import train

    x, y = training_arrays(spec["dataset"], data_root)
    registered = IMAGE_DATASETS.get(spec["dataset"])
    conditional, hflip = spec["num_classes"] > 0, bool(getattr(registered, "hflip", False))
    torch.manual_seed(cfg.seed)
    net, spectrum = build_network(spec)
    net.grad_checkpointing = grad_checkpointing
    if conditional:
        cfg.null_label = net.null_label
    else:
        cfg.label_dropout, cfg.null_label = 0.0, -1  # nothing to drop: the run never sees a label

    def sample_batch(n: int, gen: torch.Generator):
        idx = torch.randint(len(x), (n,), generator=gen)
        x0 = x[idx].float()  # (n, C, H, W); latent caches are stored in float16
        if hflip:
            flip = torch.rand(n, generator=gen) < 0.5  # (n,)
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        return (x0, y[idx]) if conditional else x0

    run_spec = {**spec, "data_root": None if data_root is None else str(Path(data_root).resolve())}
    return train(net, cfg, sample_batch, out_dir, make_loss(cfg, spectrum), progress=progress, spectrum_net=spectrum,
                 run_spec=run_spec, device=device, group=group or Distributed())


def make_snapshot_run(run_dir: str | Path, step: int, out: str | Path) -> dict:
    """Make ``out`` a run folder of run ``run_dir``'s EMA snapshot at training step ``step``.

    The run.json is the run's with ``train.steps = step`` and ``train_seconds`` the seconds to that step, plus
    ``snapshot_of`` and ``snapshot_step``; sampling, evaluation and tables then treat it as a ``step``-step run.
    """
    import shutil

    from safetensors import safe_open

    run_dir, out = Path(run_dir), Path(out)
    snap = run_dir / "snapshots" / f"step{step}"
    if not (snap / "ema.safetensors").exists():
        raise FileNotFoundError(f"{run_dir} kept no snapshot at step {step} ({snap} is missing): retrain it with "
                                f"--snapshot-steps {step} (config images.train.snapshot_steps)")
    spec = json.loads((run_dir / "run.json").read_text())
    with safe_open(str(snap / "ema.safetensors"), "pt") as f:
        meta = f.metadata()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("ema.safetensors", "spectrum_ema.safetensors"):
        if (snap / name).exists():
            shutil.copyfile(snap / name, out / name)
    seconds = float(meta["train_seconds"])
    spec.update(train={**spec["train"], "steps": int(meta["steps"])}, train_seconds=seconds,
                seconds_per_step=round(seconds / step, 5), snapshot_of=run_dir.name, snapshot_step=step)
    io.write_json(spec, out / "run.json")
    return spec


def sample_images(run_dir, solver: str, nfe: int, num_samples: int, seed: int = 0, block_size: int = 500,
                  substeps: str | int = registry.DEFAULT_SUBSTEPS, guidance: str = "none", scale: float = 0.0,
                  orthogonal: float = 1.0, spectral: bool = False, progress: bool = True, device="cpu",
                  precision: str = "fp32", group=None, vae: str | None = None,
                  vae_device: str = "auto") -> tuple[dict, dict]:
    """A class-balanced sample set: ``{"images": uint8 (N, C, H, W), "labels": (N,)}`` and its record (no labels
    for an unconditional run).

    Latent datasets decode the sampled latents with ``vae`` (on ``vae_device``) in this same stage, so every sample
    set on disk is images and one evaluation path serves every dataset; the record names the VAE.
    """
    from gmflow.harness.sampling import generate

    net, spectrum, spec = load_run(run_dir)
    if spectral and spectrum is None:
        raise ValueError(f"{run_dir} was trained without a SpectrumMLP; train it with --spectral to sample spectrally")
    latent = {"latents": spec["latents"], "vae": vae, "vae_device": vae_device} if "latents" in spec else {}
    if vae is not None and not latent:
        raise ValueError(f"--vae applies to runs of latent datasets; {run_dir} was trained on {spec['dataset']}")
    info = dataset_info(spec["dataset"], **latent)
    labels = info.labels(num_samples)
    x, rec = generate(net, spec["method"], solver, nfe, num_samples, tuple(spec["sample_shape"]), seed, block_size,
                      substeps, guidance, scale, orthogonal, labels, net.null_label, progress,
                      spectrum if spectral else None, device=device, precision=precision, group=group)
    rec.update(run=Path(run_dir).name, dataset=spec["dataset"], method=spec["method"], K=spec["num_components"],
               train_steps=spec["train"]["steps"], trans_ratio=spec["train"]["trans_ratio"],
               train_seconds=spec.get("train_seconds"), **info.sample_record())
    out = info.sample_arrays(x, labels)
    return out, rec


def real_images(dataset: str, split: str, num: int | None, data_root: str | None = None) -> torch.Tensor:
    """The first ``num`` images of a split in a fixed class-stratified order (all of them when ``num`` is None)."""
    return real_images_and_labels(dataset, split, num, data_root)[0]


def real_images_and_labels(dataset: str, split: str, num: int | None,
                           data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``real_images`` and their classes (N,)."""
    images, labels = load_images_uint8(dataset, split, data_root)
    if num is not None and num < len(images):
        keep = stratified_order(labels)[:num]
        images, labels = images[keep], labels[keep]
    return images, labels


def get_extractor(name: str, classifier: str | None):
    from gmflow.harness.features import INCEPTION_TF, get_feature_extractor

    return get_feature_extractor(name, None if name == INCEPTION_TF else classifier)


def reference_features(dataset: str, extractor: str, out: str | Path, num: int | None, classifier: str | None,
                       split: str = "test", data_root: str | None = None) -> dict:
    """Features and FID statistics of the real reference set, computed once per dataset and extractor; with a
    classifier also its predicted classes and the true labels (the real-data floor of the class consistency)."""
    images, labels = real_images_and_labels(dataset, split, num, data_root)
    fs = reference_statistics(feature_set(images, get_extractor(extractor, classifier), labels))
    save_feature_set(out, fs, extractor)
    return {"num_real": len(images), "split": split}


def encode_latents(image_root: str | Path, vae: str, out: str | Path, **options) -> dict:
    """The latent cache of an ImageFolder (see :func:`gmflow.harness.data_latents.encode_image_folder`)."""
    from gmflow.harness.data_latents import encode_image_folder

    return encode_image_folder(image_root, vae, out, **options)


def make_reference_batch(image_root: str | Path, resolution: int, num_images: int | None, out: str | Path) -> dict:
    """A reference batch the ADM way: ``arr_0`` uint8 (N, R, R, 3) ADM centre crops of a class-balanced prefix of an
    ImageFolder (and ``labels``), saved as npz."""
    from gmflow.harness.data_latents import reference_batch, scan_image_folder

    folder = scan_image_folder(image_root)
    images, labels = reference_batch(folder, resolution, num_images)
    io.save_npz(Path(out), arr_0=images, labels=labels)
    return {"num_images": len(images), "resolution": resolution, "num_classes": len(folder.class_names),
            "image_root": str(folder.root.resolve())}


def reference_batch_features(batch: str | Path, extractor: str, out: str | Path, num: int | None = None) -> dict:
    """Features and FID statistics of a reference batch npz (``arr_0`` uint8 NHWC, ADM's format: the batches ADM
    publishes, or :func:`make_reference_batch`'s), the first ``num`` images (all when None)."""
    with np.load(batch) as f:
        if "arr_0" not in f.files:
            raise ValueError(f"{batch} has no arr_0 (arrays: {f.files}); a reference batch holds uint8 NHWC images "
                             "as arr_0")
        images = f["arr_0"][:num]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{batch}: arr_0 is {images.dtype} {images.shape}; expected uint8 (N, H, W, 3)")
    fs = reference_statistics(feature_set(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                                          get_extractor(extractor, None)))
    save_feature_set(out, fs, extractor)
    return {"num_real": len(images), "reference_batch": str(batch)}


def evaluate_images(samples: str | Path, reference: str | Path, extractor: str, classifier: str | None,
                    features_out: str | Path, kid_subset_size: int = 1000,
                    num_resamples: int = 200) -> pd.DataFrame:
    """Stage 1 (features of the sample set, saved, with the predicted classes and the conditioning labels for a
    classifier) and stage 2 (metrics and their 95% intervals from ``num_resamples`` bootstrap replicates, 0 = none;
    :func:`gmflow.harness.metrics_images.image_metrics_with_intervals`): one long-format row per metric."""
    data = io.load_npz(samples, ("images", "record"))  # labels: class-conditional sets only
    rec = json.loads(str(data["record"]))
    ref = load_feature_set(reference, extractor)
    labels = data.get("labels")
    fs = feature_set(torch.from_numpy(data["images"]), get_extractor(extractor, classifier), labels)
    save_feature_set(features_out, fs, extractor)
    metrics, intervals = image_metrics_with_intervals(ref, fs, kid_subset_size=kid_subset_size,
                                                      num_resamples=num_resamples)
    rec["sample_set"] = Path(samples).stem  # results/images/{dataset}/{run}/samples/{sample_set}.npz
    if rec["method"] == "fm":
        rec["trans_ratio"] = None
    return metric_rows(rec, metrics, COLUMNS_IMAGES, extractor, intervals)


@torch.no_grad()
def heldout_nll(run_dir: str | Path, num_images: int, times_per_image: int, seed: int = 0,
                data_root: str | None = None, batch_size: int = 250) -> dict:
    """Velocity NLL of held-out images in bits/dim (docs/method.md, Sec. 8.5; the analogue of the paper's Table 3).

    For each test image and each of ``times_per_image`` draws ``sigma ~ U(0, 1)`` (clamped >= 1e-4), ``eps ~ N(0, I)``:
    ``-log q(u | x_t, y)`` of ``u = eps - x0`` under the predicted GM, Gaussian constant included, divided by
    ``D ln 2``. The label is the image's class (conditional NLL; none for an unconditional run); images in [-1, 1]
    units. Latent datasets have no test split here: as in the paper's Table 3, the NLL is of (a class-balanced prefix
    of) the training latents.
    """
    net, _, spec = load_run(run_dir)
    if spec["method"] != "gmflow":
        raise ValueError("the NLL needs a GM model (method 'gmflow'); flow matching predicts no density")
    if spec["dataset"] in registry.LATENT_DATASETS:  # the paper's Table 3: training latents, class-balanced
        from gmflow.harness.datasets import training_arrays

        images, labels = training_arrays(spec["dataset"], data_root)
        order = stratified_order(labels)[:num_images]
        images, labels = images[order].float(), labels[order]
    else:
        images, labels = load_images(spec["dataset"], "test", data_root)
    images, labels = images[:num_images], labels[:num_images]
    gen = torch.Generator().manual_seed(20_000 + seed)
    total, count = 0.0, 0
    c = spec["sample_shape"][0]
    for _ in range(times_per_image):
        for i in range(0, len(images), batch_size):
            x0, y = images[i : i + batch_size], labels[i : i + batch_size] if spec["num_classes"] else None
            sigma = (1 - torch.rand(len(x0), generator=gen)).clamp(min=1e-4)
            eps = torch.randn(x0.shape, generator=gen)
            gm = net(add_noise(x0, eps, sigma), sigma_to_timestep(sigma), y)
            nll = velocity_nll(gm, eps - x0) / c  # (B,) nats per dimension
            total += nll.double().sum().item()
            count += len(x0)
    return {"nll_bits_per_dim": total / count / math.log(2), "num_images": len(images),
            "times_per_image": times_per_image}
