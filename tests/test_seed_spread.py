"""Seed twins (runs differing only in their training seed), the seed-spread table against hand-computed numbers, and
the per-run seed reaching the trainer in a dry run of config/seeds.yaml."""

import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from project import ROOT, validate_config

from gmflow.experiments.images.seed_spread import COLUMNS, HEADLINE, TWIN
from gmflow.experiments.images.sweeps import check_images_config, point_tag, run_setting, seed_twins
from gmflow.harness.tables import COLUMNS_IMAGES, concat_tables


def _section(runs, seed=0, trans_ratio=0.5):
    return {"train": {"seed": seed, "trans_ratio": trans_ratio}, "runs": runs}


# ------------------------------------------------------------------------------------------------------- seed twins


def test_twins_are_runs_that_differ_in_the_seed_only():
    sec = _section({
        "fm": {"method": "fm"},
        "gm-k8": {"method": "gmflow", "K": 8},
        "gm-k1": {"method": "gmflow", "K": 1},  # no twin: another K
        "fm-seed1": {"method": "fm", "seed": 1},
        "gm-k8-seed1": {"method": "gmflow", "K": 8, "seed": 1},
        "gm-k8-l1-seed1": {"method": "gmflow", "K": 8, "trans_ratio": 1.0, "seed": 1},  # another lambda too
        "gm-k1-again": {"method": "gmflow", "K": 1, "seed": 0},  # gm-k1 once more (same seed): not a twin
    })
    assert seed_twins(sec) == [("fm", "fm-seed1"), ("gm-k8", "gm-k8-seed1")]
    assert run_setting(sec, "fm-seed1", "seed") == 1 and run_setting(sec, "fm", "seed") == 0


def test_twins_compare_settings_as_trained():
    # an override equal to the train value is no difference; the smaller seed comes first whatever the order
    sec = _section({"b": {"method": "fm", "seed": 7, "trans_ratio": 0.5}, "a": {"method": "fm", "seed": 3}}, seed=5)
    assert seed_twins(sec) == [("a", "b")]
    # three seeds: each further seed against the smallest (here the train seed)
    sec = _section({"s2": {"method": "fm", "seed": 2}, "s0": {"method": "fm"}, "s1": {"method": "fm", "seed": 1}})
    assert seed_twins(sec) == [("s0", "s1"), ("s0", "s2")]
    # a run without a twin, and runs imported from a published snapshot, give none
    assert seed_twins(_section({"fm": {"method": "fm"}, "gm": {"method": "gmflow", "K": 8}})) == []
    official = {"method": "gmflow", "K": 8, "official": "/snap"}
    assert seed_twins(_section({"o": official, "p": {**official, "official_variant": "bf16"}})) == []


def test_shipped_configs_have_twins_only_in_the_seeds_config():
    """The default, CI, paper and fairness DAGs gain no seed_spread job."""
    for name in ("config", "ci", "paper", "fairness"):
        cfg = validate_config(yaml.safe_load(open(ROOT / "config" / f"{name}.yaml")))
        assert seed_twins(cfg["images"]) == [] and seed_twins(cfg["toy"]) == [], name
    cfg = validate_config(yaml.safe_load(open(ROOT / "config" / "seeds.yaml")))
    assert seed_twins(cfg["images"]) == [("fm", "fm-seed1"), ("gm-k8", "gm-k8-seed1")]
    assert "toy" not in cfg and "lfm" not in cfg and "lfm_images" not in cfg


def test_an_official_run_takes_no_seed():
    cfg = yaml.safe_load(open(ROOT / "config" / "ci.yaml"))
    cfg["images"]["runs"]["fm"]["seed"] = 1
    images = validate_config(cfg)["images"]
    images["runs"]["gm"] = {"method": "gmflow", "K": 8, "official": "/snap", "seed": 1}
    assert any("'images.runs.gm.seed'" in e and "published snapshot" in e for e in check_images_config(images))


# ------------------------------------------------------------------------------------------------ the spread table

EXT = "classifier-fashion-mnist"
SCRIPT = ROOT / "workflow" / "scripts" / "seed_spread.py"


def _point(solver, guidance, scale):
    return {"solver": solver, "nfe": 6, "guidance": guidance, "scale": scale, "orthogonal": 1.0,
            "substeps": "paper-imagenet" if solver.startswith("gm-ode") else 1, "spectral": 0, "seed": 0}


POINTS = {"euler": _point("euler", "cfg", 2.0), "dpm": _point("dpm++-2m", "cfg", 2.0),
          "gm": _point("gm-ode-2", "probabilistic", 0.3), "gm-high": _point("gm-ode-2", "probabilistic", 0.6)}
