"""The 2D MLP's position-feature bandwidth (min_period) as a setting: the features' periods in closed form, the
run.json round trip (old records load as the paper's 0.005), the CLI and config checks, the workflow wiring of
config/bandwidth.yaml (dry run) and the bandwidth table (gmflow/experiments/toy2d/bandwidth.py)."""

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from project import ROOT, assert_refused, validate_config

from gmflow.experiments import cli
from gmflow.experiments.lfm.chain import load_block, load_student
from gmflow.experiments.toy2d.bandwidth import NO_NLL, bandwidth_table, chain_min_period, min_periods_of
from gmflow.harness.mlp2d import MAX_PERIOD, MIN_PERIOD, MLP2D, position_features, timestep_embedding
from gmflow.harness.ranges import RANGES
from gmflow.harness.runs import load_run
from gmflow.harness.schema import ConfigError
from gmflow.harness.tables import COLUMNS_2D

torch.set_num_threads(1)
TINY = ["--width", "8", "--depth", "1", "--steps", "2", "--batch-size", "32", "--warmup-steps", "1", "--quiet"]


def _run(*argv):
    return cli.main([str(a) for a in argv])


# ------------------------------------------------------------------------------------------------ the features


@pytest.mark.parametrize("min_period", [MIN_PERIOD, 0.1, 1.0])
def test_feature_periods_are_log_spaced_from_min_to_max_period(min_period):
    """d/dx sin(2 pi x / P_i) at x = 0 is 2 pi / P_i: the periods read off the Jacobian are
    P_i = min_period (max_period / min_period)^(i / (F - 1))."""
    F = 64
    x = torch.zeros(1, 2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: position_features(z, F, min_period), x)  # (1, 2 * 2F, 1, 2)
    for d in range(2):
        sin_slope = jac[0, d * 2 * F : d * 2 * F + F, 0, d].double()  # the sin features of coordinate d
        periods = 2 * math.pi / sin_slope
        expected = min_period * (MAX_PERIOD / min_period) ** (torch.arange(F, dtype=torch.float64) / (F - 1))
        torch.testing.assert_close(periods, expected, rtol=1e-5, atol=0)
        assert jac[0, d * 2 * F + F : (d + 1) * 2 * F, 0, d].abs().max() < 1e-6  # cos: zero slope at 0
        assert jac[0, (1 - d) * 2 * F : (2 - d) * 2 * F, 0, d].abs().max() == 0  # the other coordinate's features


def test_the_network_embeds_with_its_min_period():
    torch.manual_seed(0)
    net = MLP2D("velocity", width=16, depth=2, min_period=0.1).eval()
    x, t = torch.randn(5, 2), torch.rand(5) * 1000
    h = torch.cat([timestep_embedding(t, net.time_dim), position_features(x, net.num_freqs, 0.1)], dim=-1)
    torch.testing.assert_close(net(x, t), net.velocity(net.trunk(h)))
    fine = MLP2D("velocity", width=16, depth=2)
    assert fine.min_period == MIN_PERIOD == 0.005
    fine.load_state_dict(net.state_dict())  # the same weights: min_period holds none
    assert not torch.allclose(fine.eval()(x, t), net(x, t))


@pytest.mark.parametrize("bad", [0.0, -0.1, MAX_PERIOD, 60.0, float("nan"), float("inf")])
def test_network_refuses_a_min_period_outside_0_to_max_period(bad):
    with pytest.raises(ValueError, match="min_period"):
        MLP2D("velocity", width=8, depth=1, min_period=bad)


def test_the_cli_range_is_the_networks():
    r = RANGES["min_period"]
    assert (r.low, r.high, r.low_exclusive, r.high_exclusive) == (0, MAX_PERIOD, True, True)


# ------------------------------------------------------------------------------------------- run.json round trip


