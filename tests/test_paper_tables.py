"""Paper tables of the image experiment (gmflow/experiments/images/: points, tables, claims) and their script
(workflow/scripts/paper_tables.py): selection rules on a synthetic long table with known values.

The scenario has a flow-matching run, the main GMFlow run (K = 8), a K = 4 run and a lambda = 1 run; every expected
value below is read off the points written in :func:`scenario`.
"""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gmflow.experiments.images import claims as img_claims
from gmflow.experiments.images import points as img_points
from gmflow.experiments.images import tables as img_tables

ROOT = Path(__file__).resolve().parents[1]

PUBLISHED = ROOT / "data" / "published" / "gmflow_icml2025.csv"
EXT = "classifier-toy"
RUNS = {"fm": dict(method="fm", K=0, trans_ratio=np.nan), "gm8": dict(method="gmflow", K=8, trans_ratio=0.5),
        "gm4": dict(method="gmflow", K=4, trans_ratio=0.5), "gm8l1": dict(method="gmflow", K=8, trans_ratio=1.0)}


def point(run, solver, nfe, guidance, scale, fid, prec, con, *, orth=1.0, spectral=0, substeps=1, seed=0, ext=EXT):
    base = dict(dataset="toy", run=run, **RUNS[run], solver=solver, guidance=guidance, guidance_scale=scale,
                orthogonal=orth, spectral=spectral, nfe=nfe, nfe_budget=nfe, substeps=substeps, seed=seed,
                num_samples=100, feature_extractor=ext, train_steps=10,
                sample_set=f"{solver}_nfe{nfe}_g{guidance}{scale:g}_o{orth:g}_n{substeps}_sp{spectral}_seed{seed}")
    metrics = {"fid": fid, "precision": prec, "contrast_diff": con, "clipped_diff": con / 2, "recall": 0.5}
    return [{**base, "metric": m, "value": v} for m, v in metrics.items()]


def nll(run, value):
    return [dict(dataset="toy", run=run, **RUNS[run], solver=np.nan, guidance="none", guidance_scale=0.0,
                 orthogonal=0.0, spectral=0, nfe=1, nfe_budget=1, substeps=0, seed=0, num_samples=50,
                 metric="nll_bits_per_dim", value=value, feature_extractor="none", train_steps=10, sample_set=np.nan)]


def scenario() -> pd.DataFrame:
    P, C = "probabilistic", "cfg"
    rows = [
        # flow matching, CFG (Fig. 6, Table 2); orthogonal 0 only at NFE 8
        *point("fm", "euler", 4, C, 1.5, 20, .50, .05), *point("fm", "euler", 4, C, 3.0, 22, .60, .10),
        *point("fm", "euler", 8, C, 1.5, 12, .55, .06), *point("fm", "euler", 8, C, 3.0, 14, .65, .12),
        *point("fm", "euler", 8, C, 1.5, 12.5, .50, .08, orth=0.0),
        *point("fm", "euler", 8, C, 3.0, 15, .60, .15, orth=0.0),
        *point("fm", "dpm++-2m", 8, C, 1.5, 11, .58, .07),
        # main GMFlow run: GM-ODE 2 with sub-steps (B0), without (B1), orthogonal 0
        *point("gm8", "gm-ode-2", 4, P, 0.2, 15, .60, .01, substeps=32),
        *point("gm8", "gm-ode-2", 4, P, 0.5, 16, .70, -.02, substeps=32),
        *point("gm8", "gm-ode-2", 8, P, 0.2, 9, .70, .01, substeps=16),
        *point("gm8", "gm-ode-2", 8, P, 0.5, 10, .75, -.01, substeps=16),
        *point("gm8", "gm-ode-2", 8, P, 0.3, 13, .72, -.03, substeps=1),
        *point("gm8", "gm-ode-2", 8, P, 0.2, 9.5, .68, .02, substeps=16, orth=0.0),
        *point("gm8", "gm-ode-2", 8, P, 0.5, 10.5, .71, .04, substeps=16, orth=0.0),
        # ablations at NFE 8 (A5 deliberately not run) and one A0 point at NFE 4
        *point("gm8", "gm-sde-2", 8, P, 0.2, 8, .70, .00, spectral=1),
        *point("gm8", "gm-sde-2", 8, P, 0.5, 9, .72, .01, spectral=1),
        *point("gm8", "gm-sde-2", 8, P, 0.3, 7, .50, .30, spectral=0),
        *point("gm8", "gm-sde-2", 4, P, 0.3, 30, .65, .00, spectral=1),
        *point("gm8", "gm-sde", 8, P, 0.3, 10, .71, .02, spectral=1),
        *point("gm8", "gm-sde", 8, P, 0.3, 7.5, .73, -.005, spectral=0),
        *point("gm8", "gm-sde", 8, C, 1.5, 11, .69, .20, spectral=0),
        *point("gm8", "dpm++-2m-sde", 8, P, 0.3, 12, .60, -.30),
        # K = 4 run (Fig. 7) and a headline row with Inception features
        *point("gm4", "gm-ode-2", 8, P, 0.2, 14, .60, .02, substeps=16),
        *point("fm", "euler", 8, C, 1.5, 40, .30, .06, ext="inception-tf"),
        *nll("gm4", 2.0), *nll("gm8", 1.8), *nll("gm8l1", 1.7),
    ]
    return pd.DataFrame(rows).reindex(columns=img_points.IMAGE_COLUMNS)


