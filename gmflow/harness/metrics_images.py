"""Image metrics in two stages (docs/method.md, Sec. 8.1-8.3): features once per sample set,
then pure functions of arrays.

Stage 1 (``feature_set``, ``save_feature_set``): a sample set of uint8 images becomes one npz holding the extractor's
features (N, D) and per-image pixel statistics; a dataset's reference set is the same file plus its FID statistics
(``reference_statistics``), computed once per dataset and extractor.
Stage 2 (pure): FID from means and covariances, KID (unbiased MMD^2, cubic polynomial kernel, in subsets), k-NN
precision / recall, and grayscale over-saturation analogues, each "generated minus real".

tests/test_images_data_metrics.py checks FID, KID and precision / recall against torch-fidelity's own functions
(``fid_statistics_to_metric``, ``kid_features_to_metric``, ``calculate_precision_recall_full``) on the same features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmflow.harness.io import save_npz
from gmflow.harness.metrics2d import knn_precision_recall

# ------------------------------------------------------------------------------------------------------------ stage 1

PIXEL_STATS = ("clipped_low", "clipped_high", "contrast", "intensity")


def pixel_statistics(images: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Per-image pixel statistics of uint8 (N, C, H, W) images or float ones in [-1, 1], each (N,) float64.

    - clipped_low / clipped_high: fraction of pixels at 0 / 255 after quantisation (float: ``x <= -(1 - 1/255)`` /
      ``x >= 1 - 1/255``), the grayscale stand-in for over-saturation.
    - contrast: the image's pixel standard deviation in [-1, 1] units.
    - intensity: the image's mean pixel value in [-1, 1] units.
    """
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        low, high = x == 0, x == 255
        x = x.double() / 127.5 - 1.0
    else:
        x = x.double()
        low, high = x <= -(1 - 1 / 255), x >= 1 - 1 / 255
    flat = x.flatten(1)
    return {
        "clipped_low": low.flatten(1).double().mean(1).numpy(),
        "clipped_high": high.flatten(1).double().mean(1).numpy(),
        "contrast": flat.std(1, correction=0).numpy(),
        "intensity": flat.mean(1).numpy(),
    }


def feature_set(images: Tensor, extractor) -> dict[str, np.ndarray]:
    """Stage 1 for one sample set: ``{"features": (N, D) float32, **pixel_statistics}`` of uint8 (N, C, H, W)."""
    return {"features": extractor.features(images), **pixel_statistics(images)}


