"""The ADM evaluation suite as pure functions of arrays (docs/evaluation.md): FID, sFID, Inception Score, improved
precision / recall, and the HSV saturation of the paper's Table 2.

These follow the reference evaluator of Dhariwal & Nichol (2021, "Diffusion Models Beat GANs on Image Synthesis",
App. and its ``evaluations/evaluator.py``), which produced the paper's ImageNet-256 numbers (Chen et al. 2025, Sec. 4.2,
Table 2, Table 4, Fig. 6), operation by operation:

- ``adm_statistics`` / ``adm_frechet_distance``: ``FIDStatistics`` -- mean in the activations' dtype (float32),
  ``np.cov`` in float64, a general matrix square root of ``S_1 S_2`` (``scipy.linalg.sqrtm``), ``eps = 1e-6`` added to
  both diagonals only when that root is not finite, and the imaginary part dropped when its diagonal is below 1e-3.
- ``adm_softmax`` / ``adm_inception_score``: the softmax of ``pool3 @ W`` (the weight of the graph's
  ``softmax/logits/MatMul``: no bias) in float32, then ``exp(mean KL(p(y|x) || p(y)))`` per split of 5000 rows
  (the last split may be shorter) and the plain mean over splits.
- ``adm_manifold_radii`` / ``adm_precision_recall``: ``ManifoldEstimator`` with k = 3. Distances are *squared*
  Euclidean distances ``max(|u|^2 - 2 u.v + |v|^2, 0)`` computed in float16 (inputs, squares, norms, the product and
  each sum rounded to float16) and, for a (row, column) block of 10000 x 10000 whose float16 result is not all
  finite, again in float32. The radius of point i is entry 3 of its sorted distance row *including itself* (the self
  distance is one of the four smallest values, so this is the 3rd nearest other point unless float16 makes the self
  distance larger than a neighbour's). A point is inside a ball when ``distance <= radius``: ties count as inside.
  Precision = fraction of samples inside some reference ball, recall = fraction of references inside some sample ball.

Float16 emulation: every intermediate tensor has the dtype it has in the evaluator's graph; sums and the matrix product
accumulate in float32 (as GPU kernels for float16 do), so values can differ from a given GPU in the last float16 bit of
a few entries, which moves a point across a ball's boundary only on exact ties. ``distance_dtype="float64"`` computes
the same quantities exactly instead (the textbook metric; tests compare both).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

ADM_FID_EPS = 1e-6
ADM_IS_SPLIT_SIZE = 5000
ADM_NHOOD_SIZE = 3
ADM_BATCH_SIZE = 10000  # ManifoldEstimator's row_batch_size and col_batch_size
ADM_SPATIAL_CHANNELS = 7  # sFID: the first 7 channels of mixed_6/conv (17 x 17 x 7 = 2023 values per image)
DISTANCE_DTYPES = ("adm-float16", "float64")
IMAGENET_REAL_SATURATION = 0.318  # Chen et al. 2025, Table 2: mean HSV saturation of real ImageNet (reference only)


# ------------------------------------------------------------------------------------------------------------- FID


def adm_statistics(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``FIDStatistics`` of activations (N, D): ``np.mean`` in their own dtype (float32 for Inception activations, as
    in the evaluator) and ``np.cov(rowvar=False)`` (float64, unbiased)."""
    a = np.asarray(activations)
    if a.ndim != 2 or len(a) < 2:
        raise ValueError(f"FID statistics need activations (N >= 2, D), got shape {a.shape}")
    return np.mean(a, axis=0), np.cov(a, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # scipy may warn about a singular matrix; the finiteness check below decides
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        return linalg.sqrtm(a)


def adm_frechet_distance(
    mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray, eps: float = ADM_FID_EPS
) -> float:
    """``FIDStatistics.frechet_distance``: ``|mu_1 - mu_2|^2 + Tr S_1 + Tr S_2 - 2 Tr sqrtm(S_1 S_2)``.

    ``sqrtm`` is scipy's general (Schur) square root of the non-symmetric product; when it is not finite, ``eps`` is
    added to both diagonals and the root recomputed (with a warning, as the evaluator). A complex root whose diagonal
    has an imaginary part above 1e-3 raises ``ValueError``; otherwise its real part is used.
    """
    mu_1, mu_2 = np.atleast_1d(mu_1), np.atleast_1d(mu_2)
    sigma_1, sigma_2 = np.atleast_2d(sigma_1), np.atleast_2d(sigma_2)
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape or sigma_1.shape != mu_1.shape * 2:
        raise ValueError(
            f"mismatched FID statistics: mu {mu_1.shape} / {mu_2.shape}, sigma {sigma_1.shape} / {sigma_2.shape}: "
            "both sets must come from the same feature layer"
        )
    diff = mu_1 - mu_2
    covmean = _sqrtm(sigma_1.dot(sigma_2))
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates", stacklevel=2
        )
        offset = np.eye(sigma_1.shape[0]) * eps
        covmean = _sqrtm((sigma_1 + offset).dot(sigma_2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the square root of S_1 S_2 has an imaginary part {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma_1) + np.trace(sigma_2) - 2 * np.trace(covmean))


def adm_spatial_features(mixed_6_conv: np.ndarray) -> np.ndarray:
    """sFID features from ``mixed_6/conv`` activations (N, 17, 17, 192) channels-last: the first 7 channels,
    flattened in (H, W, C) order -> (N, 2023). The order matters when comparing with a reference batch's stored
    ``mu_s`` / ``sigma_s``."""
    a = np.asarray(mixed_6_conv)
    if a.ndim != 4:
        raise ValueError(f"expected channels-last mixed_6/conv activations (N, H, W, C), got shape {a.shape}")
    return a[..., :ADM_SPATIAL_CHANNELS].reshape(len(a), -1)


# ---------------------------------------------------------------------------------------------- Inception Score


def adm_softmax(pool3: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 1008) float32: softmax of ``pool3 (N, 2048) @ weight (2048, 1008)``, no bias, in float32
    (the evaluator's ``_create_softmax_graph``)."""
    logits = np.asarray(pool3, np.float32) @ np.asarray(weight, np.float32)
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def adm_inception_score(probs: np.ndarray, split_size: int = ADM_IS_SPLIT_SIZE) -> float:
    """``Evaluator.compute_inception_score`` of class probabilities (N, C): for each consecutive split of
    ``split_size`` rows, ``exp(mean_i sum_c p_ic (log p_ic - log mean_j p_jc))``; the mean over splits.

    Computed in the dtype of ``probs`` (float32 in the evaluator). A probability of exactly 0 gives NaN there too.
    """
    p = np.asarray(probs)
    if p.ndim != 2 or len(p) == 0:
        raise ValueError(f"Inception Score needs class probabilities (N >= 1, C), got shape {p.shape}")
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------- precision / recall


def _check_distance_dtype(distance_dtype: str) -> None:
    if distance_dtype not in DISTANCE_DTYPES:
        raise ValueError(f"distance_dtype must be one of {DISTANCE_DTYPES}, got {distance_dtype!r}")


def _f16(x: np.ndarray) -> np.ndarray:
    """Round to float16 and hold the values in float32 (float32 ops on them round like float16 ops once rounded
    back: 24 >= 2 * 11 + 2 bits, so double rounding is innocuous for +, -, *)."""
    return x.astype(np.float16).astype(np.float32)


def _squared_distances_f16(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The evaluator's ``_batch_pairwise_distances`` on float16 inputs; inf / NaN where float16 overflows."""
    with np.errstate(over="ignore", invalid="ignore"):
        u16, v16 = _f16(u), _f16(v)
        norm_u = _f16(_f16(u16 * u16).sum(1))  # tf.reduce_sum(tf.square(U), 1) in float16
        norm_v = _f16(_f16(v16 * v16).sum(1))
        two_uv = _f16(2 * _f16(u16 @ v16.T))  # 2 * tf.matmul(U, V^T), float16 output
        d = _f16(_f16(norm_u[:, None] - two_uv) + norm_v[None, :])  # evaluated left to right
        return np.maximum(d, np.float32(0))


def _squared_distances_f32(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u, v = np.asarray(u, np.float32), np.asarray(v, np.float32)
    norm_u, norm_v = (u * u).sum(1), (v * v).sum(1)
    return np.maximum(norm_u[:, None] - 2 * (u @ v.T) + norm_v[None, :], np.float32(0))


def adm_squared_distances(u: np.ndarray, v: np.ndarray, distance_dtype: str = "adm-float16") -> np.ndarray:
    """``DistanceBlock.pairwise_distances`` of one block: squared distances (n, m) between rows of u (n, D), v (m, D).

    ``"adm-float16"``: float16 (see the module docstring), falling back to float32 for the whole block when any float16
    entry is not finite; returned as float32. ``"float64"``: ``max(|u|^2 - 2 u.v + |v|^2, 0)`` in float64.
    """
    _check_distance_dtype(distance_dtype)
    if distance_dtype == "float64":
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        return np.maximum((u * u).sum(1)[:, None] - 2 * (u @ v.T) + (v * v).sum(1)[None, :], 0.0)
    d = _squared_distances_f16(u, v)
    return d if np.isfinite(d).all() else _squared_distances_f32(u, v)


def _blocks(n: int, size: int):
    for begin in range(0, n, size):
        yield begin, min(begin + size, n)


def adm_manifold_radii(
    features: np.ndarray,
    k: int = ADM_NHOOD_SIZE,
    *,
    distance_dtype: str = "adm-float16",
    row_batch_size: int = ADM_BATCH_SIZE,
    col_batch_size: int = ADM_BATCH_SIZE,
) -> np.ndarray:
    """``ManifoldEstimator.manifold_radii``: squared radius (N,) of each point's k-NN ball.

    Entry ``k`` (0-based) of the point's sorted row of squared distances to every point, itself included. Distances
    come in (row, column) blocks of the evaluator's sizes, which decide where the float16 -> float32 fallback applies;
    only the k + 1 smallest values of each block row are kept (the same order statistic, less memory).
    """
    f = np.asarray(features)
    n = len(f)
    if f.ndim != 2 or n <= k:
        raise ValueError(f"k-NN radii with k = {k} need features (N > {k}, D), got shape {f.shape}")
    out_dtype = np.float64 if distance_dtype == "float64" else np.float32
    radii = np.zeros(n, dtype=out_dtype)
    for b1, e1 in _blocks(n, row_batch_size):
        smallest = []
        for b2, e2 in _blocks(n, col_batch_size):
            d = adm_squared_distances(f[b1:e1], f[b2:e2], distance_dtype)
            kk = min(k, d.shape[1] - 1)
            smallest.append(np.partition(d, kk, axis=1)[:, : kk + 1])
        radii[b1:e1] = np.partition(np.concatenate(smallest, axis=1), k, axis=1)[:, k]
    return radii


def adm_precision_recall(
    ref_features: np.ndarray,
    sample_features: np.ndarray,
    k: int = ADM_NHOOD_SIZE,
    *,
    ref_radii: np.ndarray | None = None,
    sample_radii: np.ndarray | None = None,
    distance_dtype: str = "adm-float16",
    row_batch_size: int = ADM_BATCH_SIZE,
    col_batch_size: int = ADM_BATCH_SIZE,
) -> tuple[float, float]:
    """``Evaluator.compute_prec_recall`` (``ManifoldEstimator.evaluate_pr``): (precision, recall).

    Precision: fraction of sample rows j with ``d(ref_i, sample_j) <= ref_radii[i]`` for some i; recall: fraction of
    reference rows i with ``d(ref_i, sample_j) <= sample_radii[j]`` for some j (squared distances and radii). Rows of
    the block are references, columns samples, as in the evaluator. Radii are computed when not given.
    """
    ref, smp = np.asarray(ref_features), np.asarray(sample_features)
    if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
        raise ValueError(f"precision / recall need features (N, D) of one width, got {ref.shape} and {smp.shape}")
    kw = dict(distance_dtype=distance_dtype, row_batch_size=row_batch_size, col_batch_size=col_batch_size)
    if ref_radii is None:
        ref_radii = adm_manifold_radii(ref, k, **kw)
    if sample_radii is None:
        sample_radii = adm_manifold_radii(smp, k, **kw)
    ref_in = np.zeros(len(ref), dtype=bool)  # reference i inside some sample ball (recall)
    smp_in = np.zeros(len(smp), dtype=bool)  # sample j inside some reference ball (precision)
    for b1, e1 in _blocks(len(ref), row_batch_size):
        for b2, e2 in _blocks(len(smp), col_batch_size):
            d = adm_squared_distances(ref[b1:e1], smp[b2:e2], distance_dtype)
            ref_in[b1:e1] |= (d <= sample_radii[None, b2:e2]).any(axis=1)
            smp_in[b2:e2] |= (d <= ref_radii[b1:e1, None]).any(axis=0)
    return float(np.mean(smp_in.astype(np.float64))), float(np.mean(ref_in.astype(np.float64)))


# ------------------------------------------------------------------------------------------------------- saturation


def hsv_saturation(images: np.ndarray, channels_last: bool = True) -> np.ndarray:
    """Mean HSV saturation of each RGB image, (N,) float64.

    Per pixel ``S = (max - min) / max`` over R, G, B, and 0 where ``max = 0`` (``colorsys.rgb_to_hsv``); the scale of
    the values does not matter (uint8 0..255 or floats in [0, 1]). Chen et al. 2025, Table 2 report the mean over all
    generated images minus that over real ones; their real ImageNet value is 0.318, a reference point only (this
    project computes the real side from the reference batch it is given).

    Args:
        images: (N, H, W, 3) when ``channels_last`` (the ADM batch layout), else (N, 3, H, W); non-negative.
    """
    x = np.asarray(images)
    axis = -1 if channels_last else 1
    if x.ndim != 4 or x.shape[axis] != 3:
        layout = "(N, H, W, 3)" if channels_last else "(N, 3, H, W)"
        raise ValueError(f"HSV saturation needs RGB images {layout}, got shape {x.shape}")
    hi = x.max(axis=axis).astype(np.float64)
    lo = x.min(axis=axis).astype(np.float64)
    s = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return s.reshape(len(x), -1).mean(axis=1)


def saturation_difference(generated: np.ndarray, real: np.ndarray) -> float:
    """Chen et al. 2025, Table 2: mean saturation of generated images minus that of real ones, from the per-image
    values of ``hsv_saturation`` (images of equal size, so the mean of image means is the mean over pixels)."""
    return float(np.mean(generated) - np.mean(real))


def adm_metrics(
    sample: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    *,
    softmax_weight: np.ndarray | None = None,
    distance_dtype: str = "adm-float16",
) -> dict[str, float | None]:
    """Every metric of the evaluator's ``main`` plus saturation, from two feature sets.

    Each set holds ``pool3`` (N, 2048) float32 and may hold ``spatial`` (N, 2023) and ``saturation`` (N,); the
    reference may hold the stored statistics ``mu``, ``sigma`` (and ``mu_s``, ``sigma_s``), which are used instead of
    its activations' as the evaluator does. Inception Score needs the softmax weight (None without it); sFID and the
    saturation need their arrays on both sides (None otherwise).
    """
    mu_r, sigma_r = (reference["mu"], reference["sigma"]) if "mu" in reference else adm_statistics(reference["pool3"])
    out: dict[str, float | None] = {"fid": adm_frechet_distance(*adm_statistics(sample["pool3"]), mu_r, sigma_r)}
    out["sfid"] = None
    if "spatial" in sample and ("mu_s" in reference or "spatial" in reference):
        stats_r = (
            (reference["mu_s"], reference["sigma_s"]) if "mu_s" in reference else adm_statistics(reference["spatial"])
        )
        out["sfid"] = adm_frechet_distance(*adm_statistics(sample["spatial"]), *stats_r)
    out["inception_score"] = None
    if softmax_weight is not None:
        out["inception_score"] = adm_inception_score(adm_softmax(sample["pool3"], softmax_weight))
    out["precision"], out["recall"] = adm_precision_recall(
        reference["pool3"], sample["pool3"], distance_dtype=distance_dtype
    )
    out["saturation_diff"] = out["saturation_generated"] = out["saturation_real"] = None
    if "saturation" in sample and "saturation" in reference:
        out["saturation_generated"] = float(np.mean(sample["saturation"]))
        out["saturation_real"] = float(np.mean(reference["saturation"]))
        out["saturation_diff"] = saturation_difference(sample["saturation"], reference["saturation"])
    return out