@pytest.fixture(scope="module")
def tables():
    return img_claims.build_tables(scenario(), img_points.load_published(PUBLISHED))


def pick(t, **eq):
    for k, v in eq.items():
        t = t[t[k] == v]
    return t


def one(t, **eq):
    q = pick(t, **eq)
    assert len(q) == 1, (eq, q)
    return q.iloc[0]


def claim(tables, text):
    c = tables["claims"]
    q = c[c.claim.str.startswith(text)]
    assert len(q) == 1, text
    return q.iloc[0]


def test_runs_and_extractor_are_chosen_by_column_values():
    df = scenario()
    assert img_points.main_gmflow_run(df) == "gm8"
    assert img_points.lambda1_run(df, "gm8") == "gm8l1"
    # without K = 8 (lambda < 1) the largest K with lambda < 1 is the main run; a lambda = 1 run never is
    assert img_points.main_gmflow_run(df[df.run != "gm8"]) == "gm4"
    assert img_points.main_gmflow_run(df[df.method == "fm"]) is None
    assert img_points.main_extractor(df, "toy") == EXT
    assert img_points.main_extractor(df[df.feature_extractor != EXT], "toy") == "inception-tf"


def test_points_average_seeds_and_count_scales():
    df = pd.concat([scenario(), pd.DataFrame(point("gm8", "gm-ode-2", 8, "probabilistic", 0.2, 11, .80, .03,
                                                   substeps=16, seed=1)).reindex(columns=img_points.IMAGE_COLUMNS)])
    w = img_points.points(df)
    r = one(w, run="gm8", solver="gm-ode-2", nfe=8, guidance_scale=0.2, substeps=16, orthogonal=1.0)
    assert (r.fid, r.precision, r.num_seeds, r.seed) == (pytest.approx(10.0), pytest.approx(.75), 2, 0)
    assert r.sample_set.endswith("seed0")
    assert r.num_scales == 2  # 0.2 and 0.5 in its group; the sub-step-1 point is another group
    assert one(w, run="gm8", solver="gm-ode-2", nfe=8, substeps=1).num_scales == 1


def test_best_over_guidance_picks_fid_and_precision_separately():
    w = img_points.points(scenario())
    b = img_points.best_over_guidance(pick(w, run="fm", solver="euler", nfe=8, orthogonal=1.0, feature_extractor=EXT))
    fid = one(b, selection="best_fid", metric="fid")
    assert (fid.value, fid.guidance_scale) == (12, 1.5)
    prec = one(b, selection="best_precision", metric="precision")
    assert (prec.value, prec.guidance_scale) == (.65, 3.0)
    sat = one(b, selection="best_precision", metric="contrast_diff")
    assert (sat.value, sat.guidance_scale) == (.12, 3.0)  # saturation at best precision, not at best FID
    assert one(b, selection="best_precision", metric="clipped_diff").value == pytest.approx(.06)


