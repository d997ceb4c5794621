"""The image stages on the tiny digits set: class-conditional training with label dropout and the SpectrumMLP resumes
exactly; guided and spectral sampling count their NFE; a GM model drives flow solvers through its mean; metrics rows."""

import json

import numpy as np
import pytest
import torch
from oracles import probabilistic_guidance_np

from gmflow.experiments.cli import main as cli
from gmflow.experiments.images.stages import train_images
from gmflow.harness import io
from gmflow.harness.adapters import Counted, NetworkFn, model_fn
from gmflow.harness.datasets import balanced_labels
from gmflow.harness.runs import network_spec
from gmflow.harness.train import TrainConfig, drop_labels


class _Killed(Exception):
    pass


def _cfg(**kw):
    return TrainConfig(**{"method": "gmflow", "num_components": 2, "trans_ratio": 0.5, "weight_scale": 2.0,
                          "steps": 8, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 4,
                          "time_sampler": "logit-normal", "label_dropout": 0.1, "grad_clip": 10.0, **kw})


def test_label_dropout_rate_and_null_class():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200000) % 10
    out = drop_labels(y, 0.1, 10, g)
    dropped = out == 10
    assert abs(dropped.float().mean().item() - 0.1) < 0.003  # 4.5 standard errors
    assert torch.equal(out[~dropped], y[~dropped])


