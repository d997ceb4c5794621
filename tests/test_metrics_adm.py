"""The ADM evaluation suite (gmflow.harness.metrics_adm) against brute-force float64 / float16 versions written here
from the evaluator's formulas, hand-checkable cases, this project's metrics_images where they should agree, the ADM
pixel protocol (uint8 conversion, Inception input) and the batch files (gmflow.harness.adm_batches)."""

import colorsys
import json
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from gmflow.harness import adm_batches as ab
from gmflow.harness import metrics_adm as ma
from gmflow.harness import metrics_images as mi
from gmflow.harness.data_images import to_uint8, to_unit_range

# ------------------------------------------------------------------------------------------------- brute force


def brute_sq_dist(a, b):
    """Full float64 matrix of squared distances from explicit differences."""
    return ((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1)


def brute_sq_dist_f16(a, b):
    """The evaluator's float16 formula with numpy's native float16 arithmetic (norms and product accumulated in
    float32 and stored as float16), the whole matrix at once, no fallback."""
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    na = np.square(a16).sum(1, dtype=np.float32).astype(np.float16)
    nb = np.square(b16).sum(1, dtype=np.float32).astype(np.float16)
    prod = (a16.astype(np.float32) @ b16.astype(np.float32).T).astype(np.float16)
    d = (na[:, None] - np.float16(2) * prod) + nb[None, :]
    return np.maximum(d, np.float16(0)).astype(np.float32)


def brute_pr(ref, smp, dist, k=3):
    """Radii = entry k of each sorted full row (self included); ``<=`` membership."""
    r_ref = np.sort(dist(ref, ref), axis=1)[:, k]
    r_smp = np.sort(dist(smp, smp), axis=1)[:, k]
    d = dist(ref, smp)
    precision = np.mean([(d[:, j] <= r_ref).any() for j in range(len(smp))])
    recall = np.mean([(d[i, :] <= r_smp).any() for i in range(len(ref))])
    return r_ref, r_smp, precision, recall


def features(seed, n, d=32, shift=0.0):
    """pool3-like: non-negative, skewed (ReLU of a Gaussian plus a mean)."""
    rng = np.random.default_rng(seed)
    return (np.maximum(rng.normal(0.4 + shift, 0.6, size=(n, d)), 0)).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------- FID


def test_fid_matches_eigenvalue_formula_and_project_fid():
    """Tr sqrtm(S1 S2) = sum of square roots of the eigenvalues of S1 S2 (computed here with a general eigvals)."""
    a, b = features(0, 400, 24), features(1, 300, 24, shift=0.2)
    (mu1, s1), (mu2, s2) = ma.adm_statistics(a), ma.adm_statistics(b)
    assert mu1.dtype == np.float32 and s1.dtype == np.float64  # np.mean keeps float32, np.cov is float64
    ev = np.linalg.eigvals(s1 @ s2)
    diff = mu1 - mu2  # float32, as in the evaluator when both means come from activations (|diff|^2 in float32)
    brute = diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(ev + 0j).real.sum()
    got = ma.adm_frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(brute, rel=1e-9)
    # this project's FID (float64 means, symmetric eigh root) agrees up to the float32 mean of the activations
    assert got == pytest.approx(mi.fid(a, b), rel=1e-6)


def test_fid_of_identical_sets_is_zero_and_a_shift_adds_its_square():
    a = features(2, 500, 16)
    mu, s = ma.adm_statistics(a)
    assert abs(ma.adm_frechet_distance(mu, s, mu, s)) < 1e-9
    assert ma.adm_frechet_distance(mu, s, mu + 3.0, s) == pytest.approx(16 * 9.0, abs=1e-6)


def test_fid_singular_product_uses_the_eps_offset():
    """Rank-deficient covariances: the root of S1 S2 is not finite, so eps = 1e-6 goes on both diagonals (with the
    evaluator's warning) and the value is the FID of the offset covariances."""
    s = np.zeros((3, 3))
    s[0, 0] = 1.0
    mu = np.zeros(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = ma.adm_frechet_distance(mu, s, mu, s)
    if caught and any("singular product" in str(w.message) for w in caught):
        assert value == pytest.approx(0.0, abs=1e-5)
    else:  # this scipy's sqrtm found a finite root directly: the value is still the exact 0
        assert value == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="mismatched"):
        ma.adm_frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_spatial_features_are_the_first_seven_channels_channels_last():
    a = np.arange(2 * 17 * 17 * 192, dtype=np.float32).reshape(2, 17, 17, 192)
    s = ma.adm_spatial_features(a)
    assert s.shape == (2, 2023)
    assert np.array_equal(s[1, :7], a[1, 0, 0, :7]) and np.array_equal(s[1, 7:14], a[1, 0, 1, :7])


# ------------------------------------------------------------------------------------------------- Inception Score


def test_inception_score_matches_scipy_kl_per_split():
    rng = np.random.default_rng(3)
    pool3, w = rng.random((700, 64)).astype(np.float32), rng.normal(0, 0.3, (64, 50)).astype(np.float32)
    probs = ma.adm_softmax(pool3, w)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(1), 1, atol=1e-6)
    p64 = scipy.special.softmax(pool3.astype(np.float64) @ w, axis=1)
    brute = np.mean(
        [
            np.exp(np.mean([scipy.stats.entropy(r, part.mean(0)) for r in part]))
            for part in (p64[:300], p64[300:600], p64[600:])
        ]
    )
    assert ma.adm_inception_score(probs, split_size=300) == pytest.approx(brute, rel=1e-5)