def test_fig6_uses_full_configuration_and_method_guidance(tables):
    f6 = pick(tables["fig6_nfe"], source="ours", feature_extractor=EXT)
    assert set(f6.label) == {"FM / euler", "FM / dpm++-2m", "GMFlow K=8 / gm-ode-2", "GMFlow K=8 / gm-sde-2",
                             "GMFlow K=8 / gm-sde"}
    # GM-ODE 2 at NFE 8: 16 sub-steps, orthogonal 1 (not the sub-step-1 or orthogonal-0 points)
    r = one(f6, solver="gm-ode-2", nfe=8, selection="best_fid")
    assert (r.value, r.substeps, r.orthogonal) == (9, 16, 1.0)
    assert one(f6, solver="gm-ode-2", nfe=8, metric="precision").value == .75
    # GM-SDE 2: spectral sampling on; GM-SDE with CFG (ablation A3) is not a Fig. 6 curve
    assert one(f6, solver="gm-sde-2", nfe=8, selection="best_fid").value == 8
    assert set(pick(f6, solver="gm-sde").guidance) == {"probabilistic"}
    assert one(f6, solver="euler", nfe=8, metric="contrast_diff").value == .12
    assert set(pick(tables["fig6_nfe"], source="paper").reference) == {"abstract", "sec4.2"}
    incep = pick(tables["fig6_nfe"], source="ours", feature_extractor="inception-tf")
    assert one(incep, selection="best_fid").value == 40


def test_fig6_claims(tables):
    c = claim(tables, "GM-ODE 2 best FID at NFE <= 8")
    assert c.agrees is True and "NFE 8: gm-ode-2 9 vs dpm++-2m 11" in c.ours
    assert claim(tables, "GM-ODE 2 and GM-SDE 2 best precision").agrees is True


def test_table2_at_largest_swept_nfe(tables):
    t2 = tables["table2_guidance"]
    best = pick(t2, source="ours", feature_extractor=EXT, selection="best_precision")
    assert set(best.nfe) == {8}  # no NFE 32: the largest NFE of a guidance sweep
    r = one(best, label="euler (cfg), orthogonal=0", metric="precision")
    assert (r.value, r.guidance_scale) == (.60, 3.0)
    assert one(best, label="euler (cfg), orthogonal=0", metric="contrast_diff").value == .15
    r = one(best, label="gm-ode-2 (probabilistic), orthogonal=1", metric="precision")
    assert (r.value, r.guidance_scale, r.substeps) == (.75, 0.5, 16)
    assert one(best, label="gm-sde (probabilistic), orthogonal=1", metric="precision").spectral == 1
    assert "gm-sde (cfg), orthogonal=1" not in set(best.label)  # GM solvers enter with probabilistic guidance
    sweep = pick(t2, source="ours", feature_extractor=EXT, selection="sweep", metric="precision")
    assert len(pick(sweep, solver="euler")) == 4 and len(pick(sweep, solver="gm-ode-2")) == 4
    assert len(pick(t2, source="paper")) == 28


def test_table2_claims(tables):
    c = claim(tables, "probabilistic guidance |saturation|")
    # CFG rows: .12, .15, .07; probabilistic rows: gm-ode-2 .01 / .04, gm-sde-2 .01, gm-sde .02
    assert c.ours == "NFE 8: 0.02 vs 0.1133 (|contrast_diff|)" and c.agrees is True
    assert claim(tables, "probabilistic guidance reaches a higher best precision than CFG").agrees is True  # .75, .65
    assert claim(tables, "orthogonal projection raises").ours == "2 of 2 solvers"
    assert claim(tables, "orthogonal projection lowers").agrees is True
    assert claim(tables, "orthogonal projection lowers").paper == "5 of 6 solvers"


