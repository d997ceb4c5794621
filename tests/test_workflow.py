"""The CI configuration's DAG runs end to end; one rule can be rerun alone; a bad config fails before any job.

The DAG's tests (marker ``workflow``, about 9 minutes on 2 cores) run apart from the default selection:
``bash scripts/run_tests.sh -m workflow``; CI runs both."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _run(args, results, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # targets and list-valued options first: --config takes every following word up to the next option
    cmd = [*SNAKEMAKE, *args, "--cores", "2", "--configfile", "config/ci.yaml", "--config", f"results={results}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=check, timeout=1500)


@pytest.fixture(scope="module")
def ci_results(tmp_path_factory):
    results = tmp_path_factory.mktemp("wf") / "results"
    proc = _run([], results, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results


@pytest.mark.workflow
def test_dag_outputs(ci_results):
    cfg = yaml.safe_load(open(ROOT / "config/ci.yaml"))
    df = pd.read_csv(ci_results / "tables/2d.csv")
    sets = {(d, r, s) for d, runs in cfg["toy"]["experiments"].items() for r, ss in runs.items() for s in ss}
    got = set(zip(df.dataset, df.run, df.solver, strict=True)) - {(d, "reference", "exact") for d in
                                                                 cfg["toy"]["experiments"]}
    assert got == sets
    assert set(df.nfe_budget[df.method != "data"]) == set(cfg["toy"]["sample"]["nfe"])
    assert df.value.notna().all()
    heun = df[(df.solver == "heun")]
    assert set(zip(heun.nfe_budget, heun.nfe, strict=True)) == {(1, 1), (4, 3)}
    assert {"tv_hist200", "sliced_w2", "support_fraction", "precision", "recall"} <= set(df.metric)
    html = (ci_results / "reports/2d_toy.html").read_text()
    assert "Histogram grid" in html and "<img" in html and "Traceback" not in html
    targets = pd.read_csv(ci_results / "benchmarks/2d_targets.csv")
    assert len(targets) >= 4
    prov = json.loads((ci_results / "2d/checkerboard/fm/provenance.json").read_text())
    assert prov["packages"]["torch"] == "2.14.1" and prov["git_commit"]


@pytest.mark.workflow
def test_image_dag_outputs(ci_results):
    from project import validate_config

    from gmflow.experiments.images.sweeps import image_points

    images = validate_config(yaml.safe_load(open(ROOT / "config/ci.yaml")))["images"]
    df = pd.read_csv(ci_results / "tables/images.csv")
    points = image_points(images)
    got = {(r, s, e) for r, s, e in zip(df.run, df.sample_set, df.feature_extractor, strict=True) if e != "none"}
    assert got == {(p["run"], p["tag"], e) for p in points for e in p["extractors"]}
    assert df.value.notna().all()
    assert set(df[df.metric == "nll_bits_per_dim"].run) == {r for r, s in images["runs"].items()
                                                            if s["method"] == "gmflow"}
    assert {"fid", "kid", "precision", "recall", "contrast_diff", "clipped_diff"} <= set(df.metric)
    for nb in ("fig6_nfe", "fig7_table3_k", "table2_guidance", "table4_ablation", "fig8_grids"):
        html = (ci_results / f"reports/{nb}.html").read_text()
        assert "Traceback" not in html and "<table" in html and "<img" in html, nb
    targets = pd.read_csv(ci_results / "benchmarks/images_targets.csv")
    assert targets.target.str.contains("overhead").any() and targets.target.str.contains("training step").any()
    claims = pd.read_csv(ci_results / "tables/claims.csv")
    assert len(claims) > 5


@pytest.mark.workflow
def test_single_rule_reruns_alone(ci_results):
    target = str(ci_results / "2d/checkerboard/gm-k4/metrics/gm-ode-2_nfe4_gnone_seed0.csv")
    before = os.path.getmtime(target)
    proc = _run([target, "--forcerun", target, "--dry-run"], ci_results)
    assert "sample_2d" in proc.stdout and "train_2d" not in proc.stdout and "reference_2d" not in proc.stdout
    _run([target, "--forcerun", target], ci_results)
    assert os.path.getmtime(target) > before


def test_bad_config_fails_before_any_job(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [*SNAKEMAKE, "--cores", "1", "--dry-run", "--configfile", "config/ci.yaml", "--config",
           f"results={tmp_path / 'r'}", "threads=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "'threads'" in out and "0 is less than the minimum" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.workflow
def test_lfm_outputs(ci_results):
    from project import validate_config

    cfg = validate_config(yaml.safe_load(open(ROOT / "config/ci.yaml")))["lfm"]
    n = cfg["num_blocks"]
    df = pd.read_csv(ci_results / "tables/lfm_2d.csv")
    lfm = df[df.method == "lfm"]
    assert set(zip(lfm.dataset, lfm.solver, strict=True)) == {
        (d, s) for d in cfg["datasets"] for s in ("euler", "heun", "dopri5", "distilled", cfg["nll"]["method"])}
    fixed = lfm[lfm.solver.isin(["euler", "heun"])]
    assert set(zip(fixed.solver, fixed.nfe, strict=True)) == {("euler", n * 1), ("heun", n * 2)}
    assert set(lfm[lfm.solver == "distilled"].nfe) == {n}
    assert (lfm[lfm.solver == "dopri5"].nfe >= 2 * n).all()
    for d in cfg["datasets"]:
        assert {"nll", "nll_coarse", "data_nll", "kl_estimate"} <= set(lfm[lfm.dataset == d].metric)
        assert all((ci_results / f"2d/{d}/lfm/block_{b}/state.safetensors").exists() for b in range(1, n + 1))
    assert {"nll", "data_nll"} <= set(df[(df.method == "fm") & (df.dataset == "checkerboard")].metric)
    assert df.value.notna().all()
    html = (ci_results / "reports/lfm_2d.html").read_text()
    assert "Local Flow Matching" in html and "SECOND-HAND" in html and "<img" in html and "Traceback" not in html


@pytest.mark.workflow
def test_lfm_block_reruns_alone(ci_results):
    block = str(ci_results / "2d/checkerboard/lfm/block_2/ema.safetensors")
    table = str(ci_results / "tables/lfm_2d.csv")
    proc = _run([table, "--forcerun", block, "--dry-run"], ci_results)
    trained = {line.split("output: ")[1].split(",")[0] for line in proc.stdout.splitlines()
               if "output: " in line and "/block_" in line and "ema.safetensors" in line}
    assert trained == {str(ci_results / f"2d/checkerboard/lfm/block_{b}/ema.safetensors") for b in (2, 3)}
    assert "lfm_pool" not in proc.stdout and "reference_2d" not in proc.stdout
    before = os.path.getmtime(block)
    _run([table, "--forcerun", block], ci_results)
    assert os.path.getmtime(block) > before
    assert "resumed" in (ci_results / "logs/lfm/train_checkerboard_block2.log").read_text()


@pytest.mark.workflow
def test_lfm_image_outputs(ci_results):
    """LFM on the CI images: every configured sample set with its counted NFE, the budget chain and the snapshot runs
    in the comparison table, the chain's training cost, and the rendered report."""
    from project import validate_config

    from gmflow.experiments.lfm.config import image_sample_sets

    cfg = validate_config(yaml.safe_load(open(ROOT / "config/ci.yaml")))
    lfm, images = cfg["lfm_images"], cfg["images"]
    n = lfm["num_blocks"]
    df = pd.read_csv(ci_results / "tables/lfm_images.csv")
    assert df.value.notna().all()
    chains = df[df.method == "lfm"]
    assert set(zip(chains.run, chains.sample_set, strict=True)) == {
        (s["chain"], s["tag"]) for s in image_sample_sets(lfm, images)}
    main = chains[chains.run == "lfm"]
    euler = main[main.solver == "euler"]
    assert set(euler.nfe) == {n * k for k in lfm["sample"]["euler"]}
    assert set(main[main.solver == "distilled"].nfe) == set(lfm["sample"]["distilled"])
    assert (main[main.solver == "dopri5"].nfe >= 2 * n).all()
    steps = images["train"]["steps"]
    assert set(main.train_steps) == {steps}
    assert set(chains[chains.run != "lfm"].train_steps) == set(lfm["budgets"])
    snaps = df[df.run.str.contains(r"-at\d+$") & (df.method != "lfm")]
    assert set(snaps.train_steps) == set(images["train"]["snapshot_steps"]) and len(snaps)
    assert (df.groupby("run").train_seconds.first() > 0).all()
    rec = json.loads((ci_results / f"images/{images['dataset']}/lfm/samples/{euler.sample_set.iloc[0]}.json")
                     .read_text())
    pool = lfm["pool_size"]
    assert rec["push_evaluations"] == pool * lfm["push"]["nfe"] * (n - 1)
    assert rec["train_samples"] == steps * images["train"]["batch_size"]
    assert rec["train_seconds"] == pytest.approx(rec["block_train_seconds"] + rec["push_seconds"], abs=0.02)
    html = (ci_results / "reports/lfm_images.html").read_text()
    assert "SECOND-HAND" in html and "<img" in html and "<table" in html and "Traceback" not in html


@pytest.mark.workflow
def test_index_and_reports_open_in_a_real_browser(ci_results):
    """results/index.html and every rendered report load in headless chromium: every image decodes, no page shows a
    Python error, and the index links every report and shows the claims and a sample grid per image run."""
    from browser import chromium, open_page

    index = ci_results / "index.html"
    text = index.read_text()
    reports = sorted((ci_results / "reports").glob("*.html"))
    assert reports and all(f"reports/{r.name}" in text for r in reports)
    assert "within noise" in text or "agrees" in text
    if chromium() is None:
        pytest.skip("no chromium on this machine (the set-up installs Debian's chromium where apt-get is allowed)")
    for page in [index, *reports]:
        seen = open_page(page)
        assert seen["loaded"] and seen["images"] >= 1 and seen["bad_images"] == 0, (page.name, seen)
        assert not seen["error_shown"], page.name