def test_inception_score_hand_cases():
    assert ma.adm_inception_score(ma.adm_softmax(np.zeros((20, 8)), np.zeros((8, 1008)))) == pytest.approx(1.0)
    confident = ma.adm_softmax(30.0 * np.eye(10, 1008)[np.arange(100) % 10], np.eye(1008))  # 10 classes, equal use
    assert ma.adm_inception_score(confident) == pytest.approx(10.0, rel=1e-4)
    # splits of 5000: two splits over 10 classes then one of 2000 rows over 4 classes -> mean (10 + 10 + 4) / 3
    labels = np.concatenate([np.arange(10000) % 10, np.arange(2000) % 4])
    probs = np.full((12000, 1008), 1e-12, np.float32)
    probs[np.arange(12000), labels] = 1.0
    assert ma.adm_inception_score(probs) == pytest.approx(8.0, rel=1e-4)


# ---------------------------------------------------------------------------------------------- precision / recall


def test_precision_recall_float64_equals_brute_force_and_project_knn():
    ref, smp = features(4, 300, 32), features(5, 250, 32, shift=0.15)
    r_ref, r_smp, p, r = brute_pr(ref, smp, brute_sq_dist)
    assert np.allclose(ma.adm_manifold_radii(ref, distance_dtype="float64"), r_ref, rtol=1e-12, atol=1e-12)
    assert np.allclose(ma.adm_manifold_radii(smp, distance_dtype="float64"), r_smp, rtol=1e-12, atol=1e-12)
    got = ma.adm_precision_recall(ref, smp, distance_dtype="float64")
    assert got == (p, r) and 0.1 < p < 0.99 and 0.1 < r < 0.99
    # this project's k-NN precision / recall (Euclidean radii from scikit-learn): the same sets, the same fractions
    assert mi.precision_recall(ref, smp) == pytest.approx(got, abs=1e-12)


def test_precision_recall_float16_equals_brute_force_float16():
    ref, smp = features(6, 300, 48), features(7, 280, 48, shift=0.1)
    r_ref, r_smp, p, r = brute_pr(ref, smp, brute_sq_dist_f16)
    assert np.array_equal(ma.adm_manifold_radii(ref), r_ref) and np.array_equal(ma.adm_manifold_radii(smp), r_smp)
    assert ma.adm_precision_recall(ref, smp) == (p, r)
    p64, r64 = ma.adm_precision_recall(ref, smp, distance_dtype="float64")
    assert abs(p - p64) < 0.02 and abs(r - r64) < 0.02  # float16 moves only points near a ball's boundary


def test_blocks_do_not_change_results_and_ties_count_inside():
    """Integer features: every distance is exact in float16, so blocks of any size give the same radii, and the many
    equal distances exercise ``<=``."""
    rng = np.random.default_rng(8)
    ref, smp = rng.integers(0, 4, (130, 16)).astype(np.float32), rng.integers(0, 5, (110, 16)).astype(np.float32)
    r_ref, r_smp, p, r = brute_pr(ref, smp, brute_sq_dist)
    for rows, cols in ((10000, 10000), (17, 40), (50, 9)):
        kw = dict(row_batch_size=rows, col_batch_size=cols)
        assert np.array_equal(ma.adm_manifold_radii(ref, **kw), r_ref)
        assert ma.adm_precision_recall(ref, smp, **kw) == (p, r)
        assert ma.adm_precision_recall(ref, smp, distance_dtype="float64", **kw) == (p, r)