def test_2d_run_records_min_period_and_loads_it(tmp_path):
    out = tmp_path / "fm-mp0p1"
    assert _run("2d", "train", "--dataset", "gmm2d", "--method", "fm", *TINY, "--min-period", 0.1, "--out", out) == 0
    spec = json.loads((out / "run.json").read_text())
    assert spec["min_period"] == 0.1
    net, _, loaded = load_run(out)
    assert net.min_period == 0.1 and loaded["min_period"] == 0.1
    x, t = torch.randn(4, 2), torch.full((4,), 500.0)
    coarse = net(x, t)
    # a record written before min_period was a setting: the paper's 0.005, same weights
    (out / "run.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "min_period"}))
    old, _, _ = load_run(out)
    assert old.min_period == MIN_PERIOD
    assert not torch.allclose(old(x, t), coarse)


def test_2d_run_default_is_the_papers_value(tmp_path):
    out = tmp_path / "gm"
    assert _run("2d", "train", "--dataset", "checkerboard", "--method", "gmflow", "-K", 2, *TINY, "--out", out) == 0
    assert json.loads((out / "run.json").read_text())["min_period"] == MIN_PERIOD
    assert load_run(out)[0].min_period == MIN_PERIOD


def test_lfm_chain_records_min_period_and_reaches_the_table(tmp_path):
    """A 2-block chain at min_period 0.25: blocks and students record it, sample and NLL rows carry the chain's name
    (--run), and the table gets one row with TV and NLL."""
    pool0, ref = tmp_path / "pool_0.npz", tmp_path / "ref.npz"
    assert _run("2d", "prepare-data", "--dataset", "gmm2d", "--num-samples", 200, "--seed", 9000, "--out", pool0) == 0
    assert _run("2d", "prepare-data", "--dataset", "gmm2d", "--num-samples", 200, "--seed", 0, "--out", ref) == 0
    chain = tmp_path / "lfm-c"
    for n in (1, 2):
        init = ["--init-from", chain / "block_1" / "ema.safetensors"] if n == 2 else []
        pool = tmp_path / f"pool_{n - 1}.npz"
        assert _run("lfm", "train-block", "--dataset", "gmm2d", "--block", n, "--num-blocks", 2, "--pool", pool,
                    *init, *TINY, "--min-period", 0.25, "--out", chain / f"block_{n}") == 0
        net, spec = load_block(chain / f"block_{n}")
        assert spec["min_period"] == 0.25 and net.min_period == 0.25
        assert _run("lfm", "push", "--block-dir", chain / f"block_{n}", "--pool", tmp_path / f"pool_{n - 1}.npz",
                    "--rtol", 1e-2, "--atol", 1e-2, "--quiet", "--out", tmp_path / f"pool_{n}.npz") == 0
    assert _run("lfm", "distill", "--blocks", chain / "block_1", "--pool-in", pool0, "--pool-out",
                tmp_path / "pool_1.npz", "--steps", 1, "--batch-size", 32, "--quiet", "--out", chain / "student_1") == 0
    student, sspec = load_student(chain / "student_1")
    assert sspec["min_period"] == 0.25 and student.min_period == 0.25
    blocks = [chain / "block_1", chain / "block_2"]
    assert _run("lfm", "sample", "--blocks", *blocks, "--run", "lfm-c", "--solver", "euler", "--nfe-per-block", 1,
                "--num-samples", 200, "--block-size", 100, "--knn-points", 50, "--reference", ref, "--quiet",
                "--metrics-out", tmp_path / "m.csv", "--out", tmp_path / "s.npz") == 0
    assert _run("lfm", "nll", "--blocks", *blocks, "--run", "lfm-c", "--reference", ref, "--num-points", 20,
                "--method", "rk4", "--num-steps", 2, "--out", tmp_path / "nll.csv") == 0
    rows = pd.concat([pd.read_csv(tmp_path / "m.csv"), pd.read_csv(tmp_path / "nll.csv")])
    assert set(rows.run) == {"lfm-c"}
    t = bandwidth_table(rows, min_periods_of([], [chain]), [2])
    assert len(t) == 1 and (t.run[0], t.min_period[0], t.solver[0]) == ("lfm-c", 0.25, "euler")
    assert np.isfinite(t.loc[0, ["tv_nfe2", "nll", "kl_estimate"]].astype(float)).all()


def test_chain_blocks_of_different_min_period_are_refused(tmp_path):
    for n, mp in ((1, 0.25), (2, 0.5)):
        (tmp_path / f"block_{n}").mkdir()
        (tmp_path / f"block_{n}" / "run.json").write_text(json.dumps(
            {"network": "mlp2d", "method": "lfm", "dataset": "gmm2d", "block": n, "min_period": mp}))
    with pytest.raises(ValueError, match="different min_period"):
        chain_min_period(tmp_path)


def test_flow_run_nll_refuses_a_chain_name(tmp_path, capsys):
    assert _run("lfm", "nll", "--flow-run", tmp_path, "--run", "lfm-c", "--reference", tmp_path / "r.npz",
                "--out", tmp_path / "n.csv") == 2
    assert "--run lfm-c names a chain of --blocks" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-1", "50", "1e3", "nan", "x"])
@pytest.mark.parametrize("command", ["2d", "lfm"])
def test_cli_refuses_a_bad_min_period(command, bad, tmp_path, capsys):
    if command == "2d":
        argv = ["2d", "train", "--dataset", "gmm2d", "--method", "fm"]
    else:
        argv = ["lfm", "train-block", "--dataset", "gmm2d", "--block", "1", "--num-blocks", "2", "--pool", "p.npz"]
    assert _run(*argv, "--min-period", bad, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "argument --min-period" in err
    assert ("'x'" if bad == "x" else "min_period") in err and (bad == "x" or "(0, 50)" in err)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------- config


def _ci():
    return yaml.safe_load(open(ROOT / "config" / "ci.yaml"))


def test_min_period_defaults_are_the_papers():
    cfg = validate_config(_ci())
    assert cfg["toy"]["train"]["min_period"] == cfg["lfm"]["train"]["min_period"] == MIN_PERIOD
    assert cfg["lfm"]["chains"] == {} and cfg["report"]["bandwidth_2d"] is False


@pytest.mark.parametrize(
    "mutate,key,value",
    [
        (lambda c: c["toy"]["train"].__setitem__("min_period", 0), "toy.train.min_period", "0"),
        (lambda c: c["toy"]["runs"]["fm"].__setitem__("min_period", 50), "toy.runs.fm.min_period", "50"),
        (lambda c: c["lfm"]["train"].__setitem__("min_period", -1.0), "lfm.train.min_period", "-1.0"),
        (lambda c: c["lfm"].__setitem__("chains", {"coarse": {"min_period": 0.1}}), "lfm.chains", "coarse"),
        (lambda c: c["lfm"].__setitem__("chains", {"lfm-c": {"min_period": 80}}), "lfm.chains.lfm-c.min_period",
         "80"),
        (lambda c: c["lfm"].__setitem__("chains", {"lfm-c": {"pool_size": 80}}), "lfm.chains.lfm-c", "pool_size"),
        (lambda c: c["toy"]["runs"].__setitem__("lfm-c", {"method": "fm"}) or c["lfm"].__setitem__(
            "chains", {"lfm-c": {"min_period": 0.1}}), "toy.runs.lfm-c", "lfm-c"),
        (lambda c: c["lfm"].__setitem__("chains", {"lfm-c": {"seed": 1}}) or c["toy"]["sample"].__setitem__(
            "seeds", [4001]), "toy.sample.seeds", "4001"),
        (lambda c: c["report"].__setitem__("bandwidth_2d", True), "lfm.sample", "bandwidth_2d"),
    ],
)
def test_bad_bandwidth_settings_name_key_and_value(mutate, key, value):
    assert_refused(_ci(), mutate, key, value)


def test_bandwidth_table_needs_the_toy_section():
    cfg = _ci()
    del cfg["toy"], cfg["lfm"]
    cfg["report"]["bandwidth_2d"] = True
    with pytest.raises(ConfigError, match="'report.bandwidth_2d'"):
        validate_config(cfg)


def test_bandwidth_config_is_valid_and_sized_as_the_default():
    raw = yaml.safe_load(open(ROOT / "config" / "bandwidth.yaml"))
    cfg = validate_config(copy.deepcopy(raw))
    default = validate_config(yaml.safe_load(open(ROOT / "config" / "config.yaml")))
    assert cfg["results"] == "results-bandwidth" and "images" not in cfg and cfg["report"]["bandwidth_2d"]
    assert cfg["toy"]["train"] == default["toy"]["train"]  # the default's 2D recipe, min_period 0.005 included
    keys = ("num_blocks", "step_c", "step_rho", "interpolant", "pool_size", "train", "push")
    assert {k: cfg["lfm"][k] for k in keys} == {k: default["lfm"][k] for k in keys}
    runs = cfg["toy"]["runs"]
    assert runs["fm-mp0p1"] == {"method": "fm", "min_period": 0.1}
    assert runs["gm-k8-mp0p1"] == {"method": "gmflow", "K": 8, "min_period": 0.1}
    assert cfg["lfm"]["chains"] == {"lfm-mp0p1": {"min_period": 0.1}}
    for runs in cfg["toy"]["experiments"].values():
        assert set(runs) == {"fm", "gm-k8", "fm-mp0p1", "gm-k8-mp0p1"}


# -------------------------------------------------------------------------------------------------- the workflow


@pytest.fixture(scope="module")
def bandwidth_dry_run(tmp_path_factory):
    """{rule: [shell command]} of a dry run of config/bandwidth.yaml, and the job count."""
    results = tmp_path_factory.mktemp("bw") / "results"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--configfile", "config/bandwidth.yaml",
           "--config", f"results={results}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for block in proc.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.setdefault(rule, []).append(shell.group(1) if shell and rule != "all" else "")
    total = int(re.search(r"^total\s+(\d+)$", proc.stdout, re.M).group(1))
    return jobs, total, str(results)


def test_bandwidth_dag_passes_min_period_to_every_trainer(bandwidth_dry_run):
    jobs, _, res = bandwidth_dry_run
    train = {re.search(r"--out (\S+)", s).group(1): s for s in jobs["train_2d"]}
    assert len(train) == 8  # 4 runs x 2 datasets
    for out, shell in train.items():
        mp = "0.1" if out.endswith("-mp0p1") else "0.005"
        assert f" --min-period {mp} " in shell, shell
    blocks = {re.search(r"--out (\S+)", s).group(1): s for s in jobs["lfm_train_block"]}
    assert len(blocks) == 2 * 2 * 9  # 2 chains x 2 datasets x 9 blocks
    for d in ("checkerboard", "gmm2d"):
        for n in range(1, 10):
            assert " --min-period 0.005 " in blocks[f"{res}/2d/{d}/lfm/block_{n}"]  # the main chain's paths
            coarse = blocks[f"{res}/2d/{d}/lfm-mp0p1/block_{n}"]
            assert " --min-period 0.1 " in coarse and f"--pool {res}/2d/{d}/lfm-mp0p1/pool_{n - 1}.npz" in coarse
    for shell in jobs["lfm_sample"] + jobs["lfm_nll"]:
        chain = re.search(r"--blocks \S+/2d/\w+/([\w-]+)/block_1 ", shell).group(1)
        assert f" --run {chain} " in shell


def test_bandwidth_dag_builds_the_table_from_every_run_and_chain(bandwidth_dry_run):
    jobs, total, res = bandwidth_dry_run
    (shell,) = jobs["bandwidth_2d"]
    runs = re.search(r"--runs (.*?) --chains", shell).group(1).split()
    chains = re.search(r"--chains (.*?) --nfe", shell).group(1).split()
    datasets = ("checkerboard", "gmm2d")
    assert sorted(runs) == sorted(f"{res}/2d/{d}/{r}" for d in datasets for r in ("fm", "gm-k8", "fm-mp0p1",
                                                                                    "gm-k8-mp0p1"))
    assert sorted(chains) == sorted(f"{res}/2d/{d}/{c}" for d in datasets for c in ("lfm", "lfm-mp0p1"))
    assert " --nfe 9 36 " in shell
    for f in (f"{res}/2d/gmm2d/lfm-mp0p1/metrics/nll_seed0.csv", f"{res}/2d/gmm2d/lfm/metrics/nll_seed0.csv",
              f"{res}/2d/gmm2d/lfm/metrics/nll-flow_fm-mp0p1_seed0.csv",
              f"{res}/2d/checkerboard/lfm-mp0p1/metrics/euler_nfe4_seed0.csv",
              f"{res}/2d/checkerboard/gm-k8-mp0p1/metrics/gm-ode-2_nfe36_gnone_seed0.csv"):
        assert f in shell
    assert len(jobs["lfm_nll_flow"]) == 4 and len(jobs["lfm_nll"]) == 4 and len(jobs["sample_2d"]) == 16
    assert "lfm_distill" not in jobs and total == 127


def test_workflow_time_splits_the_stages_of_extra_chains():
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    try:
        from workflow_time import stage_of
    finally:
        sys.path.pop(0)
    root = Path("b")
    assert stage_of(root / "lfm-mp0p1" / "train_gmm2d_block1.tsv", root) == "lfm-mp0p1/train"
    assert stage_of(root / "lfm" / "push_gmm2d_block1.tsv", root) == "lfm/push"
    assert stage_of(root / "lfm-mp0p1_pool" / "gmm2d.tsv", root) == "lfm-mp0p1_pool"


# ---------------------------------------------------------------------------------------------------- the table


def _rows(dataset, run, method, K, solver, metrics, nfe=0, seed=0):
    base = {c: None for c in COLUMNS_2D}
    return [{**base, "dataset": dataset, "run": run, "method": method, "K": K, "solver": solver, "nfe": nfe,
             "nfe_budget": nfe, "seed": seed, "metric": m, "value": v} for m, v in metrics.items()]


def _nll(dataset, run, method, nll, kl):
    return _rows(dataset, run, method, 0, "dopri5", {"nll": nll, "nll_se": 0.1, "data_nll": nll - kl,
                                                     "kl_estimate": kl, "kl_estimate_se": 0.2}, nfe=1234)


def _synthetic_results(root: Path) -> tuple[list[str], list[Path], list[Path]]:
    """Metric and NLL files of two datasets, run folders (one with an old run.json) and chain folders."""
    rows = []
    for d, shift in (("gmm2d", 0.0), ("checkerboard", 0.5)):
        for run, method, K in (("fm", "fm", 0), ("fm-mp0p1", "fm", 0), ("gm-k8", "gmflow", 8),
                               ("gm-k8-mp0p1", "gmflow", 8)):
            solver = "euler" if method == "fm" else "gm-ode-2"
            for nfe in (9, 36):
                tv = shift + (0.3 if "mp0p1" in run else 0.2) + 1 / nfe
                rows += _rows(d, run, method, K, solver, {"tv_hist200": tv, "sliced_w2": 9.0}, nfe)
        for chain in ("lfm", "lfm-mp0p1"):
            for nfe, tv in ((9, 0.9), (36, 0.4)):
                rows += _rows(d, chain, "lfm", 0, "euler", {"tv_hist200": shift + tv}, nfe, seed=0)
                rows += _rows(d, chain, "lfm", 0, "euler", {"tv_hist200": shift + tv + 0.02}, nfe, seed=1)
            rows += _rows(d, chain, "lfm", 0, "dopri5", {"tv_hist200": 0.3}, 187.5)  # at no NFE of the table
        rows += _nll(d, "lfm", "lfm", 5.0 + shift, 12.7)
        rows += _nll(d, "lfm-mp0p1", "lfm", 2.0 + shift, 0.5)
        rows += _nll(d, "fm", "fm", 3.0 + shift, 1.3)
        rows += _nll(d, "fm-mp0p1", "fm", 2.5 + shift, 0.07)
        rows += _rows(d, "reference", "data", 0, "exact", {"tv_hist200": 0.25})
        rows += _rows(d, "gm-k64", "gmflow", 64, "gm-ode-2", {"tv_hist200": 0.1}, 9)  # not a run of the table
    files = []
    df = pd.DataFrame(rows, columns=COLUMNS_2D)
    for i, (_, g) in enumerate(df.groupby(["dataset", "run"])):
        files.append(str(root / f"m{i}.csv"))
        g.to_csv(files[-1], index=False)
    runs, chains = [], []
    for d in ("gmm2d", "checkerboard"):
        for run, mp in (("fm", None), ("fm-mp0p1", 0.1), ("gm-k8", 0.005), ("gm-k8-mp0p1", 0.1)):
            spec = {"network": "mlp2d", "method": "gmflow" if "gm" in run else "fm", "dataset": d,
                    **({} if mp is None else {"min_period": mp})}
            runs.append(root / "2d" / d / run)
            runs[-1].mkdir(parents=True)
            (runs[-1] / "run.json").write_text(json.dumps(spec))
        for chain, mp in (("lfm", 0.005), ("lfm-mp0p1", 0.1)):
            chains.append(root / "2d" / d / chain)
            for n in (1, 2):
                (chains[-1] / f"block_{n}").mkdir(parents=True)
                (chains[-1] / f"block_{n}" / "run.json").write_text(json.dumps(
                    {"network": "mlp2d", "method": "lfm", "dataset": d, "block": n, "min_period": mp}))
    return files, runs, chains


def test_bandwidth_table_of_synthetic_results(tmp_path):
    files, runs, chains = _synthetic_results(tmp_path)
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    try:
        from bandwidth_2d import main
    finally:
        sys.path.pop(0)
    out = tmp_path / "bandwidth_2d.csv"
    main(["--metrics", *files, "--runs", *map(str, runs), "--chains", *map(str, chains), "--nfe", "9", "36",
          "--out", str(out)])
    t = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(t.columns[:8]) == ["dataset", "method", "K", "run", "min_period", "solver", "tv_nfe9", "tv_nfe36"]
    # one row per dataset x method x min_period; datasets sorted, then fm, gmflow, lfm, coarse after fine
    assert list(zip(t.dataset, t.method, t.min_period, t.run, strict=True)) == [
        (d, m, mp, r) for d in ("checkerboard", "gmm2d")
        for m, mp, r in (("fm", 0.005, "fm"), ("fm", 0.1, "fm-mp0p1"), ("gmflow", 0.005, "gm-k8"),
                         ("gmflow", 0.1, "gm-k8-mp0p1"), ("lfm", 0.005, "lfm"), ("lfm", 0.1, "lfm-mp0p1"))]
    row = t.set_index(["dataset", "run"])
    np.testing.assert_allclose(row.loc[("gmm2d", "fm"), ["tv_nfe9", "tv_nfe36"]].astype(float),
                               [0.2 + 1 / 9, 0.2 + 1 / 36])
    np.testing.assert_allclose(row.loc[("checkerboard", "fm-mp0p1"), "tv_nfe36"], 0.8 + 1 / 36)
    np.testing.assert_allclose(row.loc[("gmm2d", "lfm-mp0p1"), ["tv_nfe9", "tv_nfe36"]].astype(float),
                               [0.91, 0.41])  # the mean over seeds 0 and 1; the dopri5 set has no column
    assert (t.solver[t.method == "lfm"] == "euler").all()
    np.testing.assert_allclose(row.loc[("gmm2d", "lfm"), ["nll", "kl_estimate", "kl_estimate_se"]].astype(float),
                               [5.0, 12.7, 0.2])
    np.testing.assert_allclose(row.loc[("checkerboard", "fm-mp0p1"), ["nll", "data_nll", "kl_estimate"]]
                               .astype(float), [3.0, 2.93, 0.07])
    gm = t[t.method == "gmflow"]
    assert gm[["nll", "kl_estimate"]].isna().all().all() and (gm.nll_note == NO_NLL["gmflow"]).all()
    assert t[t.method != "gmflow"].nll_note.isna().all()


def test_bandwidth_table_notes_a_missing_nll_and_skips_runs_it_was_not_given():
    rows = pd.DataFrame(_rows("gmm2d", "fm", "fm", 0, "euler", {"tv_hist200": 0.3}, 9)
                        + _rows("gmm2d", "fm", "fm", 0, "heun", {"tv_hist200": 0.2}, 8), columns=COLUMNS_2D)
    t = bandwidth_table(rows, {("gmm2d", "fm"): 0.1, ("gmm2d", "other"): 0.1}, [9])
    assert list(t.solver) == ["euler"]  # heun has no set at NFE 9
    assert pd.isna(t.nll[0]) and t.nll_note[0] == NO_NLL[None]
    assert bandwidth_table(rows, {("checkerboard", "fm"): 0.1}, [9]).empty


def test_min_periods_of_an_old_run_is_the_papers(tmp_path):
    (tmp_path / "fm").mkdir()
    (tmp_path / "fm" / "run.json").write_text(json.dumps({"network": "mlp2d", "method": "fm", "dataset": "gmm2d"}))
    assert min_periods_of([tmp_path / "fm"]) == {("gmm2d", "fm"): MIN_PERIOD}
    with pytest.raises(FileNotFoundError, match="block_"):
        min_periods_of([], [tmp_path / "nochain"])