# run -> point -> metric -> (value, ci_low, ci_high); KID without an interval
METRICS = {
    "fm": {"euler": {"fid": (10, 9, 12), "precision": (0.60, 0.55, 0.65), "kid": (0.02, None, None)},
           "dpm": {"fid": (11, 10, 12), "precision": (0.5, 0.4, 0.6)}},  # not sampled by fm-seed1
    "fm-seed1": {"euler": {"fid": (13, 12, 14), "precision": (0.62, 0.58, 0.66), "kid": (0.03, None, None)}},
    "gm-k8": {"gm": {"fid": (8, 7, 9), "precision": (0.70, 0.66, 0.74)},
              "gm-high": {"fid": (9, 8, 10), "precision": (0.9, 0.8, 1.0)}},  # higher FID: not the matched point
    "gm-k8-seed1": {"gm": {"fid": (14, 13, 15), "precision": (0.66, 0.63, 0.69)}},
}


POINT_OF = {"fm": "euler", "gm-k8": "gm"}  # the point each twin pair shares


def _write_metric_csvs(folder):
    """One metric CSV per (run, sample set) in the columns rule evaluate_images writes, and one NLL file."""
    paths = []
    for run, sets in METRICS.items():
        method = "fm" if run.startswith("fm") else "gmflow"
        for name, metrics in sets.items():
            p = POINTS[name]
            rows = [{"dataset": "fashion-mnist", "run": run, "method": method, "K": 8 if method == "gmflow" else 1,
                     "trans_ratio": 0.5 if method == "gmflow" else None, "solver": p["solver"],
                     "guidance": p["guidance"], "guidance_scale": p["scale"], "orthogonal": p["orthogonal"],
                     "spectral": p["spectral"], "nfe": 6, "nfe_budget": 6, "substeps": 8, "seed": 0,
                     "num_samples": 1000, "metric": m, "value": v, "feature_extractor": EXT, "train_steps": 1200,
                     "sample_set": point_tag(p), "train_seconds": 1.0, "ci_low": lo, "ci_high": hi}
                    for m, (v, lo, hi) in metrics.items()]
            paths.append(folder / f"{run}_{name}.csv")
            pd.DataFrame(rows, columns=COLUMNS_IMAGES).to_csv(paths[-1], index=False)
    nll = {**dict.fromkeys(COLUMNS_IMAGES), "dataset": "fashion-mnist", "run": "gm-k8", "method": "gmflow", "K": 8,
           "metric": "nll_bits_per_dim", "value": 1.2, "feature_extractor": "none", "seed": 0, "nfe": 1}
    paths.append(folder / "nll.csv")
    pd.DataFrame([nll], columns=COLUMNS_IMAGES).to_csv(paths[-1], index=False)
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    """The table written by workflow/scripts/seed_spread.py from the synthetic metric files."""
    d = tmp_path_factory.mktemp("spread")
    concat_tables(_write_metric_csvs(d)).to_csv(d / "images.csv", index=False)  # as `gmflow-bench report` does
    out = d / "seed_spread.csv"
    subprocess.run([sys.executable, str(SCRIPT), "--table", str(d / "images.csv"), "--twin", "fm=0", "fm-seed1=1",
                    "--twin", "gm-k8=0", "gm-k8-seed1=1", "--out", str(out)], check=True, capture_output=True)
    return pd.read_csv(out)


def _row(t, comparison, run, metric):
    r = t[(t.comparison == comparison) & (t.run == run) & (t.metric == metric)]
    assert len(r) == 1, (comparison, run, metric, r)
    return r.iloc[0]


def test_twin_rows_only_where_both_seeds_sampled_the_point(spread):
    assert list(spread.columns) == COLUMNS
    twin = spread[spread.comparison == TWIN]
    # fm at Euler (fid, kid, precision), gm-k8 at GM-ODE 2 w = 0.3 (fid, precision); not DPM++ 2M, w = 0.6 or NLL
    assert sorted(zip(twin.run, twin.metric, strict=True)) == [
        ("fm", "fid"), ("fm", "kid"), ("fm", "precision"), ("gm-k8", "fid"), ("gm-k8", "precision")]
    assert set(twin.sample_set) == {point_tag(POINTS["euler"]), point_tag(POINTS["gm"])}
    assert list(twin[twin.run == "fm"].metric) == ["fid", "kid", "precision"]  # the table's metric order
    assert twin.same_sign.isna().all()


@pytest.mark.parametrize("run,metric,v,h,beyond", [
    # (value seed 0, value seed 1), (half-width seed 0, seed 1), |diff| > sqrt(h0^2 + h1^2)
    ("fm", "fid", (10, 13), (1.5, 1.0), True),
    ("fm", "precision", (0.60, 0.62), (0.05, 0.04), False),
    ("gm-k8", "fid", (8, 14), (1.0, 1.0), True),
    ("gm-k8", "precision", (0.70, 0.66), (0.04, 0.03), False),
])
def test_twin_rows_against_hand_computed_numbers(spread, run, metric, v, h, beyond):
    r = _row(spread, TWIN, run, metric)
    assert (r.run_seed1, r.train_seed0, r.train_seed1) == (f"{run}-seed1", 0, 1)
    assert (r.value_seed0, r.value_seed1) == pytest.approx(v)
    ci = [METRICS[name][POINT_OF[run]][metric][1:] for name in (run, f"{run}-seed1")]  # carried over as written
    assert (r.ci_low_seed0, r.ci_high_seed0, r.ci_low_seed1, r.ci_high_seed1) == pytest.approx((*ci[0], *ci[1]))
    diff, mean_h, diff_h = v[1] - v[0], (h[0] + h[1]) / 2, math.hypot(*h)
    assert r.seed_diff == pytest.approx(diff)
    assert r.ci_halfwidth == pytest.approx(mean_h)
    assert r.seed_diff_over_ci_halfwidth == pytest.approx(diff / mean_h)
    assert r.diff_ci_halfwidth == pytest.approx(diff_h)
    assert bool(r.seed_diff_beyond_noise) is beyond


