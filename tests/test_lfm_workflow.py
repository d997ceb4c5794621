"""LFM sub-commands of gmflow-bench (gmflow/experiments/lfm/) and the lfm config section, on tiny chains.

One 3-block chain on gmm2d (2 OU blocks and the free block, a 16-wide MLP) is built once through the CLI, in process;
the tests check block caching and resuming, the pushed-pool cache, exact NFE counts (also against an independent count
of network calls), the metric and NLL rows, distillation, and the config checks.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from project import SCHEMA, assert_refused, validate_config

from baselines import lfm as blfm
from baselines import lfm_likelihood
from gmflow.experiments import cli
from gmflow.experiments.lfm import chain as lfm_chain
from gmflow.experiments.lfm import cli as lfm_commands
from gmflow.experiments.lfm.blocks import block_student, block_velocity
from gmflow.experiments.lfm.config import sample_settings
from gmflow.harness import io, registry
from gmflow.harness.data2d import get_dataset_2d
from gmflow.harness.mlp2d import MLP2D
from gmflow.harness.schema import load_schema
from gmflow.harness.tables import COLUMNS_2D

torch.set_num_threads(1)

N = 3
NET = ["--width", "16", "--depth", "1"]
TRAIN = [*NET, "--steps", "12", "--batch-size", "64", "--warmup-steps", "2", "--checkpoint-every", "5", "--quiet"]


def _run(*argv):
    assert cli.main([str(a) for a in argv]) == 0, argv


def _train(root, n, *extra, pool=None, out=None):
    init = ["--init-from", root / f"block_{n - 1}" / "ema.safetensors"] if n > 1 else []
    _run("lfm", "train-block", "--dataset", "gmm2d", "--block", n, "--num-blocks", N, "--pool",
         pool or root / f"pool_{n - 1}.npz", *init, *TRAIN, *extra, "--out", out or root / f"block_{n}")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """pool_0 .. pool_N, block_1 .. block_N, student_1 .. student_N and a reference sample, all through the CLI."""
    root = tmp_path_factory.mktemp("lfm")
    _run("2d", "prepare-data", "--dataset", "gmm2d", "--num-samples", 400, "--seed", 9000, "--out", root / "pool_0.npz")
    _run("2d", "prepare-data", "--dataset", "gmm2d", "--num-samples", 300, "--seed", 0, "--out", root / "ref.npz")
    for n in range(1, N + 1):
        _train(root, n)
        _run("lfm", "push", "--block-dir", root / f"block_{n}", "--pool", root / f"pool_{n - 1}.npz", "--rtol", 1e-2,
             "--atol", 1e-2, "--batch-size", 150, "--quiet", "--out", root / f"pool_{n}.npz")
        _run("lfm", "distill", "--blocks", root / f"block_{n}", "--pool-in", root / f"pool_{n - 1}.npz",
             "--pool-out", root / f"pool_{n}.npz", "--steps", 5, "--batch-size", 64, "--quiet", "--out",
             root / f"student_{n}")
    return root


def _blocks(root, kind="block"):
    return [root / f"{kind}_{n}" for n in range(1, N + 1)]


def _sample(root, solver, *opts, name=None, n=120):
    name = name or f"{solver}"
    kind = "student" if solver == "distilled" else "block"
    _run("lfm", "sample", "--blocks", *_blocks(root, kind), "--solver", solver, *opts, "--num-samples", n,
         "--block-size", 50, "--reference", root / "ref.npz", "--knn-points", 50, "--quiet",
         "--metrics-out", root / f"{name}.csv", "--out", root / f"{name}.npz")
    return json.loads(str(np.load(root / f"{name}.npz")["record"])), pd.read_csv(root / f"{name}.csv")


# ---------------------------------------------------------------------------------------------------------------------
# Blocks: cached, resumable, restarted when their inputs change
# ---------------------------------------------------------------------------------------------------------------------


def test_chain_records(chain):
    hs = blfm.step_sizes(0.025, 1.25, N)
    for n in range(1, N + 1):
        spec = json.loads((chain / f"block_{n}" / "run.json").read_text())
        assert spec["block"] == n and spec["num_blocks"] == N and spec["resume"] == "fresh"
        assert spec["h"] == (hs[n - 1] if n < N else None) and spec["warm_start"] == (n > 1)
        push = json.loads((chain / f"pool_{n}.json").read_text())
        # 400 points pushed in batches of 150, 150, 100; dopri5 adapts its steps to each batch
        assert len(push["nfe_per_batch"]) == 3 and sum(push["nfe_per_batch"]) == push["nfe"]
        expected = sum(size * nfe for size, nfe in zip((150, 150, 100), push["nfe_per_batch"], strict=True)) / 400
        assert push["nfe_per_sample"] == pytest.approx(expected, rel=1e-12)
        student = json.loads((chain / f"student_{n}" / "run.json").read_text())
        assert student["kind"] == "student" and student["num_pairs"] == 400


def test_block_resumes_from_its_state_and_extends(chain, tmp_path):
    """Called again with more steps, a block continues from its state to the weights of one uninterrupted run."""
    _train(chain, 2, out=tmp_path / "b")
    _train(chain, 2, "--steps", 24, out=tmp_path / "b")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resume"] == "resumed"
    _train(chain, 2, "--steps", 24, out=tmp_path / "full")
    a, b = (io.load_safetensors(tmp_path / d / "ema.safetensors") for d in ("b", "full"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # a rerun of a finished block with the same inputs trains nothing and gives the same weights
    _train(chain, 2, "--steps", 24, out=tmp_path / "b")
    c = io.load_safetensors(tmp_path / "b" / "ema.safetensors")
    assert all(torch.equal(c[k], b[k]) for k in b)


def test_block_restarts_when_its_pool_or_settings_change(chain, tmp_path):
    _train(chain, 2, out=tmp_path / "b")
    _train(chain, 2, pool=chain / "pool_0.npz", out=tmp_path / "b")  # another pool: the state is stale
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resume"] == "restarted (inputs or settings changed)"
    _train(chain, 2, "--lr", "1e-3", pool=chain / "pool_0.npz", out=tmp_path / "b")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resume"].startswith("restarted")
    _train(chain, 2, "--lr", "1e-3", "--restart", pool=chain / "pool_0.npz", out=tmp_path / "b")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resume"] == "restarted (--restart)"


def test_bad_block_settings_fail_with_a_message(chain, capsys):
    argv = ["lfm", "train-block", "--dataset", "gmm2d", "--block", "4", "--num-blocks", "3", "--pool",
            str(chain / "pool_0.npz"), "--out", str(chain / "never")]
    assert cli.main(argv) == 2
    assert "block must be in 1..num_blocks" in capsys.readouterr().err
    argv[5] = "1"
    assert cli.main([*argv, "--init-from", str(chain / "block_1" / "ema.safetensors")]) == 2
    assert "drop --init-from" in capsys.readouterr().err
    assert not (chain / "never").exists()


def test_push_with_its_output_present_does_nothing(chain, monkeypatch, capsys):
    out = chain / "pool_1.npz"
    before = (os.path.getmtime(out), out.read_bytes(), (chain / "pool_1.json").read_bytes())

    def no_load(*args, **kwargs):
        raise AssertionError("a cached push must not load the block")

    monkeypatch.setattr(lfm_commands, "load_block", no_load)
    _run("lfm", "push", "--block-dir", chain / "block_1", "--pool", chain / "pool_0.npz", "--quiet", "--out", out)
    assert "nothing to do" in capsys.readouterr().out
    assert before == (os.path.getmtime(out), out.read_bytes(), (chain / "pool_1.json").read_bytes())


def test_pushed_pool_is_the_block_flow_of_its_pool(chain):
    """pool_1 = dopri5 push of pool_0 through block 1, batch by batch (as lfm-push does it)."""
    net, _ = lfm_chain.load_block(chain / "block_1")
    pool0, pool1 = lfm_chain.load_pool(chain / "pool_0.npz"), lfm_chain.load_pool(chain / "pool_1.npz")
    x, _ = blfm.push_pool(block_velocity(net), pool0[:150], "dopri5", rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x, pool1[:150], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling: counted NFE, long-format metric rows
# ---------------------------------------------------------------------------------------------------------------------


class _CallCounter:
    """Counts MLP2D forward calls: an independent count of network evaluations."""

    def __init__(self, monkeypatch):
        self.calls = 0
        forward = MLP2D.forward

        def counted(net, *args, **kwargs):
            self.calls += 1
            return forward(net, *args, **kwargs)

        monkeypatch.setattr(MLP2D, "forward", counted)


@pytest.mark.parametrize("solver,per_block", [("euler", 1), ("euler", 3), ("heun", 2), ("heun", 4)])
def test_fixed_step_nfe_is_exactly_the_sum_over_blocks(chain, monkeypatch, solver, per_block):
    calls = _CallCounter(monkeypatch)
    rec, df = _sample(chain, solver, "--nfe-per-block", per_block, name=f"{solver}{per_block}")
    assert rec["nfe_per_block"] == [per_block] * N
    assert rec["nfe"] == sum(rec["nfe_per_block"]) == rec["nfe_budget"] == N * per_block
    assert calls.calls == rec["nfe"] * 3  # 120 samples = 3 noise streams of 50, 50, 20
    assert list(df.columns) == COLUMNS_2D
    assert set(df.nfe) == {N * per_block} and set(df.method) == {"lfm"} and set(df.solver) == {solver}
    assert {"tv_hist200", "sliced_w2", "precision", "recall", "support_fraction"} <= set(df.metric)
    assert df.value.notna().all() and set(df.train_steps) == {12 * N}


def test_dopri5_nfe_is_counted_per_block(chain, monkeypatch):
    calls = _CallCounter(monkeypatch)
    rec, df = _sample(chain, "dopri5", "--rtol", 1e-2, "--atol", 1e-2, name="dopri5", n=100)
    assert len(rec["nfe_per_block"]) == N and rec["nfe_min"] <= rec["nfe"] <= rec["nfe_max"]
    assert rec["nfe"] == pytest.approx(sum(rec["nfe_per_block"]))
    assert calls.calls == pytest.approx(2 * rec["nfe"])  # two equal streams of 50: the mean NFE times 2
    assert rec["rtol"] == 1e-2 and set(df.nfe) == {rec["nfe"]}


def test_distilled_chain_uses_one_evaluation_per_block(chain, monkeypatch):
    calls = _CallCounter(monkeypatch)
    rec, df = _sample(chain, "distilled", name="distilled")
    assert rec["nfe"] == rec["nfe_budget"] == N and rec["nfe_per_block"] == [1] * N
    assert calls.calls == N * 3
    assert rec["distill_steps"] == 5 * N and rec["train_steps"] == 12 * N


def test_samples_do_not_depend_on_the_batch_of_other_streams(chain):
    """Sample i starts from the noise of stream (seed, i // block_size): a prefix of a larger set is the smaller set."""
    _sample(chain, "euler", "--nfe-per-block", 2, name="small", n=50)
    _sample(chain, "euler", "--nfe-per-block", 2, name="large", n=120)
    small, large = (np.load(chain / f"{n}.npz")["samples"] for n in ("small", "large"))
    np.testing.assert_array_equal(small, large[:50])


def test_block_student_starts_as_one_euler_step_of_its_teacher(chain):
    net, _ = lfm_chain.load_block(chain / "block_2")
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(6))
    ones = torch.ones(7)
    torch.testing.assert_close(block_student(net)(x, ones), x - block_velocity(net)(x, ones))