def test_hand_cases_radii_self_distance_duplicates_and_boundary():
    line = np.arange(10, dtype=np.float32)[:, None]  # points 0..9 on a line
    radii = ma.adm_manifold_radii(line)
    assert radii[0] == 9 and radii[5] == 4 and radii[9] == 9  # squared distance to the 3rd nearest other point
    # a sample exactly on point 0's ball (distance 3) is inside, one at 3.5 is in no ball
    assert (
        ma.adm_precision_recall(
            line, np.array([[-3.0], [-3.5], [4.2], [40.0]], np.float32), sample_radii=np.zeros(4, np.float32)
        )[0]
        == 0.5
    )
    # three exact duplicates: the self distance is one of the four zeros, so the radius is 0
    dup = np.array([[0.0], [0.0], [0.0], [0.0], [5.0], [7.0], [9.0]], np.float32)
    assert ma.adm_manifold_radii(dup)[0] == 0 and ma.adm_manifold_radii(dup, distance_dtype="float64")[0] == 0
    a = features(9, 200, 16)
    assert ma.adm_precision_recall(a, a) == (1.0, 1.0)
    assert ma.adm_precision_recall(a, a + 100.0) == (0.0, 0.0)


def test_float16_overflow_falls_back_to_float32_per_block():
    rng = np.random.default_rng(10)
    small, big = rng.random((20, 8)).astype(np.float32), 300 + rng.random((20, 8)).astype(np.float32)
    assert np.array_equal(ma.adm_squared_distances(small, small), brute_sq_dist_f16(small, small))
    d = ma.adm_squared_distances(big, small)  # |big|^2 = 8 * 300^2 > 65504: the float16 block overflows
    assert np.isfinite(d).all() and np.allclose(d, brute_sq_dist(big, small), rtol=1e-5)
    # blocks of 20 rows / columns: only those touching `big` leave float16
    both = np.concatenate([small, big])
    radii = ma.adm_manifold_radii(both, row_batch_size=20, col_batch_size=20)
    f16_rows = np.sort(brute_sq_dist_f16(small, small), axis=1)[:, :4]  # small x small block in float16 ...
    f32_rows = np.sort(ma.adm_squared_distances(small, big), axis=1)[:, :4]  # ... small x big in float32
    assert np.array_equal(radii[:20], np.sort(np.concatenate([f16_rows, f32_rows], 1), axis=1)[:, 3])
    assert np.isfinite(radii).all()


# ------------------------------------------------------------------------------------------------------ saturation


def test_hsv_saturation_matches_colorsys():
    rng = np.random.default_rng(11)
    x = rng.random((3, 5, 7, 3))
    x[0, 0, 0] = 0.0  # black: max = 0 -> saturation 0
    x[1, 2, 3] = 0.4  # gray
    expected = np.array([[colorsys.rgb_to_hsv(*px)[1] for px in img.reshape(-1, 3)] for img in x]).mean(1)
    assert np.allclose(ma.hsv_saturation(x), expected, rtol=0, atol=1e-15)
    assert np.allclose(ma.hsv_saturation(x.transpose(0, 3, 1, 2), channels_last=False), expected, atol=1e-15)
    u8 = (x * 255).astype(np.uint8)
    exp_u8 = np.array([[colorsys.rgb_to_hsv(*(px / 255.0))[1] for px in img.reshape(-1, 3)] for img in u8]).mean(1)
    assert np.allclose(ma.hsv_saturation(u8), exp_u8, atol=1e-15)
    assert ma.saturation_difference(ma.hsv_saturation(u8), ma.hsv_saturation(u8)) == 0.0
    with pytest.raises(ValueError, match="RGB"):
        ma.hsv_saturation(np.zeros((2, 8, 8, 1)))


# --------------------------------------------------------------------------------------------- pixel protocol