def test_a_value_without_interval_has_no_noise_verdict(spread):
    r = _row(spread, TWIN, "fm", "kid")
    assert r.seed_diff == pytest.approx(0.01)
    assert np.isnan(r.ci_halfwidth) and np.isnan(r.diff_ci_halfwidth) and pd.isna(r.seed_diff_beyond_noise)


def test_headline_rows_gmflow_minus_fm_per_seed(spread):
    head = spread[spread.comparison == HEADLINE]
    # matched points: GM-ODE 2 at its lowest-FID scale (0.3, not 0.6) vs Euler (DPM++ 2M has no seed-1 point)
    assert set(head.run) == {"gm-k8 - fm"} and set(head.run_seed1) == {"gm-k8-seed1 - fm-seed1"}
    assert set(head.solver) == {"gm-ode-2 - euler"} and set(head.guidance) == {"probabilistic 0.3 - cfg 2"}
    assert set(head.sample_set) == {f"{point_tag(POINTS['gm'])} - {point_tag(POINTS['euler'])}"}
    assert sorted(head.metric) == ["fid", "precision"]  # gm-k8 has no KID
    # FID: seed 0: 8 - 10 = -2 (h = sqrt(1^2 + 1.5^2)); seed 1: 14 - 13 = +1 (h = sqrt(1^2 + 1^2)): the sign flips
    r = _row(spread, HEADLINE, "gm-k8 - fm", "fid")
    h0, h1 = math.hypot(1, 1.5), math.hypot(1, 1)
    assert (r.value_seed0, r.value_seed1) == pytest.approx((-2, 1))
    assert (r.ci_low_seed0, r.ci_high_seed0, r.ci_low_seed1, r.ci_high_seed1) == pytest.approx(
        (-2 - h0, -2 + h0, 1 - h1, 1 + h1))
    assert r.seed_diff == pytest.approx(3) and r.diff_ci_halfwidth == pytest.approx(math.hypot(h0, h1))
    assert r.ci_halfwidth == pytest.approx((h0 + h1) / 2)
    assert bool(r.seed_diff_beyond_noise) is True and bool(r.same_sign) is False
    # precision: 0.70 - 0.60 = 0.10 and 0.66 - 0.62 = 0.04: same sign, the change within noise
    r = _row(spread, HEADLINE, "gm-k8 - fm", "precision")
    h0, h1 = math.hypot(0.04, 0.05), math.hypot(0.03, 0.04)
    assert (r.value_seed0, r.value_seed1) == pytest.approx((0.10, 0.04))
    assert r.diff_ci_halfwidth == pytest.approx(math.hypot(h0, h1))
    assert bool(r.seed_diff_beyond_noise) is False and bool(r.same_sign) is True


def test_script_refuses_a_missing_table(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--table", str(tmp_path / "none.csv"), "--twin", "fm=0",
                           "fm-seed1=1", "--out", str(tmp_path / "o.csv")], capture_output=True, text=True)
    assert proc.returncode != 0 and "table_images" in proc.stderr


# ----------------------------------------------------------------------------------------- the workflow's dry run


def test_run_seed_reaches_the_trainer_in_a_dry_run(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--configfile", "config/seeds.yaml",
           "--config", f"results={tmp_path / 'r'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shells = {}
    for block in proc.stdout.split("\nrule ")[1:]:
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        shells.setdefault(block.split(":", 1)[0], []).append(shell.group(1) if shell else "")
    seeds = {re.search(r"--out \S+/(\S+) ", s).group(1): re.search(r" --seed (\d+) ", s).group(1)
             for s in shells["train_images"]}
    assert seeds == {"fm": "0", "gm-k8": "0", "fm-seed1": "1", "gm-k8-seed1": "1"}
    (spread_job,) = shells["seed_spread"]
    assert "--twin fm=0 fm-seed1=1 --twin gm-k8=0 gm-k8-seed1=1" in spread_job
    # the twins share every sample set: the same names under each run
    sets = {}
    for s in shells["sample_images"]:
        run, name = re.search(r"/images/fashion-mnist/([^/]+)/samples/(\S+)\.npz", s).groups()
        sets.setdefault(run.removesuffix("-seed1"), {}).setdefault(run, set()).add(name)
    assert all(len({frozenset(v) for v in by.values()}) == 1 and len(by) == 2 for by in sets.values()), sets
    assert not {"report_images", "bench_images", "paper_tables", "train_2d"} & set(shells)