def test_sample_rejects_mixed_or_misordered_chains(chain, capsys):
    base = ["lfm", "sample", "--solver", "euler", "--nfe-per-block", "1", "--num-samples", "10", "--out",
            str(chain / "never.npz")]
    assert cli.main([*base, "--blocks", *map(str, reversed(_blocks(chain)))]) == 2
    assert "training order" in capsys.readouterr().err
    assert cli.main(["lfm", "sample", "--solver", "distilled", "--num-samples", "10", "--out", str(chain / "n.npz"),
                     "--blocks", *map(str, _blocks(chain))]) == 2
    assert "not a student folder" in capsys.readouterr().err
    assert cli.main([*base[:3], "dopri5", *base[4:], "--blocks", *map(str, _blocks(chain))]) == 2
    assert "--nfe-per-block applies to euler and heun" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# Exact likelihood rows
# ---------------------------------------------------------------------------------------------------------------------


def test_nll_rows_for_gmm2d(chain):
    out = chain / "nll.csv"
    _run("lfm", "nll", "--blocks", *_blocks(chain), "--reference", chain / "ref.npz", "--num-points", 40,
         "--num-steps", 2, "--out", out)
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS_2D
    v = dict(zip(df.metric, df.value, strict=True))
    assert set(v) == {"nll", "nll_se", "nll_coarse", "nll_coarse_diff_se", "data_nll", "kl_estimate", "kl_estimate_se"}
    x = np.load(chain / "ref.npz")["samples"][:40].astype(np.float64)
    assert v["data_nll"] == pytest.approx(-get_dataset_2d("gmm2d").log_prob(x).mean(), rel=1e-12)
    assert v["kl_estimate"] == pytest.approx(v["nll"] - v["data_nll"], abs=1e-9)
    assert set(df.nfe) == {N * 2 * 4} and set(df.num_samples) == {40} and set(df.method) == {"lfm"}
    # the rows' model NLL is the library's log-likelihood of the chain (RK4, 2 steps per block)
    nets = [lfm_chain.load_block(b)[0] for b in _blocks(chain)]
    ll = lfm_likelihood.log_likelihood([block_velocity(n) for n in nets], torch.from_numpy(x).float(), 2)
    assert v["nll"] == pytest.approx(-ll.double().mean().item(), rel=1e-5)