def test_adm_uint8_conversion_truncates():
    x = torch.tensor([-1.0, 1.0, 0.0, 1 - 1e-6, -1 + 1e-6, 1.5, -7.0, 2 / 127.5 - 1 - 1e-6, float("inf")])
    assert ab.adm_to_uint8(x).tolist() == [0, 255, 127, 254, 0, 255, 0, 1, 255]
    assert to_uint8(torch.tensor([0.0, 1 - 1e-6])).tolist() == [128, 255]  # this project's to_uint8 rounds
    with pytest.raises(ValueError, match="NaN"):
        ab.adm_to_uint8(torch.tensor([0.0, float("nan")]))
    with pytest.raises(TypeError):
        ab.adm_to_uint8(torch.zeros(2, dtype=torch.uint8))
    # data levels v / 127.5 - 1 in float32 do not all survive truncation; rounding keeps every level
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(to_unit_range(levels)), levels)
    lost = (ab.adm_to_uint8(to_unit_range(levels)) != levels).sum().item()
    assert lost > 0 and ((ab.adm_to_uint8(to_unit_range(levels)).int() - levels.int()) >= -1).all()


def test_inception_input_is_the_graphs_resize_and_scaling():
    from gmflow.harness.features import InceptionTFFeatures, adm_inception_input, resize_bilinear_tf1

    img = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    x = adm_inception_input(img)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    ref = (resize_bilinear_tf1(img.permute(0, 3, 1, 2).double(), (299, 299)) - 128) / 128
    assert torch.allclose(x.double(), ref, atol=1e-5)
    # this project's inception-tf preprocessing of the same images (channels first) gives the same input
    assert torch.allclose(InceptionTFFeatures.preprocess(img.permute(0, 3, 1, 2)), x, atol=1e-6)
    with pytest.raises(ValueError, match="B, H, W, 3"):
        adm_inception_input(img.permute(0, 3, 1, 2))


def test_adm_activations_pool3_equal_inception_tf_features():
    from gmflow.harness.features import InceptionTFFeatures, adm_activations

    ext = InceptionTFFeatures()
    img = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    pool3, spatial = adm_activations(ext, img)
    assert pool3.shape == (2, 2048) and spatial.shape == (2, 2023) and (spatial >= 0).all()  # after the ReLU
    assert np.allclose(pool3, ext.features(img.permute(0, 3, 1, 2)), atol=1e-4)


# ------------------------------------------------------------------------------------------------- batch files


def test_reference_batch_made_the_adm_way_round_trips(tmp_path):
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    stats = {"mu": rng.random(2048), "sigma": np.eye(2048), "mu_s": rng.random(2023), "sigma_s": np.eye(2023)}
    np.savez(tmp_path / "ref.npz", images, **stats)  # how the evaluator's reference batches are laid out
    info = ab.read_adm_batch_info(tmp_path / "ref.npz")
    assert (info.num_images, info.height, info.width, info.has_statistics) == (7, 5, 6, True)
    assert info.uint8_conversion == ab.UNRECORDED
    assert np.array_equal(np.concatenate(list(ab.iter_adm_images(tmp_path / "ref.npz", 3))), images)
    got = ab.read_reference_statistics(tmp_path / "ref.npz")
    assert all(np.array_equal(got[k], v) for k, v in stats.items())

    ab.write_adm_batch(tmp_path / "s.npz", images, np.arange(7), uint8_conversion="adm-truncate")
    info = ab.read_adm_batch_info(tmp_path / "s.npz")
    assert info.uint8_conversion == "adm-truncate" and "arr_1" in info.keys
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_1"], np.arange(7))
    np.savez_compressed(tmp_path / "c.npz", images)  # compressed archives stream too
    assert np.array_equal(np.concatenate(list(ab.iter_adm_images(tmp_path / "c.npz", 4))), images)
    assert ab.read_reference_statistics(tmp_path / "c.npz") == {}


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"arr_0": np.zeros((2, 4, 4, 3), np.float32)}, "uint8 RGB"),
        ({"arr_0": np.zeros((2, 3, 4, 4), np.uint8)}, "channels first"),
        ({"arr_0": np.zeros((0, 4, 4, 3), np.uint8)}, "no images"),
        ({"images": np.zeros((2, 3, 4, 4), np.uint8)}, "gmflow-bench sample set"),
        ({"arr_0": np.zeros((2, 4, 4, 3), np.uint8), "arr_1": np.zeros(3, np.int64)}, "arr_1"),
    ],
)
def test_bad_batches_are_refused_with_the_reason(tmp_path, arrays, match):
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        ab.read_adm_batch_info(tmp_path / "b.npz")


