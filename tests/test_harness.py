"""Harness: resumable training, NFE counting by the model wrapper, batch-size independence of sampling."""

import numpy as np
import pytest
import torch

from gmflow.harness import io
from gmflow.harness.data2d import get_dataset_2d
from gmflow.harness.losses import make_loss
from gmflow.harness.mlp2d import MLP2D
from gmflow.harness.sampling import generate
from gmflow.harness.train import TrainConfig, train


def _net(head="gm"):
    torch.manual_seed(0)
    return MLP2D(head, 4, width=16, depth=2, num_freqs=8, time_dim=16)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["gmflow", "fm"])
def test_killed_training_resumes_to_identical_weights(tmp_path, method):
    """A run killed after its step-10 checkpoint and started again ends with the same weights as an uninterrupted
    run (optimiser, EMA, LR schedule and random state are all restored)."""
    ds = get_dataset_2d("checkerboard")
    cfg = TrainConfig(method=method, num_components=4, steps=20, batch_size=64, warmup_steps=5, checkpoint_every=10)
    head = "gm" if method == "gmflow" else "velocity"
    train(_net(head), cfg, lambda n, g: ds.sample(n, g), tmp_path / "full", make_loss(cfg), progress=False)

    calls = {"n": 0}

    def dying_batch(n, g):
        calls["n"] += 1
        if calls["n"] == 15:
            raise _Killed
        return ds.sample(n, g)

    with pytest.raises(_Killed):
        train(_net(head), cfg, dying_batch, tmp_path / "resumed", make_loss(cfg), progress=False)
    assert (tmp_path / "resumed" / "state.safetensors").exists()
    assert not (tmp_path / "resumed" / "ema.safetensors").exists()
    train(_net(head), cfg, lambda n, g: ds.sample(n, g), tmp_path / "resumed", make_loss(cfg), progress=False)
    for name in ("model.safetensors", "ema.safetensors"):
        a = io.load_safetensors(tmp_path / "full" / name)
        b = io.load_safetensors(tmp_path / "resumed" / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_training_extends_and_restarts_when_settings_change(tmp_path, capsys):
    """A finished run called again with more steps continues to the weights of one longer run; a state saved with
    other settings (here the learning rate) is discarded, giving the weights of a fresh run with the new settings."""
    ds = get_dataset_2d("checkerboard")

    def run(out, **kw):
        cfg = TrainConfig(**{"method": "fm", "steps": 20, "batch_size": 64, "warmup_steps": 5, "checkpoint_every": 10,
                             **kw})
        train(_net("velocity"), cfg, lambda n, g: ds.sample(n, g), tmp_path / out, make_loss(cfg), progress=False)
        return io.load_safetensors(tmp_path / out / "ema.safetensors")

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    full = run("full")
    run("extended", steps=12)
    assert same(run("extended"), full)
    run("changed", lr=1e-3)
    assert "training from the start" not in capsys.readouterr().out
    changed = run("changed")
    assert "training from the start" in capsys.readouterr().out
    assert same(changed, full) and not same(run("other", lr=1e-3), full)


@pytest.mark.parametrize(
    "solver,nfe,expected",
    [("euler", 4, 4), ("heun", 4, 3), ("heun", 1, 1), ("ddpm-small", 8, 8), ("dpm++-2m", 4, 4), ("unipc", 8, 8)],
)
def test_counted_nfe_flow(solver, nfe, expected):
    """The wrapper counts every network call: Heun with budget B runs (B+1)//2 steps = 2N-1 calls."""
    _, rec = generate(_net("velocity").eval(), "fm", solver, nfe, 10, (2,), block_size=5, progress=False)
    assert rec["nfe"] == expected
    assert rec["network_forwards"] == expected * 2  # two blocks


@pytest.mark.parametrize("solver", ["gm-sde", "gm-sde-2", "gm-ode", "gm-ode-2"])
@pytest.mark.parametrize("nfe", [1, 4])
def test_counted_nfe_gm(solver, nfe):
    """GM solvers call the network once per outer step, whatever the number of GM-ODE sub-steps; by default the
    sub-steps follow the paper's rule (A.4: 128 at NFE 1, 8 at NFE 4)."""
    _, rec = generate(_net("gm").eval(), "gmflow", solver, nfe, 6, (2,), block_size=6, progress=False)
    assert rec["nfe"] == nfe
    assert rec["substeps"] == ({1: 128, 4: 8}[nfe] if "ode" in solver else 1)


@pytest.mark.parametrize("solver", ["gm-sde-2", "ddpm-small"])
def test_samples_do_not_depend_on_worker_split(solver):
    """Sample i depends on (seed, block) only: drawing 2 x 8 samples or 16 at once gives the same first 8."""
    method = "gmflow" if solver.startswith("gm") else "fm"
    net = _net("gm" if method == "gmflow" else "velocity").eval()
    a, _ = generate(net, method, solver, 3, 16, (2,), seed=3, block_size=8, progress=False)
    b, _ = generate(net, method, solver, 3, 8, (2,), seed=3, block_size=8, progress=False)
    c, _ = generate(net, method, solver, 3, 16, (2,), seed=4, block_size=8, progress=False)
    np.testing.assert_array_equal(a[:8], b)
    assert not np.allclose(a, c)


def test_generate_rejects_solver_of_other_family():
    with pytest.raises(ValueError, match="does not apply"):
        generate(_net("velocity"), "fm", "gm-ode", 4, 4, (2,), progress=False)