def test_table3_and_fig7(tables):
    t3 = tables["table3_nll"]
    ours = pick(t3, source="ours")
    assert dict(zip(ours.label, ours.value, strict=True)) == {"K=4": 2.0, "K=8": 1.8, "K=8, lambda=1": 1.7}
    assert one(t3, source="paper", label="K=16, spectral prior").value == .173
    c = claim(tables, "NLL (bits/dim) decreases")
    assert c.ours == "K=4 2 -> K=8 1.8" and c.agrees is True
    f7 = pick(tables["fig7_k"], feature_extractor=EXT, label="gm-ode-2, NFE 8", selection="best_fid")
    assert dict(zip(f7.K, f7.value, strict=True)) == {4: 14, 8: 9}
    assert "gm8l1" not in set(tables["fig7_k"].run)
    assert claim(tables, "the largest K has a lower best FID").agrees is True


def test_table4_matching_and_directions(tables):
    t4 = pick(tables["table4_ablation"], source="ours", feature_extractor=EXT)
    assert set(t4.nfe) == {8}
    expect = {"A0": (8, .72, .01), "A1": (10, .71, .02), "A2": (7.5, .73, -.005), "A3": (11, .69, .20),
              "A4": (12, .60, -.30), "B0": (9, .75, -.01), "B1": (13, .72, -.03)}
    for label, (fid, prec, sat) in expect.items():
        got = (one(t4, label=label, metric="fid").value, one(t4, label=label, metric="precision").value,
               one(t4, label=label, metric="contrast_diff").value)
        assert got == pytest.approx((fid, prec, sat)), label
    assert one(t4, label="A3", metric="fid").guidance == "cfg"
    assert one(t4, label="B0", metric="fid").substeps == 16 and one(t4, label="B1", metric="fid").substeps == 1
    a5 = pick(t4, label="A5")
    assert a5.value.isna().all() and a5.description.str.contains("not run").all()

    def agrees(label, metric):
        return one(t4, label=label, metric=metric).agrees_in_direction

    # paper (vs A0 / B0): A1 fid+, prec-, |sat|+; A2 fid+, prec+, |sat|+; B1 fid+, prec+, |sat|+
    assert (agrees("A1", "fid"), agrees("A1", "precision"), agrees("A1", "contrast_diff")) == (True, True, True)
    assert (agrees("A2", "fid"), agrees("A2", "precision"), agrees("A2", "contrast_diff")) == (False, True, False)
    assert (agrees("B1", "fid"), agrees("B1", "precision"), agrees("B1", "contrast_diff")) == (True, False, True)
    assert all(pd.isna(agrees(lab, "fid")) for lab in ("A0", "B0", "A5"))
    assert pd.isna(agrees("A1", "clipped_diff"))
    assert claim(tables, "spectral sampling lowers").agrees is False  # A1 10 vs A2 7.5
    assert claim(tables, "analytic sub-steps").agrees is True
    assert math.isnan(claim(tables, "the transition loss").agrees)
    assert claim(tables, "the transition loss").ours == "NFE 8: A0 8 vs A5 not run"
    assert claim(tables, "spectral sampling lowers").ours == "NFE 8: A1 10 vs A2 7.5"


def test_table4_nfe_fallback_names_the_nfe():
    df = scenario()
    df = df[(df.nfe != 8) | (df.run == "fm")]  # ablations only at NFE 4 now
    t4 = img_tables.table4_ablation(img_points.points(df), img_points.load_published(PUBLISHED))
    ours = pick(t4, source="ours", feature_extractor=EXT)
    assert set(ours.nfe) == {4}
    assert ours.description.str.contains("the paper's NFE 8 was not run").all()
    assert one(ours, label="A0", metric="fid").value == 30
    assert pick(ours, label="A1").value.isna().all()


