"""Image metrics in two stages (docs/method.md, Sec. 8.1-8.3): features once per sample set,
then pure functions of arrays.

Stage 1 (``feature_set``, ``save_feature_set``): a sample set of uint8 images becomes one npz holding the extractor's
features (N, D) and per-image pixel statistics; a dataset's reference set is the same file plus its FID statistics
(``reference_statistics``), computed once per dataset and extractor.
Stage 2 (pure): FID from means and covariances, KID (unbiased MMD^2, cubic polynomial kernel, in subsets), k-NN
precision / recall, and grayscale over-saturation analogues, each "generated minus real".

With an in-domain classifier, stage 1 also keeps each image's predicted class (``predicted``) beside the labels the
images were conditioned on (``labels``), and stage 2 gives the class consistency (top-1 accuracy against the labels).
``image_metrics_with_intervals`` adds a 95% interval to every metric of a sample set (docs/method.md, Sec. 8.1).

tests/test_images_data_metrics.py checks FID, KID and precision / recall against torch-fidelity's own functions
(``fid_statistics_to_metric``, ``kid_features_to_metric``, ``calculate_precision_recall_full``) on the same features;
tests/test_metrics_intervals.py checks the intervals (coverage of a known FID, width ~ 1/sqrt(n), the indicator
bootstrap).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gmflow.harness.io import save_npz
from gmflow.harness.metrics2d import knn_membership, knn_precision_recall

# ------------------------------------------------------------------------------------------------------------ stage 1

PIXEL_STATS = ("clipped_low", "clipped_high", "contrast", "intensity")
CI_LEVEL = 0.95  # the level of every interval of a metric (columns ci_low, ci_high)


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


def feature_set(images: Tensor, extractor, labels: Tensor | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Stage 1 for one sample set: ``{"features": (N, D) float32, **pixel_statistics}`` of uint8 (N, C, H, W).

    An extractor that also classifies (``features_and_classes``, the in-domain classifiers) adds ``predicted`` (N,)
    int64, its top-1 class; ``labels`` (N,), the classes the images were conditioned on (or the real labels), are
    kept as ``labels`` int64, so that ``class_consistency`` is a function of the saved arrays.
    """
    if hasattr(extractor, "features_and_classes"):
        features, predicted = extractor.features_and_classes(images)
        out = {"features": features, "predicted": np.asarray(predicted, dtype=np.int64)}
    else:
        out = {"features": extractor.features(images)}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(out["features"]):
            raise ValueError(f"{len(labels)} labels for {len(out['features'])} images: pass one label per image")
        out["labels"] = labels
    return {**out, **pixel_statistics(images)}


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


