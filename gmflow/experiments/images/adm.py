"""``images evaluate-adm``: a sample batch against an ADM reference batch, in two stages (docs/evaluation.md).

Stage 1 (``adm_feature_set``): every image of a batch through TF-Inception as the ADM evaluator feeds it, giving
``pool3`` (N, 2048), ``spatial`` (N, 2023) and the per-image HSV ``saturation`` (N,); saved once per batch file in a
cache keyed by the file's size and modification time and the extractor, so a second evaluation reads it back.
Stage 2 (``gmflow.harness.metrics_adm.adm_metrics``): FID, sFID, IS, precision, recall and saturation from the arrays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from gmflow.harness import io
from gmflow.harness.adm_batches import iter_adm_images, read_adm_batch_info, read_reference_statistics
from gmflow.harness.metrics_adm import adm_metrics, hsv_saturation

ADM_FEATURES = "inception-tf-adm"  # inception-tf, fed as the ADM evaluator feeds its graph (pool3 + mixed_6/conv)
ADM_FEATURES_VERSION = 1  # bump when stage 1 changes, to invalidate caches


def default_cache_path(batch: str | Path) -> Path:
    """``S.npz`` -> ``S.inception-tf-adm.npz`` beside it."""
    batch = Path(batch)
    return batch.with_name(f"{batch.stem}.{ADM_FEATURES}.npz")


def _cache_key(batch: Path) -> dict:
    from gmflow.harness.features import INCEPTION_TF_SHA1

    st = batch.stat()
    return {
        "source": batch.name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "features": ADM_FEATURES,
        "inception_sha1": INCEPTION_TF_SHA1,
        "version": ADM_FEATURES_VERSION,
    }


def adm_feature_set(batch: str | Path, extractor, batch_size: int = 64, device="cpu", log=None) -> dict:
    """Stage 1 of one ADM-layout batch: ``pool3``, ``spatial`` (float32) and ``saturation`` (float64), file order."""
    from gmflow.harness.features import adm_activations

    info = read_adm_batch_info(batch)
    pool3, spatial, saturation = [], [], []
    start, done = time.perf_counter(), 0
    for images in iter_adm_images(batch, batch_size):
        p, s = adm_activations(extractor, images, device)
        pool3.append(p)
        spatial.append(s)
        saturation.append(hsv_saturation(images))
        done += len(images)
        if log is not None and (done == info.num_images or len(pool3) % 50 == 0):
            log(f"{info.path.name}: {done}/{info.num_images} images, {time.perf_counter() - start:.0f} s")
    return {
        "pool3": np.concatenate(pool3),
        "spatial": np.concatenate(spatial),
        "saturation": np.concatenate(saturation),
    }


def cached_feature_set(
    batch: str | Path, cache: str | Path | None, extractor_factory, batch_size: int, device, log=None
) -> tuple[dict, bool]:
    """The batch's feature set from ``cache`` when it was made from this very file, else computed and saved there.

    Returns the set and whether it came from the cache."""
    batch = Path(batch)
    cache = Path(cache) if cache is not None else default_cache_path(batch)
    key = _cache_key(batch)
    if cache.is_file():
        with np.load(cache) as f:
            if "key" in f.files and json.loads(str(f["key"])) == key:
                return {k: f[k] for k in ("pool3", "spatial", "saturation")}, True
        if log is not None:
            log(f"{cache} was made from another file or version: computing the features again")
    fs = adm_feature_set(batch, extractor_factory(), batch_size, device, log)
    try:
        io.save_npz(cache, key=np.array(json.dumps(key, sort_keys=True)), **fs)
    except OSError as e:  # reported as a ValueError: the CLI turns those into a one-line error
        raise ValueError(
            f"cannot write the feature cache {cache} ({e.strerror}); pass a writable path with "
            "--sample-features / --reference-features"
        ) from None
    return fs, False


def evaluate_adm(
    samples: str | Path,
    reference: str | Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    sample_features: str | Path | None = None,
    reference_features: str | Path | None = None,
    softmax_weight: str | Path | None = None,
    distance_dtype: str = "adm-float16",
    log=None,
) -> dict:
    """Both stages for a sample batch against a reference batch; the record written by ``images evaluate-adm``."""
    from gmflow.harness.devices import resolve_device
    from gmflow.harness.features import (
        INCEPTION_TF_SHA1,
        InceptionTFFeatures,
        default_softmax_weight_path,
        load_softmax_weight,
    )

    dev = resolve_device(device)
    sample_info, ref_info = read_adm_batch_info(samples), read_adm_batch_info(reference)
    ref_stats = read_reference_statistics(reference)
    if sample_info.num_images < 2:
        raise ValueError(f"{samples}: FID needs at least 2 images, got {sample_info.num_images}")
    if not ref_stats and ref_info.num_images < 2:
        raise ValueError(f"{reference}: FID needs at least 2 reference images or stored mu / sigma")

    def make_extractor():
        return InceptionTFFeatures().to(dev)

    smp, smp_cached = cached_feature_set(samples, sample_features, make_extractor, batch_size, dev, log)
    ref, ref_cached = cached_feature_set(reference, reference_features, make_extractor, batch_size, dev, log)
    weight_path = Path(softmax_weight) if softmax_weight is not None else default_softmax_weight_path()
    weight = load_softmax_weight(weight_path) if weight_path is not None else None
    metrics = adm_metrics(smp, {**ref, **ref_stats}, softmax_weight=weight, distance_dtype=distance_dtype)
    deviations = []  # from the paper's protocol (Chen et al. 2025, Sec. 4.2: ADM suite, 50K samples, 256x256)
    if sample_info.num_images != 50000:
        deviations.append(f"{sample_info.num_images} samples, not 50,000 (FID is biased upward for fewer)")
    if (sample_info.height, sample_info.width) != (256, 256):
        deviations.append(f"samples are {sample_info.height}x{sample_info.width}, not 256x256")
    if sample_info.uint8_conversion != "adm-truncate":
        deviations.append(f"uint8 conversion {sample_info.uint8_conversion!r}, not 'adm-truncate'")
    if weight is None:
        deviations.append("no Inception Score (softmax weight missing)")
    if distance_dtype != "adm-float16":
        deviations.append(f"precision / recall distances in {distance_dtype}, not the evaluator's float16")
    return {
        **metrics,
        "protocol_deviations": deviations,
        "num_images": sample_info.num_images,
        "num_reference_images": ref_info.num_images,
        "image_size": [sample_info.height, sample_info.width],
        "reference_image_size": [ref_info.height, ref_info.width],
        "class_labels": "arr_1" in sample_info.keys,
        "uint8_conversion": sample_info.uint8_conversion,
        "feature_extractor": ADM_FEATURES,
        "inception_weights_sha1": INCEPTION_TF_SHA1,
        "softmax_weight": None if weight_path is None
        else {"path": str(weight_path), "sha1": io.file_hash(weight_path)},
        "inception_score_note": None
        if weight is not None
        else (
            "not computed: the TF-Inception softmax weight was not found; pass --softmax-weight "
            "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth or an .npy of the (2048, 1008) weight)"
        ),
        "fid_reference_statistics": "stored mu/sigma" if "mu" in ref_stats else "computed from arr_0",
        "sfid_reference_statistics": "stored mu_s/sigma_s" if "mu_s" in ref_stats else "computed from arr_0",
        "distance_dtype": distance_dtype,
        "reference": str(reference),
        "reference_sha1": io.file_hash(reference),
        "samples": str(samples),
        "device": str(dev),
        "features_from_cache": {"samples": smp_cached, "reference": ref_cached},
    }
