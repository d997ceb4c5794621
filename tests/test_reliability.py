"""A catalogue of bad inputs and faults: each is refused with exit code 2 and one clear message naming what was wrong,
and leaves no partial output. The count of cases refused clearly is the number of passing parameters here.

Truths: the message fragments each case must show, the exit code, and the files that must not exist afterwards.
"""

from __future__ import annotations

import json
import math
import os

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


# ------------------------------------------------------------------ broken files: one line naming the file, rc 2


def _copy_run(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _sample_2d(run_dir, out):
    return main(["2d", "sample", "--run-dir", str(run_dir), "--solver", "euler", "--nfe", "2", "--num-samples", "20",
                 "--block-size", "10", "--quiet", "--out", str(out)])


RUN_FILE_CASES = {
    "run-json-corrupt": ("run.json", b"{not json", "not valid JSON"),
    "run-json-not-a-record": ("run.json", b"[1, 2]", "not a run record"),
    "ema-truncated": ("ema.safetensors", None, "not a readable safetensors file"),
    "ema-empty": ("ema.safetensors", b"", "not a readable safetensors file"),
    "ema-random-bytes": ("ema.safetensors", bytes(range(256)) * 4, "not a readable safetensors file"),
}


@pytest.mark.parametrize("case", sorted(RUN_FILE_CASES))
def test_broken_run_files_are_named(case, run_2d, tmp_path, capsys):
    name, content, fragment = RUN_FILE_CASES[case]
    run = _copy_run(run_2d, tmp_path / "run")
    if content is None:  # truncated: the first half of the real file
        content = (run_2d / name).read_bytes()[: (run_2d / name).stat().st_size // 2]
    (run / name).write_bytes(content)
    out = tmp_path / "s.npz"
    assert _sample_2d(run, out) == 2
    err = capsys.readouterr().err
    assert fragment in err and name in err and "Traceback" not in err
    assert not out.exists()


def test_weights_of_another_network_are_refused(run_2d, tmp_path, capsys):
    """ema.safetensors of a width-16 MLP in the folder of a width-8 run: refused, naming the mismatch."""
    other = tmp_path / "wide"
    args = [*TRAIN_2D]
    args[args.index("--width") + 1] = "16"
    assert main([*args, "--out", str(other)]) == 0
    run = _copy_run(run_2d, tmp_path / "run")
    (run / "ema.safetensors").write_bytes((other / "ema.safetensors").read_bytes())
    assert _sample_2d(run, tmp_path / "s.npz") == 2
    err = capsys.readouterr().err
    assert "does not fit the network of run.json" in err and "another run" in err
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.parametrize("content,fragment", [(b"", "not a readable .npz"), (b"plain text", "not a readable .npz"),
                                              (None, "lacks the arrays")], ids=["empty", "not-npz", "wrong-keys"])
def test_evaluate_refuses_files_that_are_not_sample_sets(content, fragment, tmp_path, capsys):
    bad = tmp_path / "s.npz"
    if content is None:
        io.save_npz(bad, other=torch.zeros(3).numpy())
    else:
        bad.write_bytes(content)
    ref = tmp_path / "ref.npz"
    io.save_npz(ref, samples=torch.zeros(10, 2).numpy())
    out = tmp_path / "m.csv"
    assert main(["2d", "evaluate", "--samples", str(bad), "--reference", str(ref), "--dataset", "checkerboard",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "s.npz" in err and "Traceback" not in err
    assert not out.exists()


def test_output_under_a_file_is_refused_before_sampling(run_2d, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _sample_2d(run_2d, blocker / "s.npz") == 2
    assert "is a file" in capsys.readouterr().err


def test_training_under_a_file_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([*TRAIN_2D, "--out", str(blocker / "run")]) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_folder_is_refused_before_sampling(run_2d, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert _sample_2d(run_2d, folder / "s.npz") == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        folder.chmod(0o700)


def test_absurd_substeps_are_refused_before_allocating(run_2d, tmp_path, capsys):
    assert main(["2d", "sample", "--run-dir", str(run_2d), "--solver", "gm-ode", "--nfe", "2", "--substeps",
                 "1000000000", "--quiet", "--out", str(tmp_path / "s.npz")]) == 2
    assert "[1, 4096]" in capsys.readouterr().err


def test_written_files_follow_the_umask(run_2d):
    """Results get the mode open() would give (0666 minus the umask), not mkstemp's 0600."""
    for name in ("ema.safetensors", "state.safetensors", "run.json", "train_log.csv"):
        assert (run_2d / name).stat().st_mode & 0o777 == io.FILE_MODE, name


# ------------------------------------------------------------------ bad data: one line naming the data, rc 2


def _fashion_folder(root, images, labels):
    from gmflow.harness.data_images import FASHION_MNIST_FILES, write_idx

    root.mkdir()
    for split in ("train", "test"):
        write_idx(root / FASHION_MNIST_FILES[split][0], images)
        write_idx(root / FASHION_MNIST_FILES[split][1], labels)
    return root


DATA_CASES = {
    "labels-out-of-range": (lambda: (torch.zeros(8, 28, 28, dtype=torch.uint8),
                                     torch.full((8,), 12, dtype=torch.uint8)), "labels in [12, 12]"),
    "wrong-image-size": (lambda: (torch.zeros(8, 20, 20, dtype=torch.uint8), torch.zeros(8, dtype=torch.uint8)),
                         "images of shape (1, 20, 20)"),
    "empty-dataset": (lambda: (torch.zeros(0, 28, 28, dtype=torch.uint8), torch.zeros(0, dtype=torch.uint8)),
                      "no images"),
    "corrupt-gzip": (None, "truncated or corrupt"),
}
TRAIN_FASHION = ["images", "train", "--dataset", "fashion-mnist", "--network", "dit-fmnist-tiny", "--method", "fm",
                 "--steps", "1", "--batch-size", "4", "--warmup-steps", "0", "--quiet"]


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_image_data_is_refused_before_training(case, tmp_path, capsys):
    make, fragment = DATA_CASES[case]
    if make is None:
        root = _fashion_folder(tmp_path / "data", torch.zeros(8, 28, 28, dtype=torch.uint8).numpy(),
                               torch.zeros(8, dtype=torch.uint8).numpy())
        from gmflow.harness.data_images import FASHION_MNIST_FILES

        f = root / FASHION_MNIST_FILES["train"][0]
        f.write_bytes(f.read_bytes()[:30])
    else:
        images, labels = make()
        root = _fashion_folder(tmp_path / "data", images.numpy(), labels.numpy())
    out = tmp_path / "run"
    assert main([*TRAIN_FASHION, "--data-root", str(root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not (out / "ema.safetensors").exists()


# ------------------------------------------------------------------ configuration: refused at config time


def _ci_config():
    import yaml

    return yaml.safe_load(open("config/ci.yaml"))


def _set(config, path, value):
    node = config
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return config


CONFIG_CASES = {
    "nan-lr": (("images", "train", "lr"), math.nan, "not a finite number"),
    "inf-guidance": (("images", "sweeps", "guidance", "guidance", "fm", "cfg"), [1.5, math.inf], "not a finite"),
    "empty-results": (("results",), "", "empty path"),
    "blank-data-root": (("images", "data_root"), " ", "empty path"),
    "duplicate-seeds": (("images", "sample", "seeds"), [0, 0], "repeated items"),
    "duplicate-nfe": (("toy", "sample", "nfe"), [1, 4, 4], "repeated items"),
    "data-root-for-digits": (("images", "data_root"), "/data/digits", "take no data root"),
    "network-for-other-data": (("images", "train", "network"), "dit-fmnist-tiny", r"takes \(1, 28, 28\) inputs"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_values_are_refused_at_config_time(case):
    from project import SCHEMA

    from gmflow.experiments.config import validate_config
    from gmflow.harness.schema import ConfigError

    path, value, fragment = CONFIG_CASES[case]
    with pytest.raises(ConfigError, match=fragment):
        validate_config(_set(_ci_config(), path, value), SCHEMA)


def test_command_line_overrides_arrive_as_numbers():
    """snakemake --config 'images={"train": {"steps": 30}}' hands over '30': read as the integer the schema wants."""
    from project import SCHEMA

    from gmflow.experiments.config import validate_config

    config = _set(_ci_config(), ("images", "train", "steps"), "90")
    config = _set(config, ("images", "train", "lr"), "3e-4")
    validate_config(config, SCHEMA)
    assert config["images"]["train"]["steps"] == 90 and config["images"]["train"]["lr"] == 3e-4


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("results: x\ntoy: {a: [1, 2\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "YAML syntax error at line 3" in err and "bad.yaml" in err
    assert main(["check-config", "config/ci.yaml"]) == 0


def test_a_data_root_for_digits_is_refused_not_ignored(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["images", "train", "--dataset", "digits", "--network", "dit-digits-tiny", "--method", "fm",
                 "--steps", "1", "--batch-size", "4", "--data-root", str(tmp_path), "--quiet", "--out", str(out)]) == 2
    assert "take no data root" in capsys.readouterr().err
    assert not (out / "ema.safetensors").exists()