def test_bad_files_and_statistics_are_refused(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        ab.read_adm_batch_info(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz"):
        ab.read_adm_batch_info(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        ab.read_adm_batch_info(tmp_path / "missing.npz")
    np.savez(tmp_path / "r.npz", np.zeros((2, 4, 4, 3), np.uint8), mu=np.zeros(2048))
    with pytest.raises(ValueError, match="without sigma"):
        ab.read_reference_statistics(tmp_path / "r.npz")
    np.savez(tmp_path / "r2.npz", np.zeros((2, 4, 4, 3), np.uint8), mu=np.zeros(10), sigma=np.eye(10))
    with pytest.raises(ValueError, match="shape"):
        ab.read_reference_statistics(tmp_path / "r2.npz")


def test_adm_metrics_of_feature_sets_and_stored_statistics():
    smp = {"pool3": features(13, 120, 64), "saturation": np.full(120, 0.30)}
    ref = {"pool3": features(14, 100, 64), "saturation": np.full(100, 0.318)}
    out = ma.adm_metrics(smp, ref)
    assert out["inception_score"] is None and out["sfid"] is None
    assert out["saturation_diff"] == pytest.approx(-0.018)
    mu, sigma = ma.adm_statistics(ref["pool3"])
    stored = ma.adm_metrics(smp, {**ref, "mu": mu + 1.0, "sigma": sigma})  # stored statistics win, as in the evaluator
    assert stored["fid"] > out["fid"] and stored["precision"] == out["precision"]
    json.dumps(out)  # plain floats and None: ready for the JSON record


# ------------------------------------------------------------------------------------------------------------ CLI


def test_evaluate_adm_cli_writes_the_record_and_reuses_cached_features(tmp_path, monkeypatch, capsys):
    """The command's wiring on tiny batches. The 2048-d matrix square roots (about a minute each on 2 cores) are
    replaced by a stub here; their formula is tested above."""
    from gmflow.experiments.cli import main

    monkeypatch.setattr(ma, "_sqrtm", lambda a: np.zeros_like(a))
    rng = np.random.default_rng(15)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ab.write_adm_batch(tmp_path / "s.npz", ab.to_adm_layout(ab.adm_to_uint8(x)), np.arange(6), "adm-truncate")
    np.savez(tmp_path / "ref.npz", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    argv = [
        "images",
        "evaluate-adm",
        "--samples",
        str(tmp_path / "s.npz"),
        "--reference",
        str(tmp_path / "ref.npz"),
        "--out",
        str(tmp_path / "m.json"),
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--quiet",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    rec = json.loads((tmp_path / "m.json").read_text())
    assert rec["num_images"] == 6 and rec["uint8_conversion"] == "adm-truncate"
    assert rec["feature_extractor"] == "inception-tf-adm" and rec["features_from_cache"] == {
        "samples": False,
        "reference": False,
    }
    assert len(rec["reference_sha1"]) == 40 and rec["fid_reference_statistics"] == "computed from arr_0"
    assert all(rec[k] is not None for k in ("fid", "sfid", "precision", "recall", "saturation_diff"))
    assert any("50,000" in d for d in rec["protocol_deviations"])
    assert (tmp_path / "s.inception-tf-adm.npz").is_file() and (tmp_path / "ref.inception-tf-adm.npz").is_file()
    assert main(argv) == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["features_from_cache"] == {"samples": True, "reference": True} and again["fid"] == rec["fid"]

    np.savez(tmp_path / "bad.npz", np.zeros((2, 3, 8, 8), np.uint8))
    assert main([*argv[:2], "--samples", str(tmp_path / "bad.npz"), *argv[4:]]) == 2
    assert "channels first" in capsys.readouterr().err


def test_softmax_weight_files(tmp_path):
    """torch-fidelity's state dict (fc.weight (1008, 2048)) or an .npy in either orientation -> (2048, 1008)."""
    from gmflow.harness.features import load_softmax_weight

    w = np.random.default_rng(16).normal(size=(2048, 1008)).astype(np.float32)
    torch.save({"fc.weight": torch.from_numpy(w.T.copy()), "fc.bias": torch.zeros(1008)}, tmp_path / "tf.pth")
    np.save(tmp_path / "w.npy", w)
    np.save(tmp_path / "wt.npy", w.T)
    for name in ("tf.pth", "w.npy", "wt.npy"):
        assert np.array_equal(load_softmax_weight(tmp_path / name), w)
    torch.save({"other": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="fc.weight"):
        load_softmax_weight(tmp_path / "bad.pth")
    np.save(tmp_path / "small.npy", np.zeros((2048, 1000)))
    with pytest.raises(ValueError, match="1008"):
        load_softmax_weight(tmp_path / "small.npy")