def class_consistency(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a classifier's ``predicted`` classes (N,) against the ``labels`` (N,) the images were
    conditioned on (for real images, their true classes: the floor a perfect generator would reach)."""
    predicted, labels = np.asarray(predicted).reshape(-1), np.asarray(labels).reshape(-1)
    if predicted.shape != labels.shape or len(labels) == 0:
        raise ValueError(f"class consistency needs as many predictions as labels (> 0), got {predicted.shape} "
                         f"and {labels.shape}")
    return float((predicted == labels).mean())


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

    ``kid_subset_size`` is capped at the smaller set's size. ``class_consistency`` when ``fake`` holds ``predicted``
    and ``labels``; ``class_consistency_real`` (the real-data floor) when ``real`` does.
    """
    return image_metrics_with_intervals(real, fake, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                                        pr_k=pr_k, seed=seed, num_resamples=0)[0]


def image_metrics_with_intervals(
    real: dict[str, np.ndarray],
    fake: dict[str, np.ndarray],
    *,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    pr_k: int = 3,
    seed: int = 2020,
    num_resamples: int = 200,
    level: float = CI_LEVEL,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """``image_metrics`` and a ``level`` interval ``(low, high)`` per metric that has one (docs/method.md, Sec. 8.1).

    Resampling (``num_resamples`` replicates, 0 = no bootstrap intervals) draws multinomial counts from
    ``np.random.default_rng((seed, 0))`` for the generated set and ``(seed, 1)`` for the real set
    (``resample_counts``); one replicate is one resampled generated set for every metric that resamples it.

    - ``precision``: percentile bootstrap over generated samples of the mean of their indicators (inside the real
      manifold), the real manifold fixed: each indicator depends on one generated sample only
      (``indicator_interval``: the exact binomial interval when all indicators are equal).
    - ``recall``: percentile bootstrap over real samples of their indicators (inside the generated manifold), the
      generated manifold fixed; the generated set's own variability (its k-NN balls) is left out.
    - ``class_consistency`` and ``class_consistency_real``: exact (Clopper-Pearson) binomial interval of the
      accuracy (``binomial_interval``), no resampling; valid at accuracies of 0 or 1, where a bootstrap collapses.
    - ``fid``: basic (reverse percentile) bootstrap interval over the generated set, the reference statistics fixed
      (``fid_bootstrap``, ``basic_interval``): resampling duplicates points and biases the replicates upward as the
      finite sample biases the estimate, and the basic interval subtracts that bias, so it can lie below the point
      estimate when the bias exceeds the spread. Clipped at 0.
    - ``kid``: basic interval of the complete unbiased MMD^2's change over generated resamples (``kid_bootstrap``),
      placed around the subset-average KID; the randomness of the subsets and of the real set is left out.
    - the saturation analogues (``*_diff``): percentile bootstrap of the generated mean over generated images, the
      real mean fixed.
    """
    rf, ff = np.asarray(real["features"]), np.asarray(fake["features"])
    mu_r, sigma_r = (real["mu"], real["sigma"]) if "mu" in real else feature_statistics(rf)
    out = {"fid": fid_from_statistics(mu_r, sigma_r, *feature_statistics(ff))}
    subset = min(kid_subset_size, len(rf), len(ff))
    out["kid"], out["kid_std"] = kid(rf, ff, subset, kid_subsets, seed)
    fake_in, real_in = knn_membership(rf, ff, pr_k)
    out["precision"], out["recall"] = float(fake_in.mean()), float(real_in.mean())
    has_pixels = all(k in real and k in fake for k in PIXEL_STATS)
    if has_pixels:
        out.update(saturation_analogues(real, fake))
    ci: dict[str, tuple[float, float]] = {}
    for name, fs in (("class_consistency", fake), ("class_consistency_real", real)):
        if "predicted" in fs and "labels" in fs:
            out[name] = class_consistency(fs["predicted"], fs["labels"])
            ci[name] = binomial_interval(int(round(out[name] * len(fs["labels"]))), len(fs["labels"]), level)
    out["num_real"], out["num_generated"] = len(rf), len(ff)
    if num_resamples > 0:
        gen = resample_counts(len(ff), num_resamples, (seed, 0))
        ci["precision"] = indicator_interval(fake_in, gen, level)
        ci["recall"] = indicator_interval(real_in, resample_counts(len(rf), num_resamples, (seed, 1)), level)
        fid_reps = fid_bootstrap(mu_r, sigma_r, ff, gen)
        lo, hi = basic_interval(out["fid"], fid_reps, level)
        ci["fid"] = (max(lo, 0.0), max(hi, 0.0))
        ci["kid"] = basic_interval(out["kid"], out["kid"] + kid_bootstrap(rf, ff, gen), level)
        if has_pixels:
            for key in PIXEL_STATS:
                diff = gen @ np.asarray(fake[key], np.float64) / len(ff) - np.mean(real[key])
                ci[f"{key}_diff"] = percentile_interval(diff, level)
            clipped = np.asarray(fake["clipped_low"], np.float64) + np.asarray(fake["clipped_high"], np.float64)
            real_clipped = np.mean(real["clipped_low"]) + np.mean(real["clipped_high"])
            ci["clipped_diff"] = percentile_interval(gen @ clipped / len(ff) - real_clipped, level)
    return out, ci


# ---------------------------------------------------------------------------------------------- 95% intervals


def resample_counts(n: int, num: int, seed) -> np.ndarray:
    """``num`` bootstrap resamples of ``n`` items as multinomial counts (num, n) int64 (each row sums to ``n``), from
    ``np.random.default_rng(seed)``: row b says how often item i is drawn; a mean over a resample is ``counts @ x / n``.
    """
    if n < 1 or num < 1:
        raise ValueError(f"resampling needs n >= 1 items and num >= 1 replicates, got n={n}, num={num}")
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=num)


def percentile_interval(replicates: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval: the ``(1 - level) / 2`` and ``(1 + level) / 2`` replicate quantiles."""
    a = (1 - level) / 2
    lo, hi = np.quantile(np.asarray(replicates, np.float64), [a, 1 - a])
    return float(lo), float(hi)


def indicator_interval(indicators: np.ndarray, counts: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Interval of a mean of 0/1 ``indicators`` (N,): the percentile bootstrap of ``counts @ indicators / N``, except
    when all indicators are equal (a mean of 0 or 1), where every resample repeats it and the bootstrap collapses to
    a point: then the exact ``binomial_interval``."""
    x = np.asarray(indicators, np.float64)
    k = int(x.sum())
    if k in (0, len(x)):
        return binomial_interval(k, len(x), level)
    return percentile_interval(counts @ x / len(x), level)


def basic_interval(estimate: float, replicates: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """The basic (reverse percentile) bootstrap interval ``(2 t - q_hi, 2 t - q_lo)`` of an estimate ``t``.

    The replicates' deviation from ``t`` stands in for ``t``'s deviation from the truth, bias included: a statistic
    biased upward by finite samples (FID) is biased upward again by resampling, and the interval moves down by as much.
    """
    q_lo, q_hi = percentile_interval(replicates, level)
    return float(2 * estimate - q_hi), float(2 * estimate - q_lo)


def binomial_interval(successes: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion ``successes / n``: beta quantiles, 0 and 1 included."""
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if successes == 0 else float(beta.ppf(a, successes, n - successes + 1))
    hi = 1.0 if successes == n else float(beta.ppf(1 - a, successes + 1, n - successes))
    return lo, hi


def fid_bootstrap(mu_r: np.ndarray, sigma_r: np.ndarray, fake: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """FID of each resampled generated set (rows of ``counts`` (B, N)) against fixed reference statistics: (B,).

    Eigenvalue form, one small symmetric eigenproblem per replicate: with ``R = sigma_r^{1/2}`` (once) and
    ``Z = fake R`` (once), the resampled covariance gives ``R S* R = Y^T Y`` with
    ``Y = sqrt(w / (N - 1)) (Z - mean_w Z)`` over the drawn rows, and ``Tr (sigma_r S*)^{1/2}`` is the sum of square
    roots of the eigenvalues of ``Y^T Y`` (D x D) or of ``Y Y^T`` (drawn rows squared), whichever is smaller: about
    0.63 N rows, so 2048-d TF-Inception features of 1000 images need a 632 x 632 ``eigvalsh`` per replicate, not a
    2048 x 2048 square root.
    Counts of all ones give ``fid_from_statistics`` of the set.
    """
    x = np.asarray(fake, np.float64)
    n = len(x)
    root = sqrtm_psd(np.asarray(sigma_r, np.float64))
    z = x @ root
    sq = (x**2).sum(1)
    mu_r = np.asarray(mu_r, np.float64)
    tr_r = float(np.trace(sigma_r))
    out = np.empty(len(counts))
    for b, w in enumerate(np.asarray(counts, np.float64)):
        mu = w @ x / n
        tr_s = (w @ sq - n * mu @ mu) / (n - 1)
        drawn = w > 0
        y = np.sqrt(w[drawn] / (n - 1))[:, None] * (z[drawn] - w @ z / n)
        gram = y @ y.T if len(y) < y.shape[1] else y.T @ y
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)).sum()
        diff = mu_r - mu
        out[b] = diff @ diff + tr_r + tr_s - 2 * tr_covmean
    return out


def kid_bootstrap(real: np.ndarray, fake: np.ndarray, counts: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Change of the complete unbiased MMD^2 (KID's kernel, all pairs) over resampled generated sets: (B,).

    ``MMD^2 = A_gg + A_rr - 2 A_gr``; a resample with counts ``w`` keeps pairs of distinct drawn points,
    ``A_gg(w) = (w^T K w - sum_i w_i^2 K_ii) / (N^2 - sum_i w_i^2)`` and ``A_gr(w) = w . b / N`` with ``b_i`` the mean
    kernel of generated point i against the real set; ``A_rr`` does not change. Kernel rows are computed in chunks,
    never the whole (N, N) matrix.
    """
    x, r = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    n = len(x)
    w = np.asarray(counts, np.float64)  # (B, N)
    quad = np.zeros(len(w))  # w^T K w per replicate
    diag = np.empty(n)
    b = np.empty(n)
    total = 0.0
    for i in range(0, n, chunk):
        k = polynomial_kernel(x[i : i + chunk], x)  # (c, N)
        quad += ((k @ w.T) * w[:, i : i + chunk].T).sum(0)
        diag[i : i + chunk] = np.diagonal(k, offset=i)
        total += k.sum()
        b[i : i + chunk] = polynomial_kernel(x[i : i + chunk], r).mean(1)
    a_gg = (total - diag.sum()) / (n * (n - 1))
    a_gr = b.mean()
    w2 = (w**2).sum(1)
    a_gg_star = (quad - (w**2) @ diag) / (n**2 - w2)
    return (a_gg_star - a_gg) - 2 * (w @ b / n - a_gr)
