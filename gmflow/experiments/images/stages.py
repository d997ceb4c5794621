"""The image experiment's stages as functions: train a run on an image dataset, draw
class-conditional sample sets, compute features and metrics against a real reference set, and the held-out NLL.

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
    """Train the run's network on the dataset's training split, class-conditional with label dropout (``device``
    and the torchrun ``group``: :func:`gmflow.harness.train.train`; ``grad_checkpointing`` recomputes each DiT
    block in the backward pass, the same gradients with less memory)."""
    from gmflow.harness.devices import Distributed
    from gmflow.harness.losses import make_loss
    from gmflow.harness.train import train

    x, y = load_images(spec["dataset"], "train", data_root)
    torch.manual_seed(cfg.seed)
    net, spectrum = build_network(spec)
    net.grad_checkpointing = grad_checkpointing
    cfg.null_label = net.null_label

    def sample_batch(n: int, gen: torch.Generator):
        idx = torch.randint(len(x), (n,), generator=gen)
        return x[idx], y[idx]

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
                  precision: str = "fp32", group=None) -> tuple[dict, dict]:
    """A class-balanced sample set: ``{"images": uint8 (N, C, H, W), "labels": (N,)}`` and its record."""
    from gmflow.harness.sampling import generate

    net, spectrum, spec = load_run(run_dir)
    if spectral and spectrum is None:
        raise ValueError(f"{run_dir} was trained without a SpectrumMLP; train it with --spectral to sample spectrally")
    info = dataset_info(spec["dataset"])
    labels = info.labels(num_samples)
    x, rec = generate(net, spec["method"], solver, nfe, num_samples, tuple(spec["sample_shape"]), seed, block_size,
                      substeps, guidance, scale, orthogonal, labels, net.null_label, progress,
                      spectrum if spectral else None, device=device, precision=precision, group=group)
    rec.update(run=Path(run_dir).name, dataset=spec["dataset"], method=spec["method"], K=spec["num_components"],
               train_steps=spec["train"]["steps"], trans_ratio=spec["train"]["trans_ratio"],
               train_seconds=spec.get("train_seconds"))
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


def evaluate_images(samples: str | Path, reference: str | Path, extractor: str, classifier: str | None,
                    features_out: str | Path, kid_subset_size: int = 1000,
                    num_resamples: int = 200) -> pd.DataFrame:
    """Stage 1 (features of the sample set, saved, with the predicted classes and the conditioning labels for a
    classifier) and stage 2 (metrics and their 95% intervals from ``num_resamples`` bootstrap replicates, 0 = none;
    :func:`gmflow.harness.metrics_images.image_metrics_with_intervals`): one long-format row per metric."""
    data = np.load(samples)
    rec = json.loads(str(data["record"]))
    ref = load_feature_set(reference, extractor)
    labels = data["labels"] if "labels" in data.files else None
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
    ``D ln 2``. The label is the image's class (conditional NLL); images in [-1, 1] units.
    """
    net, _, spec = load_run(run_dir)
    if spec["method"] != "gmflow":
        raise ValueError("the NLL needs a GM model (method 'gmflow'); flow matching predicts no density")
    images, labels = load_images(spec["dataset"], "test", data_root)
    images, labels = images[:num_images], labels[:num_images]
    gen = torch.Generator().manual_seed(20_000 + seed)
    total, count = 0.0, 0
    c = spec["sample_shape"][0]
    for _ in range(times_per_image):
        for i in range(0, len(images), batch_size):
            x0, y = images[i : i + batch_size], labels[i : i + batch_size]
            sigma = (1 - torch.rand(len(x0), generator=gen)).clamp(min=1e-4)
            eps = torch.randn(x0.shape, generator=gen)
            gm = net(add_noise(x0, eps, sigma), sigma_to_timestep(sigma), y)
            nll = velocity_nll(gm, eps - x0) / c  # (B,) nats per dimension
            total += nll.double().sum().item()
            count += len(x0)
    return {"nll_bits_per_dim": total / count / math.log(2), "num_images": len(images),
            "times_per_image": times_per_image}