def test_adaptive_nll_rows_are_the_library_dopri5_solve(chain):
    """dopri5 NLL rows: the value is the library's dopri5 log-likelihood at the same tolerance, the coarse check row
    is present, and the counted evaluations exceed 6 per block. (The library's dopri5 NLL is checked against the
    closed form in tests/test_lfm.py. These tiny MLPs with fine position features need thousands of evaluations per
    block to resolve the divergence integral: fixed-step RK4 is far from converged at 160 steps per block.)"""
    out = chain / "nll_dopri5.csv"
    _run("lfm", "nll", "--blocks", *_blocks(chain), "--reference", chain / "ref.npz", "--num-points", 10,
         "--method", "dopri5", "--tol", 1e-3, "--out", out)
    df = pd.read_csv(out)
    v = dict(zip(df.metric, df.value, strict=True))
    assert {"nll_coarse", "nll_coarse_diff_se"} <= set(v) and np.isfinite(v["nll_coarse"])
    x = np.load(chain / "ref.npz")["samples"][:10].astype(np.float64)
    nets = [lfm_chain.load_block(b)[0] for b in _blocks(chain)]
    ll = lfm_likelihood.log_likelihood([block_velocity(n) for n in nets], torch.from_numpy(x).float(), method="dopri5",
                             rtol=1e-3, atol=1e-3)
    assert v["nll"] == pytest.approx(-ll.double().mean().item(), rel=1e-5)
    assert set(df.solver) == {"dopri5"} and (df.nfe > 6 * N).all()