def test_fig8_pairs_one_per_method_at_matched_precision(tables):
    f8 = tables["fig8_pairs"]
    p = one(f8, label="probabilistic", metric="precision")
    c = one(f8, label="cfg", metric="precision")
    # closest pair across methods: gm-ode-2 orthogonal 0 (.68) vs euler orthogonal 1 (.65); GM-SDE with CFG (.69)
    # is not a CFG candidate: CFG comes from the flow-matching run
    assert (p.solver, p.guidance_scale, p.orthogonal, p.value) == ("gm-ode-2", 0.2, 0.0, .68)
    assert (c.run, c.solver, c.guidance_scale, c.orthogonal, c.value) == ("fm", "euler", 3.0, 1.0, .65)
    assert p.sample_set == "gm-ode-2_nfe8_gprobabilistic0.2_o0_n16_sp0_seed0"


def test_missing_points_do_not_crash():
    pub = img_points.load_published(PUBLISHED)
    df = scenario()
    for keep in (["fm"], ["gm4"], ["fm", "gm8l1"]):
        out = img_claims.build_tables(df[df.run.isin(keep)], pub)
        assert set(out) == {*img_points.TABLES, "claims"}
        c = out["claims"].set_index("figure")
        # no main GMFlow run: nothing of Fig. 6 or Table 4 can be checked
        assert c.loc["Fig. 6"].agrees.isna().all() and c.loc["Table 4"].agrees.isna().all(), keep
        assert len(pick(out["table4_ablation"], source="ours", feature_extractor=EXT)) == 8 * 5  # all kept
    out = img_claims.build_tables(df[df.run == "none"], pub)
    assert out["claims"].empty and all(len(pick(out[n], source="ours")) == 0 for n in img_points.TABLES)


def test_cli_end_to_end(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    scenario().to_csv(tables / "images.csv", index=False)
    script = ROOT / "workflow" / "scripts" / "paper_tables.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), "--results", str(tmp_path)], capture_output=True, text=True,
                          env=env)
    assert proc.returncode != 0 and "published_gmflow.csv does not exist" in proc.stderr
    shutil.copy(PUBLISHED, tables / "published_gmflow.csv")
    subprocess.run([sys.executable, str(script), "--results", str(tmp_path)], check=True, capture_output=True, env=env)
    for name in img_points.TABLES:
        t = pd.read_csv(tables / f"{name}.csv")
        assert list(t.columns) == img_points.OUT_COLUMNS and len(t) > 0, name
        assert set(t.source) <= {"ours", "paper"}
    claims = pd.read_csv(tables / "claims.csv")
    assert list(claims.columns) == img_points.CLAIM_COLUMNS and len(claims) == 17
    assert set(claims.feature_extractor) == {EXT}



NOTEBOOK_TABLES = {"fig6_nfe": ["fig6_nfe"], "fig7_table3_k": ["table3_nll", "fig7_k"],
                   "table2_guidance": ["table2_guidance"], "table4_ablation": ["table4_ablation"],
                   "fig8_grids": ["fig8_pairs"]}


@pytest.mark.parametrize("name", sorted(NOTEBOOK_TABLES))
def test_notebooks_are_committed_clean_and_read_their_tables(name):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and "The paper's setting differs" in nb.cells[0].source
    assert code[0].metadata.get("tags") == ["parameters"] and code[0].source == 'results = "results"'
    assert all(not c.outputs and c.execution_count is None for c in code)
    src = "\n".join(c.source for c in code)
    for table in NOTEBOOK_TABLES[name]:
        assert f'"{table}.csv"' in src
    assert img_points.PAPER_SETTING in src


def with_intervals(df: pd.DataFrame, half: float) -> pd.DataFrame:
    """The scenario with an interval value +- half on every metric but the NLL."""
    df = df.copy()
    img = df.metric != "nll_bits_per_dim"
    df["ci_low"] = np.where(img, df.value - half, np.nan)
    df["ci_high"] = np.where(img, df.value + half, np.nan)
    return df


