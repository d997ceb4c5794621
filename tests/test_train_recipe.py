"""Training recipe and resumable state: no pickle is ever loaded, weight decay spares biases and norms, the ramp-up EMA
follows its formula, and the library's GM-ODE default is the paper's sub-step rule.

Truths: a crafted pickle that would leave a marker file when unpickled; AdamW's decoupled decay step written out
(``p <- p (1 - lr wd)`` when the gradient is zero); the ramp-up EMA's half-life formula evaluated by hand; explicit
sub-step counts.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from gmflow.experiments.cli import main
from gmflow.harness import io
from gmflow.harness.train import (
    STATE_FILE,
    LoopSettings,
    decay_param_groups,
    optimise,
    rampup_ema_beta,
)
from gmflow.schedule import ceil128_substeps, paper_substeps, sigma_grid
from gmflow.solvers import gm_ode, gm_ode_2


class _Payload:
    """Unpickling this object creates the file ``path``: proof that code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_state_round_trip_keeps_every_value(tmp_path):
    obj = {"net": {"w": torch.randn(3, 2, generator=torch.Generator().manual_seed(0))},
           "opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                   "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "params": [0, 1], "fused": None}]},
           "gen": torch.Generator().manual_seed(1).get_state(), "step": 7, "loss": float("nan"),
           "identity": {"method": "fm", "lr": 2e-4}}
    io.save_state(obj, tmp_path / STATE_FILE)
    back = io.load_state(tmp_path / STATE_FILE)
    torch.testing.assert_close(back["net"]["w"], obj["net"]["w"], rtol=0, atol=0)
    assert set(back["opt"]["state"]) == {0}
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["gen"].dtype == torch.uint8 and torch.equal(back["gen"], obj["gen"])
    assert back["step"] == 7 and math.isnan(back["loss"]) and back["identity"] == obj["identity"]


def _train_argv(out) -> list[str]:
    return ["2d", "train", "--dataset", "checkerboard", "--method", "fm", "--width", "8", "--depth", "1",
            "--steps", "3", "--batch-size", "16", "--warmup-steps", "1", "--checkpoint-every", "2", "--quiet",
            "--out", str(out)]


def test_crafted_pickle_state_is_never_loaded(tmp_path, capsys):
    """A pickle named like the old resume file, or in place of the new one, runs no code: the old name is ignored
    with a notice, the new name is refused with an error naming the file, and nothing is written."""
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    assert main(_train_argv(out)) == 0
    assert not marker.exists()
    assert "never loaded" in capsys.readouterr().out
    assert (out / "ema.safetensors").exists()

    out2 = tmp_path / "run2"
    out2.mkdir()
    (out2 / STATE_FILE).write_bytes(pickle.dumps(_Payload(str(marker))))
    assert main(_train_argv(out2)) == 2
    err = capsys.readouterr().err
    assert STATE_FILE in err and "not a readable training state" in err
    assert not marker.exists()
    assert not (out2 / "ema.safetensors").exists()


def test_weight_decay_spares_biases_and_norms():
    """With zero gradients AdamW's update is the decay alone: weights shrink by (1 - lr wd), biases and the
    LayerNorm's weight and bias stay put, and an Embedding (a weight) decays."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(4, 3), nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, wd = 0.1, 0.5
    opt = torch.optim.AdamW(decay_param_groups(model, wd), lr=lr)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    decayed = {"0.weight", "1.weight", "3.weight"}
    for n, p in model.named_parameters():
        factor = (1 - lr * wd) if n in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=0, atol=1e-7, msg=n)


def test_rampup_ema_beta_hand_computed():
    """Half-life min(1000 kimg, rampup * images seen): at batch 4096, step 1 gives 204.8 images, so
    beta = 0.5^(4096 / 204.8) = 0.5^20; from 146,485 steps on the 30M-image cap holds."""
    assert rampup_ema_beta(1, 4096) == pytest.approx(0.5**20, rel=1e-12)
    assert rampup_ema_beta(1000, 4096) == pytest.approx(0.5 ** (4096 / (0.05 * 1000 * 4096)), rel=1e-12)
    assert rampup_ema_beta(200_000, 4096) == pytest.approx(0.5 ** (4096 / 30e6), rel=1e-12)


def test_optimise_applies_the_rampup_ema(tmp_path):
    """The loop's EMA after each step equals beta ema + (1 - beta) theta with the ramp-up beta, recomputed here."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    gen = torch.Generator().manual_seed(0)
    settings = LoopSettings(steps=4, lr=0.05, weight_decay=0.0, warmup_steps=0, ema_gamma=7.0, grad_clip=0.0,
                            checkpoint_every=10, ema="rampup", ema_kimg=0.001, ema_rampup=0.5, batch_size=8)
    ema_ref = [p.detach().clone() for p in model.parameters()]
    seen = []

    def step_loss(step, micro):
        x = torch.randn(8, 2, generator=gen)
        return (model(x) - 1).square().mean()

    def at_step(step, ema, seconds):
        beta = 0.5 ** (8 / max(min(1.0, 0.5 * step * 8), 1e-8))
        for i, p in enumerate(model.parameters()):
            ema_ref[i] = beta * ema_ref[i] + (1 - beta) * p.detach()
        seen.append([torch.allclose(pe, r, rtol=0, atol=1e-6) for pe, r in zip(ema.parameters(), ema_ref,
                                                                                 strict=True)])

    optimise(model, step_loss, settings, gen, tmp_path, desc="t", progress=False, at_step=at_step)
    assert len(seen) == 4 and all(all(s) for s in seen)


@pytest.mark.parametrize("nfe,expected", [(1, 128), (2, 64), (4, 8), (6, 8), (8, 16), (32, 4), (64, 2), (200, 2)])
def test_paper_substep_rule(nfe, expected):
    assert paper_substeps(nfe) == expected


def test_ceil128_rule():
    assert [ceil128_substeps(n) for n in (1, 3, 8, 200)] == [128, 43, 16, 1]


@pytest.mark.parametrize("solver", [gm_ode, gm_ode_2])
def test_gm_ode_default_is_the_paper_rule_not_euler(solver):
    """Called plainly, GM-ODE uses the paper's sub-steps: equal to an explicit substeps=8 at NFE 4, and unlike
    substeps=1 (Euler on the GM mean)."""
    from gmflow.gm import GaussianMixture

    def model(x, sigma):  # a fixed two-component velocity GM, far from any posterior
        b = x.shape[0]
        means = torch.stack([x - 1.0, x + 2.0], 1)
        return GaussianMixture(means, torch.log(torch.tensor([0.3, 0.7])).view(1, 2, 1).expand(b, 2, 1),
                               torch.full((b, 1, 1), -0.5))

    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    sig = sigma_grid(4)
    default, eight, one = solver(model, x, sig), solver(model, x, sig, substeps=8), solver(model, x, sig, substeps=1)
    torch.testing.assert_close(default, eight, rtol=0, atol=0)
    assert float((default - one).abs().max()) > 1e-3