def test_killed_image_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    spec = network_spec("digits", "dit-digits-tiny", "gmflow", 2, spectral=True)
    train_images(spec, _cfg(), tmp_path / "full", progress=False)
    import gmflow.harness.train as train_mod

    real_drop, calls = train_mod.drop_labels, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise _Killed
        return real_drop(*a, **k)

    monkeypatch.setattr(train_mod, "drop_labels", dying)
    with pytest.raises(_Killed):
        train_images(spec, _cfg(), tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train_mod, "drop_labels", real_drop)
    train_images(spec, _cfg(), tmp_path / "resumed", progress=False)
    for name in ("ema.safetensors", "model.safetensors", "spectrum_ema.safetensors"):
        a, b = io.load_safetensors(tmp_path / "full" / name), io.load_safetensors(tmp_path / "resumed" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def gm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("img") / "gm"
    assert cli(["images", "train", "--dataset", "digits", "--method", "gmflow", "-K", "2", "--network",
                "dit-digits-tiny", "--spectral", "--steps", "6", "--batch-size", "16", "--warmup-steps", "2", "--quiet",
                "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("solver,args,forwards_per_nfe", [
    ("gm-ode-2", ["--guidance", "probabilistic", "--guidance-scale", "0.4"], 1),
    ("gm-sde-2", ["--spectral", "--guidance", "probabilistic", "--guidance-scale", "0.4"], 1),
    ("gm-sde", ["--guidance", "cfg", "--guidance-scale", "2"], 1),
    ("dpm++-2m-sde", ["--guidance", "probabilistic", "--guidance-scale", "0.4"], 1),
    ("euler", [], 1),
])
def test_sampling_counts_and_writes_images(gm_run, tmp_path, solver, args, forwards_per_nfe):
    out = tmp_path / "s.npz"
    assert cli(["images", "sample", "--run-dir", str(gm_run), "--solver", solver, "--nfe", "3", "--num-samples", "30",
                "--block-size", "16", "--quiet", "--out", str(out), *args]) == 0
    data = np.load(out)
    rec = json.loads(str(data["record"]))
    assert data["images"].shape == (30, 1, 8, 8) and data["images"].dtype == np.uint8
    assert np.array_equal(data["labels"], np.arange(30) % 10)
    assert rec["nfe"] == 3 and rec["network_forwards"] == 3 * 2 * forwards_per_nfe  # 2 blocks of 16
    assert rec["spectral"] == int("--spectral" in args)


def test_bad_sampling_options_are_refused(gm_run, tmp_path, capsys):
    base = ["images", "sample", "--run-dir", str(gm_run), "--nfe", "2", "--num-samples", "10",
            "--out", str(tmp_path / "x.npz")]
    assert cli([*base, "--solver", "gm-ode", "--spectral"]) == 2
    assert "GM-SDE" in capsys.readouterr().err
    assert cli([*base, "--solver", "gm-ode", "--guidance", "probabilistic", "--guidance-scale", "1.5"]) == 2
    assert "[0, 1)" in capsys.readouterr().err


def test_gm_mean_drives_flow_solvers():
    """Truth (numpy float64): a flow solver on a GM model gets the mixture-mean velocity sum_k A_k mu_k unguided;
    guided, it gets (x_t - E[x0]) / sigma of the guided x0-space GM, here from oracles.probabilistic_guidance_np
    with the conditional GM (label 0) and the unconditional mean (null label 10) that the model returns for
    different labels. At w~ = 0 that is the conditional mean velocity; at w~ = 0.5 the guidance moves it."""
    from gmflow.gm import GaussianMixture

    g = torch.Generator().manual_seed(0)
    gms = [GaussianMixture(torch.randn(3, 4, 1, 2, 2, generator=g),
                           torch.log_softmax(torch.randn(3, 4, 1, 2, 2, generator=g), 1),
                           torch.full((3, 1, 1, 1, 1), -0.5 + 0.5 * i)) for i in range(2)]  # fmt: skip
    null = 10

    class Net(torch.nn.Module):
        def forward(self, x, t, y=None):
            uncond = (y == null).view(-1, 1, 1, 1, 1) if y is not None else torch.zeros(len(x), 1, 1, 1, 1, dtype=bool)
            rep = len(x) // 3
            return GaussianMixture(*(torch.where(uncond, u.repeat(rep, 1, 1, 1, 1), c.repeat(rep, 1, 1, 1, 1))
                                     for c, u in zip((gms[0].means, gms[0].logweights, gms[0].logstds),
                                                     (gms[1].means, gms[1].logweights, gms[1].logstds), strict=True)))

    x, sigma = torch.randn(3, 1, 2, 2, generator=g), torch.full((3,), 0.6)
    v = model_fn(Counted(NetworkFn(Net())), "gmflow", "euler")(x, sigma)
    mean_u = [(np.exp(gm.logweights.double().numpy()) * gm.means.double().numpy()).sum(1) for gm in gms]
    np.testing.assert_allclose(v.double().numpy(), mean_u[0], rtol=0, atol=1e-6)
    for w in (0.0, 0.5):
        guided = model_fn(Counted(NetworkFn(Net())), "gmflow", "euler", "probabilistic", w, 1.0,
                          torch.zeros(3, dtype=torch.long), null)(x, sigma)
        expect = np.empty(x.shape)
        for b in range(3):
            xb, s = x[b].double().numpy(), 0.6
            std = s * float(np.exp(gms[0].logstds[b].double().numpy()).reshape(-1)[0])
            ref = probabilistic_guidance_np(xb - s * gms[0].means[b].double().numpy(),
                                            gms[0].logweights[b].double().numpy(), std, xb - s * mean_u[1][b], w)
            expect[b] = (xb - (ref["weights"] * ref["means"]).sum(0)) / s
        np.testing.assert_allclose(guided.double().numpy(), expect, rtol=0, atol=2e-5)
        if w > 0:
            assert np.abs(expect - mean_u[0]).max() > 0.05


def test_balanced_labels():
    assert torch.equal(torch.bincount(balanced_labels(1000, 10)), torch.full((10,), 100))


def test_snapshot_equals_the_shorter_run_and_becomes_a_run(tmp_path, capsys):
    """A snapshot at step k holds exactly the EMA weights a k-step run ends with (constant learning rate after
    warm-up, step-indexed EMA), and snapshot-run makes it a run folder whose record says k steps."""
    spec = network_spec("digits", "dit-digits-tiny", "gmflow", 2, spectral=True)
    io.write_json(spec, tmp_path / "spec.json")
    record = train_images(spec, _cfg(snapshot_steps=(5,)), tmp_path / "long", progress=False)
    io.write_json({**spec, **record}, tmp_path / "long" / "run.json")
    train_images(spec, _cfg(steps=5), tmp_path / "short", progress=False)
    for name in ("ema.safetensors", "spectrum_ema.safetensors"):
        a = io.load_safetensors(tmp_path / "long" / "snapshots" / "step5" / name)
        b = io.load_safetensors(tmp_path / "short" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = io.load_safetensors(tmp_path / "long" / "ema.safetensors")
    snap = io.load_safetensors(tmp_path / "long" / "snapshots" / "step5" / "ema.safetensors")
    assert any(not torch.equal(final[k], snap[k]) for k in final)  # the snapshot is not the final weights
    assert cli(["images", "snapshot-run", "--run-dir", str(tmp_path / "long"), "--step", "5",
                "--out", str(tmp_path / "long-at5")]) == 0
    out = json.loads((tmp_path / "long-at5" / "run.json").read_text())
    assert out["train"]["steps"] == 5 and out["snapshot_of"] == "long" and out["snapshot_step"] == 5
    assert 0 < out["train_seconds"] <= record["train_seconds"]
    assert cli(["images", "snapshot-run", "--run-dir", str(tmp_path / "long"), "--step", "3",
                "--out", str(tmp_path / "x")]) != 0
    assert "--snapshot-steps 3" in capsys.readouterr().err


def test_snapshot_steps_must_lie_inside_the_run():
    with pytest.raises(ValueError, match="snapshot_steps"):
        _cfg(snapshot_steps=(8,))