def test_intervals_reach_the_tables_and_seeds_combine():
    df = with_intervals(scenario(), 0.01)
    extra = pd.DataFrame(point("gm8", "gm-ode-2", 8, "probabilistic", 0.2, 11, .80, .03, substeps=16, seed=1))
    extra = extra.reindex(columns=img_points.IMAGE_COLUMNS).assign(ci_low=lambda d: d.value - 0.02,
                                                                    ci_high=lambda d: d.value + 0.02)
    w = img_points.points(pd.concat([df, extra], ignore_index=True))
    r = one(w, run="gm8", solver="gm-ode-2", nfe=8, guidance_scale=0.2, substeps=16, orthogonal=1.0)
    # two seeds: centre (9 + 11) / 2, half-width sqrt(.01^2 + .02^2) / 2
    assert (r.fid_ci_low, r.fid_ci_high) == pytest.approx((10 - np.sqrt(5e-4) / 2, 10 + np.sqrt(5e-4) / 2))
    t = img_claims.build_tables(df, img_points.load_published(PUBLISHED))
    f6 = one(t["fig6_nfe"], source="ours", feature_extractor=EXT, solver="gm-ode-2", nfe=8, selection="best_fid")
    assert (f6.ci_low, f6.ci_high) == pytest.approx((8.99, 9.01))
    assert pick(t["table3_nll"], source="ours").ci_low.isna().all()
    # a table written before the intervals existed still loads, with NaN intervals
    assert pick(img_claims.build_tables(scenario(), img_points.load_published(PUBLISHED))["fig6_nfe"],
                source="ours").ci_low.isna().all()


def test_verdict_rules():
    assert img_claims.compare(1, 2, "<", (0.5, 1.5), (1.6, 2.4)) == "holds"
    assert img_claims.compare(1, 2, "<", (0.5, 1.7), (1.6, 2.4)) == "noise"
    assert img_claims.compare(1, 2, ">") == "fails"  # no intervals: the direction decides
    assert img_claims.compare(np.nan, 2, ">") is None
    v = img_claims.verdict
    assert v(["holds", "holds"], True) == "agrees" and v(["holds", "noise"], True) == "within noise"
    assert v(["holds", "noise", "fails"], True) == "disagrees" and v(["fails"], False) == "agrees"
    assert pd.isna(v([], True)) and pd.isna(v(["holds"], None)) and pd.isna(v([None], True))
    assert img_claims.abs_interval((-0.1, 0.3)) == (0.0, 0.3) and img_claims.abs_interval((-0.3, -0.1)) == (0.1, 0.3)


def test_claims_verdicts_follow_the_intervals(tables):
    pub = img_points.load_published(PUBLISHED)
    point_only = tables["claims"].set_index("claim")
    tight = img_claims.build_tables(with_intervals(scenario(), 1e-4), pub)["claims"].set_index("claim")
    wide = img_claims.build_tables(with_intervals(scenario(), 100.0), pub)["claims"].set_index("claim")
    assert tight.agrees.equals(point_only.agrees)  # agrees keeps its meaning
    for name in (point_only, tight):
        known = name.agrees.notna()
        # no intervals or tight ones: every comparison is beyond noise; where a claim's comparisons are unanimous the
        # verdict is the direction; a majority claim with a dissenting solver or curve disagrees
        assert set(name.verdict[known]) <= {"agrees", "disagrees"}
    assert point_only.verdict.isna().equals(point_only.agrees.isna())
    c = claim({"claims": tight.reset_index()}, "spectral sampling lowers")  # A1 10 vs A2 7.5: disagrees
    assert c.verdict == "disagrees" and claim({"claims": tight.reset_index()}, "analytic sub-steps").verdict == "agrees"
    # wide intervals: every comparison of ours overlaps, except the NLL's, which has no interval
    checked = wide[wide.agrees.notna()]
    nll = checked.index.str.startswith("NLL")
    assert (checked.verdict[~nll] == "within noise").all() and checked.verdict[nll].iloc[0] == "agrees"