# ---------------------------------------------------------------------------------------------------------------------
# Config section and keys
# ---------------------------------------------------------------------------------------------------------------------


def _ci():
    with open("config/ci.yaml") as f:
        return yaml.safe_load(f)


def test_lfm_keys_agree_with_the_library_and_the_schema():
    schema = load_schema(SCHEMA)["properties"]["lfm"]["properties"]
    assert set(schema["interpolant"]["enum"]) == set(blfm.INTERPOLANTS)
    assert set(schema["datasets"]["items"]["enum"]) == set(registry.DATASETS_2D)
    assert lfm_chain.SAMPLE_SOLVERS == (*blfm.SOLVERS, "distilled")
    assert set(lfm_chain.FIXED_STEP_SOLVERS) | {"dopri5"} == set(blfm.SOLVERS)


@pytest.mark.parametrize("name", ["ci", "config"])
def test_shipped_lfm_sections_are_valid(name):
    with open(f"config/{name}.yaml") as f:
        cfg = validate_config(yaml.safe_load(f))
    settings = sample_settings(cfg["lfm"])
    assert {s for s, _ in settings} == set(lfm_chain.SAMPLE_SOLVERS)
    assert cfg["lfm"]["nll"]["num_points"] > 0 and cfg["lfm"]["distill"]["steps"] > 0


@pytest.mark.parametrize(
    "mutate,key,value",
    [
        (lambda c: c["lfm"]["sample"].__setitem__("heun", [3]), "lfm.sample.heun.0", "3"),
        (lambda c: c["lfm"].__setitem__("num_blocks", 0), "lfm.num_blocks", "0"),
        (lambda c: c["lfm"].__setitem__("interpolant", "cosine"), "lfm.interpolant", "cosine"),
        (lambda c: c["lfm"]["train"].__setitem__("stepz", 3), "lfm.train", "stepz"),
        (lambda c: c["lfm"]["nll"].__setitem__("num_points", 10**6), "lfm.nll.num_points", "1000000"),
        (lambda c: c["lfm"].__setitem__("sample", {"euler": [], "heun": [], "dopri5_tol": []})
         or c["lfm"]["distill"].__setitem__("steps", 0), "lfm.sample", "no sampler"),
        (lambda c: c["toy"]["sample"].__setitem__("seeds", [4000]), "toy.sample.seeds", "4000"),
        (lambda c: c.pop("toy") and c.pop("images"), "<top level>", "nothing to run"),
        (lambda c: c.pop("toy"), "lfm", "'toy'"),
    ],
)
def test_bad_lfm_values_name_key_and_value(mutate, key, value):
    assert_refused(_ci(), mutate, key, value)


def test_lfm_defaults_are_filled():
    cfg = _ci()
    cfg["lfm"] = {}
    out = validate_config(cfg)["lfm"]
    assert out["num_blocks"] == 9 and out["step_c"] == 0.025 and out["step_rho"] == 1.25
    assert out["train"]["width"] == 256 and out["push"]["rtol"] == 1e-5 and out["sample"]["seeds"] == [0]
