"""Unconditional CIFAR-10 (the paper's Table 5): the binary-version reader, the U-Net's GM and velocity heads, the
stages through the CLI on synthetic data, and (marked slow) the smoke configuration through the DAG."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gmflow.experiments.cli import main as cli
from gmflow.harness import data_images as di
from gmflow.harness.unet import UNET_VARIANTS, build_unet

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- the binary reader


def _records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The binary layout written out by hand: per record the label byte, then the R, G, B planes row-major."""
    out = bytearray()
    for img, lab in zip(images, labels, strict=True):
        out.append(int(lab))
        for c in range(3):
            for h in range(32):
                out.extend(int(v) for v in img[c, h])
    return bytes(out)


def test_reader_parses_the_binary_layout_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 9, 4])
    (tmp_path / "hand.bin").write_bytes(_records(images, labels))
    x, y = di.read_cifar10_bin(tmp_path / "hand.bin")
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(x, images) and np.array_equal(y, labels)
    di.write_cifar10_bin(tmp_path / "ours.bin", images, labels)
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "hand.bin").read_bytes()


def test_reader_refuses_truncated_files_and_bad_labels(tmp_path):
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    di.write_cifar10_bin(tmp_path / "a.bin", images, np.array([1, 2]))
    (tmp_path / "cut.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"6145 bytes, not a whole number of 3073-byte records"):
        di.read_cifar10_bin(tmp_path / "cut.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="truncated"):
        di.read_cifar10_bin(tmp_path / "empty.bin")
    raw = bytearray((tmp_path / "a.bin").read_bytes())
    raw[3073] = 10  # the second record's label
    (tmp_path / "label.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="record 1 has label 10, outside 0..9"):
        di.read_cifar10_bin(tmp_path / "label.bin")


def test_loader_finds_the_folder_and_says_how_to_get_the_binary_version(tmp_path):
    folder = di.write_synthetic_cifar10(tmp_path / "data", num_train=23, num_test=7)
    assert folder == tmp_path / "data" / "cifar-10-batches-bin"
    for root in (tmp_path / "data", folder):  # the parent or the folder itself
        x, y = di.load_cifar10("train", root)
        assert x.shape == (23, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.equal(y, torch.arange(23) % 10)
    assert di.load_images_uint8("cifar10", "test", tmp_path / "data")[0].shape == (7, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="never downloaded.*cifar-10-binary.tar.gz"):
        di.load_cifar10("train", None)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3.bin"):
        di.load_cifar10("train", tmp_path / "data")
    py = tmp_path / "py" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    (py / "data_batch_1").write_bytes(b"\x80\x04 not read")  # a pickle is never opened
    with pytest.raises(FileNotFoundError, match="python version.*never loads.*binary version"):
        di.load_cifar10("train", tmp_path / "py")


def test_cifar10_runs_are_unconditional():
    from gmflow.harness.datasets import dataset_info
    from gmflow.harness.runs import network_spec

    info = dataset_info("cifar10")
    assert info.sample_shape == (3, 32, 32) and info.num_classes == 0 and info.labels(5) is None
    assert set(info.sample_arrays(np.zeros((2, 3, 32, 32), np.float32))) == {"images"}
    spec = network_spec("cifar10", "unet-cifar10", "gmflow", 2)
    assert spec["num_classes"] == 0 and "patch_size" not in spec
    with pytest.raises(ValueError, match="U-Net"):
        network_spec("cifar10", "unet-tiny", "gmflow", 2, dit={"patch_size": 2})


# ------------------------------------------------------------------------------------------------------ the U-Net


def _inputs(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.rand(b, generator=g) * 1000


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gm_head_shapes_and_init(k):
    torch.manual_seed(0)
    net = build_unet("unet-tiny", "gm", k).eval()
    x, t = _inputs()
    gm = net(x, t)
    assert gm.means.shape == (3, k, 3, 32, 32) and gm.logweights.shape == (3, k, 1, 32, 32)
    assert gm.logstds.shape == (3, 1, 1, 1, 1)
    assert {gm.means.dtype, gm.logweights.dtype, gm.logstds.dtype} == {torch.float32}
    torch.testing.assert_close(gm.logweights.exp().sum(1), torch.ones(3, 1, 32, 32))
    assert torch.count_nonzero(gm.logstds) == 0  # s = 1 at init (zero last layer)
    assert net.out_channels == k * 4 and net.null_label is None
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, torch.zeros(3, dtype=torch.long))


def test_velocity_head_shape():
    net = build_unet("unet-tiny", "velocity").eval()
    x, t = _inputs()
    v = net(x, t)
    assert v.shape == (3, 3, 32, 32) and v.dtype == torch.float32
    assert not hasattr(net, "logstd_mlp") and net.out_channels == 3


def test_logstd_depends_on_t_only():
    torch.manual_seed(0)
    net = build_unet("unet-tiny", "gm", 2).eval()
    with torch.no_grad():
        net.logstd_mlp[-1].weight.normal_()
    x, t = _inputs(b=2)
    a, b = net(x, t).logstds, net(torch.randn_like(x), t).logstds
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, net(x, t.flip(0)).logstds)


def test_k1_is_the_gaussian():
    """K = 1: one weight of 1 and the velocity NLL is the isotropic Gaussian's, computed here in float64."""
    from gmflow.loss import velocity_nll

    torch.manual_seed(0)
    net = build_unet("unet-tiny", "gm", 1).eval()
    with torch.no_grad():
        net.logstd_mlp[-1].bias.fill_(-0.7)
    x, t = _inputs()
    u = torch.randn_like(x)
    with torch.no_grad():
        gm = net(x, t)
    assert torch.count_nonzero(gm.logweights) == 0
    mu, s = gm.means[:, 0].double(), math.exp(-0.7)
    per_pixel = (0.5 * (u.double() - mu).square() / s**2 + math.log(s) + 0.5 * math.log(2 * math.pi)).sum(1)
    torch.testing.assert_close(velocity_nll(gm, u).double(), per_pixel.mean((1, 2)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gm.mean(), gm.means[:, 0])


@pytest.mark.parametrize("method", ["gmflow", "fm"])
def test_gradients_reach_every_parameter(method):
    """One training loss (transition loss or L2 flow matching) reaches every weight; the log-std MLP's last layer is
    randomised first, since its zero init blocks the gradient to the layer before."""
    from gmflow.harness.losses import FlowMatchingLoss, GMFlowLoss

    torch.manual_seed(0)
    net = build_unet("unet-tiny", "gm" if method == "gmflow" else "velocity", 2)
    if method == "gmflow":
        with torch.no_grad():
            net.logstd_mlp[-1].weight.normal_()
    loss_fn = GMFlowLoss(0.5, 2.0) if method == "gmflow" else FlowMatchingLoss()
    loss_fn(net, torch.rand(4, 3, 32, 32) * 2 - 1, None, torch.Generator().manual_seed(0)).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_unet_cifar10_is_the_ddpm_network():
    """Ho et al. 2020's CIFAR-10 U-Net has 35.7M parameters (constructed only, no forward)."""
    from gmflow.harness.dit import count_parameters

    vel = build_unet("unet-cifar10", "velocity")
    assert count_parameters(vel) == 35_746_307
    assert [type(b).__name__ for b in vel.unet.down_blocks] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                                                "DownBlock2D"]
    assert [type(b).__name__ for b in vel.unet.up_blocks] == ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]
    gm = build_unet("unet-cifar10", "gm", 2)
    extra = count_parameters(gm) - count_parameters(vel)
    assert extra == 5 * (128 * 9 + 1) + (512 * 512 + 512) + (512 + 1)  # 5 more output channels + the log-std MLP
    assert extra / count_parameters(vel) < 0.01
    assert UNET_VARIANTS["unet-cifar10"].dropout == 0.1


# ------------------------------------------------------------------------------------------ the stages through the CLI


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Synthetic data; a GMFlow K = 2 run (with a SpectrumMLP) and a flow-matching run of the tiny U-Net."""
    d = tmp_path_factory.mktemp("cifar")
    assert cli(["images", "synthetic-cifar10", "--out", str(d / "data"), "--num-train", "40", "--num-test", "10"]) == 0
    base = ["images", "train", "--dataset", "cifar10", "--network", "unet-tiny", "--data-root", str(d / "data"),
            "--steps", "3", "--batch-size", "4", "--warmup-steps", "1", "--quiet"]
    gm = ["--method", "gmflow", "-K", "2", "--spectral", "--trans-ratio", "0.5"]
    assert cli([*base, *gm, "--out", str(d / "gm")]) == 0
    assert cli([*base, "--method", "fm", "--out", str(d / "fm")]) == 0
    return d


def test_unconditional_training_records(smoke):
    spec = json.loads((smoke / "gm" / "run.json").read_text())
    assert spec["num_classes"] == 0 and spec["network"] == "unet-tiny" and spec["num_components"] == 2
    assert spec["train"]["label_dropout"] == 0.0  # the CLI default 0.1 does not apply: no labels
    assert (smoke / "gm" / "spectrum_ema.safetensors").exists()


def test_sample_and_evaluate_through_the_cli(smoke):
    from gmflow.experiments.images.table5 import table5, table5_display

    d = smoke
    sets = {"gm": [("gm-sde-2", ["--spectral"])], "fm": [("ddpm-small", []), ("ddpm-large", [])]}
    assert cli(["images", "reference-features", "--dataset", "cifar10", "--extractor", "inception-tf", "--split",
                "train", "--num-images", "8", "--data-root", str(d / "data"), "--out", str(d / "ref.npz")]) == 0
    rows = []
    for run, solvers in sets.items():
        for solver, extra in solvers:
            out = d / run / f"{solver}.npz"
            assert cli(["images", "sample", "--run-dir", str(d / run), "--solver", solver, "--nfe", "2",
                        "--num-samples", "5", "--block-size", "5", "--quiet", "--out", str(out), *extra]) == 0
            data = np.load(out)
            assert set(data.files) == {"images", "record"} and data["images"].shape == (5, 3, 32, 32)
            assert json.loads(str(data["record"]))["nfe"] == 2
            metrics = d / run / f"{solver}.csv"
            assert cli(["images", "evaluate", "--samples", str(out), "--reference", str(d / "ref.npz"),
                        "--extractor", "inception-tf", "--kid-subset-size", "4", "--features-out",
                        str(d / run / f"{solver}_f.npz"), "--out", str(metrics)]) == 0
            rows.append(pd.read_csv(metrics))
    df = pd.concat(rows)
    fid = df[df.metric == "fid"]
    assert len(fid) == 3 and np.isfinite(fid.value).all() and set(fid.feature_extractor) == {"inception-tf"}
    t = table5(df, pd.read_csv(ROOT / "data/published/gmflow_icml2025.csv"))
    ours = t[t.status == "ours"]
    assert set(zip(ours.entry, ours.nfe, strict=True)) == {("DDPM small", 2), ("DDPM large", 2), ("GM-SDE 2", 2)}
    assert (t[(t.nfe == 10) & (t.entry == "GM-SDE 2")].paper == 9.11).all()
    assert (t[t.nfe == 100].status != "ours").all()
    shown = table5_display(t)
    assert shown.loc["GM-SDE 2 (run gm, spectral 1)", "NFE 100 (ours / paper)"] == "not run / 3.76"


def test_heldout_nll_of_an_unconditional_run(smoke, tmp_path):
    assert cli(["images", "nll", "--run-dir", str(smoke / "gm"), "--num-images", "4", "--times-per-image", "1",
                "--data-root", str(smoke / "data"), "--out", str(tmp_path / "nll.csv")]) == 0
    assert np.isfinite(pd.read_csv(tmp_path / "nll.csv").value).all()


# ------------------------------------------------------------------------------------------------------- the DAG


@pytest.mark.slow  # TF-Inception on 350 images dominates: minutes on 2 cores (run with -m slow)
def test_smoke_config_runs_through_the_dag(tmp_path):
    results, data = tmp_path / "results", tmp_path / "synthetic data"  # a space: every path is quoted
    assert cli(["images", "synthetic-cifar10", "--out", str(data), "--num-train", "60", "--num-test", "20"]) == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/cifar10-smoke.yaml",
           "--config", f"results={results}", f"images={{data_root: '{data}'}}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    t = pd.read_csv(results / "tables/table5_cifar10.csv")
    ours = t[t.status == "ours"]
    assert set(zip(ours.entry, ours.nfe, strict=True)) == {(e, n) for e in ("DDPM small", "DDPM large", "GM-SDE 2")
                                                           for n in (2, 4)}
    assert np.isfinite(ours.ours).all() and set(ours.num_samples) == {50}
    html = (results / "reports/table5_cifar10.html").read_text()
    assert "Traceback" not in html and "<table" in html
    assert "NFE 2 (ours / paper)" in html and "not run / 9.11" in html  # ours at NFE 2 / 4; the paper's NFEs not run


# ------------------------------------------------------------------------------------------------------ the configs


def test_configs_validate_and_state_table5():
    """The paper-scale config is Table 5's setting (K = 2 on the DDPM U-Net, GM-SDE 2 vs DDPM small / large at NFE
    10 / 25 / 50 / 100, 50K samples, TF-Inception FID vs the 50K training images) and needs a data root."""
    import copy

    import yaml
    from project import validate_config

    from gmflow.experiments.images.sweeps import image_points
    from gmflow.harness.schema import ConfigError

    raw = yaml.safe_load(open(ROOT / "config/cifar10.yaml"))
    with pytest.raises(ConfigError, match=r"'images.data_root'.*cifar10"):
        validate_config(copy.deepcopy(raw))
    raw["images"]["data_root"] = "/data/cifar10"
    img = validate_config(copy.deepcopy(raw))["images"]
    assert img["runs"]["gm-k2"] == {"method": "gmflow", "K": 2} and img["train"]["network"] == "unet-cifar10"
    assert img["reference"]["split"] == "train" and img["reference"]["inception_images"] == 50000
    assert img["sample"]["num_samples"] == 50000 and img["notebooks"] == ["table5_cifar10"]
    points = image_points(img)
    got = {(p["run"], p["solver"], p["nfe"], p["spectral"]) for p in points}
    want = {("fm", s, n, 0) for s in ("ddpm-small", "ddpm-large") for n in (10, 25, 50, 100)}
    want |= {("gm-k2", "gm-sde-2", n, sp) for n in (10, 25, 50, 100) for sp in (0, 1)}
    assert got == want and all(p["extractors"] == ["inception-tf"] and p["guidance"] == "none" for p in points)
    smoke = validate_config(yaml.safe_load(open(ROOT / "config/cifar10-smoke.yaml")))["images"]
    assert smoke["train"]["network"] == "unet-tiny" and smoke["sample"]["num_samples"] == 50
