"""Devices, mixed precision and data parallelism: torchrun with gloo on the CPU gives the single-process model and the
single-process sample set; a run resumes with another process count; a sample does not depend on the set's size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gmflow.harness import devices
from gmflow.harness.dit import build_dit
from gmflow.harness.mlp2d import MLP2D
from gmflow.harness.sampling import generate

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
TRAIN_2D = ["2d", "train", "--dataset", "gmm2d", "--method", "gmflow", "-K", "4", "--width", "32", "--depth", "2",
            "--batch-size", "64", "--micro-batch-size", "16", "--warmup-steps", "2", "--checkpoint-every", "3",
            "--device", "cpu", "--quiet"]
TRAIN_IMAGES = ["images", "train", "--dataset", "digits", "--network", "dit-digits-tiny", "--method", "gmflow", "-K",
                "2", "--spectral", "--batch-size", "32", "--micro-batch-size", "16", "--warmup-steps", "2",
                "--checkpoint-every", "3", "--device", "cpu", "--quiet"]


def cli(args: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "gmflow.experiments.cli"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes), "-m", "gmflow.experiments.cli"]
    res = subprocess.run(launcher + args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def max_difference(a: Path, b: Path) -> float:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return max((ta[k] - tb[k]).abs().max().item() for k in ta)


@pytest.mark.parametrize("args", [TRAIN_2D, TRAIN_IMAGES], ids=["2d-gm", "images-gm-spectral"])
def test_two_processes_train_the_single_process_model(tmp_path, args):
    """2 gloo processes x 2 accumulated micro-batches end at the weights of 1 process x 4 micro-batches."""
    cli(args + ["--steps", "6", "--out", str(tmp_path / "one")])
    cli(args + ["--steps", "6", "--out", str(tmp_path / "two")], processes=2)
    files = ["model.safetensors", "ema.safetensors"] + (["spectrum_ema.safetensors"] if "--spectral" in args else [])
    for f in files:
        assert max_difference(tmp_path / "one" / f, tmp_path / "two" / f) <= 1e-6, f
    assert '"processes": 2' in (tmp_path / "two" / "run.json").read_text()


def test_stopped_two_process_run_resumes_on_one(tmp_path):
    """A 2-process run stopped after its checkpoint at step 3, resumed by 1 process to step 6, equals an
    uninterrupted 1-process run of 6 steps (a finished run called with more steps continues as a resumed one)."""
    cli(TRAIN_2D + ["--steps", "6", "--out", str(tmp_path / "straight")])
    cli(TRAIN_2D + ["--steps", "3", "--out", str(tmp_path / "resumed")], processes=2)
    cli(TRAIN_2D + ["--steps", "6", "--out", str(tmp_path / "resumed")])
    for f in ("model.safetensors", "ema.safetensors"):
        assert max_difference(tmp_path / "straight" / f, tmp_path / "resumed" / f) <= 1e-6, f


def test_two_process_sample_set_is_bit_identical(tmp_path):
    cli(TRAIN_IMAGES + ["--steps", "2", "--out", str(tmp_path / "run")])
    sample = ["images", "sample", "--run-dir", str(tmp_path / "run"), "--solver", "gm-sde-2", "--nfe", "4",
              "--num-samples", "50", "--block-size", "16", "--guidance", "probabilistic", "--guidance-scale", "0.3",
              "--device", "cpu", "--quiet"]
    cli(sample + ["--out", str(tmp_path / "one.npz")])
    cli(sample + ["--out", str(tmp_path / "two.npz")], processes=2)
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert one["images"].shape == (50, 1, 8, 8)
    assert np.array_equal(one["images"], two["images"]) and np.array_equal(one["labels"], two["labels"])


def test_processes_must_divide_the_micro_batches(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "gmflow.experiments.cli"]
    args = [a for a in TRAIN_2D if a not in ("--micro-batch-size", "16")]
    res = subprocess.run(launcher + args + ["--steps", "2", "--out", str(tmp_path / "r")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "cannot share 1 micro-batches" in res.stderr


@pytest.mark.parametrize("solver", ["gm-sde-2", "gm-ode-2", "euler"])
def test_sample_depends_only_on_its_block(solver):
    """Sample i is the same in a set of 7 (a partial second block) and in a set of 12, bit for bit."""
    torch.manual_seed(0)
    method = "fm" if solver == "euler" else "gmflow"
    net = MLP2D("velocity" if method == "fm" else "gm", 4, 32, 2)
    a, _ = generate(net, method, solver, 4, 7, (2,), seed=3, block_size=5, substeps=2, progress=False)
    b, _ = generate(net, method, solver, 4, 12, (2,), seed=3, block_size=5, substeps=2, progress=False)
    assert a.shape == (7, 2) and np.array_equal(a, b[:7])


def test_bf16_autocasts_the_network_only():
    """bf16 runs the DiT's forward in bfloat16 and hands back a float32 GM close to the float32 one."""
    torch.manual_seed(0)
    net = build_dit("dit-digits-tiny", "gm", 4).eval()
    x, t, y = torch.randn(8, 1, 8, 8), torch.full((8,), 500.0), torch.arange(8) % 10
    with torch.no_grad():
        ref = net(x, t, y)
        out = devices.Autocast(net, torch.device("cpu"), "bf16")(x, t, y)
    assert out.means.dtype == out.logweights.dtype == out.logstds.dtype == torch.float32
    assert not torch.equal(out.means, ref.means)  # it did run in bfloat16
    err = (out.means - ref.means).norm() / ref.means.norm()
    assert err < 0.03
    assert devices.Autocast(net, torch.device("cpu"), "bf16").null_label == net.null_label


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cpu:0", "tpu", ""])
def test_device_names_are_checked(name):
    with pytest.raises(ValueError, match="device must be one of"):
        devices.check_device_name(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_refused_clearly(tmp_path):
    res = subprocess.run([sys.executable, "-m", "gmflow.experiments.cli", *TRAIN_2D[:-3], "--device", "cuda",
                          "--steps", "2", "--out", str(tmp_path / "r")], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "has no CUDA GPU" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_noise_is_drawn_on_the_generator_device():
    """The solvers' noise comes from the CPU generator whatever the tensor's device (here the meta device)."""
    from gmflow.gm import draw

    gen = torch.Generator().manual_seed(0)
    out = draw("randn", torch.empty(3, 2, device="meta"), gen)
    assert out.device.type == "meta"
    assert not torch.equal(torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=torch.Generator()
                                                                          .manual_seed(0)))  # the stream advanced


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_sample_set_equals_the_cpu_set():
    torch.manual_seed(0)
    net = build_dit("dit-digits-tiny", "gm", 4)
    labels = torch.arange(20) % 10
    kw = dict(labels=labels, null_label=net.null_label, progress=False, guidance="probabilistic", scale=0.3)
    cpu, _ = generate(net, "gmflow", "gm-sde-2", 4, 20, (1, 8, 8), block_size=10, device="cpu", **kw)
    gpu, _ = generate(net, "gmflow", "gm-sde-2", 4, 20, (1, 8, 8), block_size=10, device="cuda", **kw)
    assert np.abs(cpu - gpu).max() < 1e-3