def reference_statistics(fs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A feature set plus its FID statistics ``mu`` (D,) and ``sigma`` (D, D) in float64: one per dataset, extractor."""
    mu, sigma = feature_statistics(fs["features"])
    return {**fs, "mu": mu, "sigma": sigma}


def save_feature_set(path: str | Path, fs: dict[str, np.ndarray], extractor: str) -> None:
    """Write a feature set (or reference statistics) as npz, atomically, with the extractor's key."""
    save_npz(path, extractor=np.array(extractor), **fs)


def load_feature_set(path: str | Path, extractor: str | None = None) -> dict[str, np.ndarray]:
    """Read ``save_feature_set``'s npz; when ``extractor`` is given, check that the file was made by it."""
    with np.load(path) as f:
        fs = {k: f[k] for k in f.files}
    made_by = str(fs.pop("extractor"))
    if extractor is not None and made_by != extractor:
        raise ValueError(f"{path} holds {made_by!r} features, not {extractor!r}: recompute it with the same extractor")
    return fs


# ------------------------------------------------------------------------------------------------------------ stage 2


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of ``features (N, D)``, in float64."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix by eigendecomposition (negatives -> 0)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_from_statistics(mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray) -> float:
    """Frechet distance ``||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})`` (Heusel et al. 2017), float64.

    ``Tr (S_1 S_2)^{1/2}`` is the sum of square roots of the eigenvalues of ``S_1 S_2``, which are those of the
    symmetric PSD ``S_1^{1/2} S_2 S_1^{1/2}``: computed with ``eigh`` (stable, real), not a general ``sqrtm``.
    """
    mu_1, mu_2 = np.asarray(mu_1, np.float64), np.asarray(mu_2, np.float64)
    sigma_1, sigma_2 = np.asarray(sigma_1, np.float64), np.asarray(sigma_2, np.float64)
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape or sigma_1.shape != mu_1.shape * 2:
        raise ValueError(
            f"mismatched statistics: mu {mu_1.shape} / {mu_2.shape}, sigma {sigma_1.shape} / {sigma_2.shape}"
        )
    root_1 = sqrtm_psd(sigma_1)
    eig = np.linalg.eigvalsh(root_1 @ sigma_2 @ root_1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu_1 - mu_2
    return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2 * tr_covmean)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two feature arrays (N, D) and (M, D)."""
    return fid_from_statistics(*feature_statistics(real), *feature_statistics(fake))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's cubic kernel ``k(x, y) = (x . y / d + 1)^3`` for rows of x (n, d) and y (m, d): (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Binkowski et al. 2018) with ``polynomial_kernel`` of two sets x, y (m, d) of equal size.

    ``sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1)) - 2 sum_{i, j} k(x_i, y_j) / m^2``
    (the cross term keeps its diagonal, as in KID's reference code and torch-fidelity).
    """
    m = len(x)
    if len(y) != m or m < 2:
        raise ValueError(f"MMD^2 needs two sets of equal size >= 2, got {len(x)} and {len(y)}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    off_xx = k_xx.sum() - np.trace(k_xx)
    off_yy = k_yy.sum() - np.trace(k_yy)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2 * k_xy.sum() / m**2)


def kid(
    real: np.ndarray, fake: np.ndarray, subset_size: int = 1000, num_subsets: int = 100, seed: int = 2020
) -> tuple[float, float]:
    """Kernel Inception Distance: mean and standard deviation (ddof 0) of ``mmd2_unbiased`` over random subsets.

    Each subset draws ``subset_size`` generated then ``subset_size`` real rows without replacement from
    ``np.random.RandomState(seed)``, in torch-fidelity's order, so equal seeds give torch-fidelity's value.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape}, generated {fake.shape}")
    if subset_size > min(len(real), len(fake)) or subset_size < 2:
        raise ValueError(
            f"KID subset_size {subset_size} must be in [2, min(#real, #generated)] = [2, {min(len(real), len(fake))}]"
        )
    rng = np.random.RandomState(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        f = fake[rng.choice(len(fake), subset_size, replace=False)]
        r = real[rng.choice(len(real), subset_size, replace=False)]
        mmds[i] = mmd2_unbiased(f, r)
    return float(mmds.mean()), float(mmds.std())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls, k = 3 by default.

    Precision: fraction of generated features inside some real ball (centre r_j, radius = distance to r_j's k-th
    nearest other real point); recall: fraction of real features inside some generated ball.
    """
    return knn_precision_recall(np.asarray(real), np.asarray(fake), k=k)


def saturation_analogues(real: dict[str, np.ndarray], fake: dict[str, np.ndarray]) -> dict[str, float]:
    """Grayscale stand-ins for the saturation of the paper's Table 2, each "generated minus real" mean of
    ``pixel_statistics``.

    Keys: ``clipped`` (fraction of pixels at 0 or 255), ``clipped_low``, ``clipped_high``, ``contrast`` (per-image std)
    and ``intensity`` (mean pixel value), all with the suffix ``_diff``.
    """
    out = {}
    for key in PIXEL_STATS:
        out[f"{key}_diff"] = float(np.mean(fake[key]) - np.mean(real[key]))
    out["clipped_diff"] = out["clipped_low_diff"] + out["clipped_high_diff"]
    return out


def image_metrics(
    real: dict[str, np.ndarray],
    fake: dict[str, np.ndarray],
    *,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    seed: int = 2020,
) -> dict[str, float]:
    """All image metrics of a generated feature set against a reference one (``mu`` / ``sigma`` used when present).

    ``kid_subset_size`` is capped at the smaller set's size.
    """
    mu_r, sigma_r = (real["mu"], real["sigma"]) if "mu" in real else feature_statistics(real["features"])
    out = {"fid": fid_from_statistics(mu_r, sigma_r, *feature_statistics(fake["features"]))}
    subset = min(kid_subset_size, len(real["features"]), len(fake["features"]))
    out["kid"], out["kid_std"] = kid(real["features"], fake["features"], subset, kid_subsets, seed)
    out["precision"], out["recall"] = precision_recall(real["features"], fake["features"], pr_k)
    if all(k in real and k in fake for k in PIXEL_STATS):
        out.update(saturation_analogues(real, fake))
    out["num_real"], out["num_generated"] = len(real["features"]), len(fake["features"])
    return out
