"""A catalogue of bad inputs and faults: each is refused with exit code 2 and one clear message naming what was wrong,
and leaves no partial output. The count of cases refused clearly is the number of passing parameters here.

Truths: the message fragments each case must show, the exit code, and the files that must not exist afterwards.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from gmflow.experiments.cli import main
from gmflow.harness import io
from gmflow.harness.train import LoopSettings, TrainConfig, optimise

TRAIN_2D = ["2d", "train", "--dataset", "checkerboard", "--method", "fm", "--width", "8", "--depth", "1", "--steps",
            "4", "--batch-size", "16", "--warmup-steps", "1", "--checkpoint-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "fm"
    assert main([*TRAIN_2D, "--out", str(out)]) == 0
    return out


TRAIN_CASES = {
    "ema-gamma-nan": (["--ema-gamma", "nan"], "ema_gamma"),
    "ema-gamma-negative": (["--ema-gamma", "-1"], "ema_gamma"),
    "weight-scale-zero": (["--weight-scale", "0"], "weight_scale"),
    "weight-scale-negative": (["--weight-scale", "-2"], "weight_scale"),
    "grad-clip-negative": (["--grad-clip", "-1"], "grad_clip"),
    "lr-nan": (["--lr", "nan"], "lr"),
    "lr-zero": (["--lr", "0"], "lr"),
    "weight-decay-negative": (["--weight-decay", "-0.1"], "weight_decay"),
    "ema-rampup-above-one": (["--ema", "rampup", "--ema-rampup", "2"], "ema_rampup"),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_bad_training_settings_are_refused_before_training(case, tmp_path, capsys):
    extra, fragment = TRAIN_CASES[case]
    out = tmp_path / "run"
    assert main([*TRAIN_2D, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and fragment in err and "Traceback" not in err
    assert not (out / "ema.safetensors").exists() and not (out / "run.json").exists()


def test_non_finite_ema_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    """A weight that becomes NaN after step 3 is caught at the step-4 checkpoint: FloatingPointError naming the
    parameter; the step-2 checkpoint on disk is untouched."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    gen = torch.Generator().manual_seed(0)
    settings = LoopSettings(steps=6, lr=0.01, weight_decay=0.0, warmup_steps=0, ema_gamma=7.0, grad_clip=0.0,
                            checkpoint_every=2)
    calls = {"n": 0}

    def step_loss(step, micro):
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                model.bias.fill_(math.nan)
        return (model.weight.sum() - 1).square()  # a finite loss that does not see the bias

    with pytest.raises(FloatingPointError, match="non-finite weights at step 4: parameter 'bias'"):
        optimise(model, step_loss, settings, gen, tmp_path, desc="t", progress=False)
    state = io.load_state(tmp_path / "state.safetensors")
    assert state["step"] == 2 and torch.isfinite(state["net"]["bias"]).all()


def test_nan_weight_checkpoint_writes_no_samples(run_2d, tmp_path, capsys):
    """A run whose EMA weights hold one NaN: sampling stops with a message and writes no sample file."""
    bad = tmp_path / "bad"
    bad.mkdir()
    weights = io.load_safetensors(run_2d / "ema.safetensors")
    first = sorted(weights)[0]
    weights[first].view(-1)[0] = math.nan
    io.save_safetensors(weights, bad / "ema.safetensors")
    (bad / "run.json").write_text((run_2d / "run.json").read_text())
    out = tmp_path / "s.npz"
    assert main(["2d", "sample", "--run-dir", str(bad), "--solver", "euler", "--nfe", "2", "--num-samples", "20",
                 "--block-size", "10", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "non-finite samples" in err and "nothing was written" in err
    assert not out.exists()


def test_crafted_state_is_refused_with_the_file_named(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.safetensors").write_bytes(b"\x00" * 40)
    assert main([*TRAIN_2D, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "state.safetensors" in err and "not a readable training state" in err
    assert not (out / "ema.safetensors").exists()


def test_train_config_refuses_label_dropout_out_of_range():
    with pytest.raises(ValueError, match="label_dropout"):
        TrainConfig(method="fm", label_dropout=7.0)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel_img") / "fm"
    assert main(["images", "train", "--dataset", "digits", "--network", "dit-digits-tiny", "--method", "fm",
                 "--steps", "2", "--batch-size", "8", "--warmup-steps", "1", "--checkpoint-every", "2", "--quiet",
                 "--out", str(out)]) == 0
    return out


GUIDANCE_CASES = {
    "cfg-scale-negative": (["--guidance", "cfg", "--guidance-scale", "-50"], "CFG scale"),
    "cfg-scale-nan": (["--guidance", "cfg", "--guidance-scale", "nan"], "CFG scale"),
    "orthogonal-five": (["--guidance", "cfg", "--guidance-scale", "2", "--orthogonal", "5"], "--orthogonal"),
    "orthogonal-nan": (["--guidance", "cfg", "--guidance-scale", "2", "--orthogonal", "nan"], "--orthogonal"),
    "scale-without-guidance": (["--guidance-scale", "2"], "needs --guidance"),
}


@pytest.mark.parametrize("case", sorted(GUIDANCE_CASES))
def test_bad_guidance_is_refused_before_sampling(case, image_run, tmp_path, capsys):
    extra, fragment = GUIDANCE_CASES[case]
    out = tmp_path / "s.npz"
    assert main(["images", "sample", "--run-dir", str(image_run), "--solver", "euler", "--nfe", "2",
                 "--num-samples", "10", *extra, "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not out.exists() and not out.with_suffix(".json").exists()



def test_training_into_a_folder_of_another_dataset_restarts(tmp_path, capsys):
    """Rerunning train into an existing folder with another dataset does not continue the old model: the state
    belongs to another run, so training starts again and ends with the weights of a fresh run on the new data."""
    base = [a for a in TRAIN_2D if a != "checkerboard"]
    i = base.index("--dataset")
    out, fresh = tmp_path / "run", tmp_path / "fresh"
    first = [*base[: i + 1], "checkerboard", *base[i + 1 :]]
    second = [*base[: i + 1], "gmm2d", *base[i + 1 :]]
    assert main([*first, "--steps", "2", "--out", str(out)]) == 0
    assert main([*second, "--out", str(out)]) == 0
    assert "training from the start" in capsys.readouterr().out
    assert main([*second, "--out", str(fresh)]) == 0
    a, b = io.load_safetensors(out / "ema.safetensors"), io.load_safetensors(fresh / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert json.loads((out / "run.json").read_text())["dataset"] == "gmm2d"
