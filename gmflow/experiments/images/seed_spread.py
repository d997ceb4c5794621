"""The spread between two training seeds beside the generated-set intervals (``{results}/tables/seed_spread.csv``).

The claims table judges each comparison from the 95% intervals of the metrics over the generated set (bootstrap,
docs/method.md, Sec. 8.1); a second training seed is a source of variance those intervals leave out. Seed twins are
runs identical in every setting but the training seed (:func:`gmflow.experiments.images.sweeps.seed_twins`, e.g.
``fm`` and ``fm-seed1``). Two kinds of rows, each a number measured under both training seeds:

- ``comparison == "training seed"``: one metric of one run at one sample set sampled by both twins (same solver, NFE,
  guidance, orthogonal projection, sub-steps, spectral sampling, sampling seed, feature extractor).
- ``comparison == "gmflow - fm"``: the headline comparison of Chen et al. 2025 (Fig. 6, Table 2): the GMFlow run's
  metric minus the FM run's, each twin pair of one method against each of the other with the same two seeds, at
  matched points: the same NFE, guided or not, feature extractor and sampling seed, each GMFlow solver against each FM
  solver. Where a run has several points of one (solver, NFE, guided or not, extractor, sampling seed), the point of
  lowest FID over the other settings (guidance scale, orthogonal projection, sub-steps, spectral) stands for it, as in
  the paper's best-over-guidance tables; config/seeds.yaml has one point each, so nothing is chosen there. The
  interval of a difference of two independent sample sets is centred on the difference with half-width
  ``sqrt(h_gmflow^2 + h_fm^2)``; ``same_sign`` says whether the difference has the same sign under both seeds.

Columns per row: the value under each training seed with its interval (``value_seed0``, ``ci_low_seed0``,
``ci_high_seed0``, the same for seed 1), ``seed_diff = value_seed1 - value_seed0``, ``ci_halfwidth`` (the mean of
the two intervals' half-widths ``h = (ci_high - ci_low) / 2``: the interval of one number as the claims table sees
it), ``seed_diff_over_ci_halfwidth``, ``diff_ci_halfwidth = sqrt(h_0^2 + h_1^2)`` (the half-width of the interval of
the difference of two independent estimates) and ``seed_diff_beyond_noise = |seed_diff| > diff_ci_halfwidth``. A
value without an interval leaves the interval columns NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("fid", "kid", "precision", "recall", "class_consistency")
TWIN, HEADLINE = "training seed", "gmflow - fm"
POINT_KEY = ["dataset", "feature_extractor", "solver", "nfe", "guided", "seed"]  # a point of the headline match
COLUMNS = ["comparison", "dataset", "feature_extractor", "metric", "nfe", "guidance", "sample_seed", "method", "K",
           "run", "run_seed1", "solver", "sample_set", "train_seed0", "train_seed1",
           "value_seed0", "ci_low_seed0", "ci_high_seed0", "value_seed1", "ci_low_seed1", "ci_high_seed1",
           "seed_diff", "ci_halfwidth", "seed_diff_over_ci_halfwidth", "diff_ci_halfwidth", "seed_diff_beyond_noise",
           "same_sign"]


def half_width(ci_low, ci_high):
    """Half-width ``(ci_high - ci_low) / 2`` of an interval (NaN where it has none)."""
    return (ci_high - ci_low) / 2


def spread(value_0, h_0, value_1, h_1) -> dict:
    """The seed columns of rows whose values ``value_0``, ``value_1`` have interval half-widths ``h_0``, ``h_1``
    (array-likes of one length): ``seed_diff``, ``ci_halfwidth``, ``seed_diff_over_ci_halfwidth``,
    ``diff_ci_halfwidth``, ``seed_diff_beyond_noise`` (True / False, NaN without both intervals)."""
    v0, v1, h0, h1 = (pd.Series(np.asarray(x, dtype=float)) for x in (value_0, value_1, h_0, h_1))
    diff, h, h_diff = v1 - v0, (h0 + h1) / 2, np.sqrt(h0**2 + h1**2)
    beyond = (diff.abs() > h_diff).astype(object).where(h_diff.notna() & diff.notna(), np.nan)
    return {"seed_diff": diff, "ci_halfwidth": h, "seed_diff_over_ci_halfwidth": diff / h,
            "diff_ci_halfwidth": h_diff, "seed_diff_beyond_noise": beyond}


def _guidance(mode, scale) -> str:
    return "none" if mode == "none" else f"{mode} {float(scale):g}"


def _metric_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The long table's rows of a sample set and one of :data:`METRICS`, with ``guided`` and ``h`` columns."""
    d = df[df["metric"].isin(METRICS) & df["sample_set"].notna() & (df["feature_extractor"] != "none")].copy()
    d["guided"] = d["guidance"] != "none"
    d["h"] = half_width(d["ci_low"], d["ci_high"])
    return d


def _order(t: pd.DataFrame) -> pd.DataFrame:
    rank = t["metric"].map({m: i for i, m in enumerate(METRICS)})
    keys = ["comparison", "feature_extractor", "run", "nfe", "solver", "guidance", "sample_seed"]
    return t.assign(_rank=rank).sort_values([*keys, "_rank"], kind="stable").drop(columns="_rank")


def twin_rows(df: pd.DataFrame, twins: list[tuple[str, str]], train_seeds: dict[str, int]) -> pd.DataFrame:
    """Rows ``comparison == "training seed"``: every metric of every sample set that both runs of a twin pair have
    (same ``sample_set`` name, i.e. the same point and sampling seed, and the same feature extractor)."""
    d, out = _metric_rows(df), []
    on = ["dataset", "feature_extractor", "sample_set", "metric"]
    for run_0, run_1 in twins:
        a, b = d[d["run"] == run_0], d[d["run"] == run_1]
        m = a.merge(b[[*on, "value", "ci_low", "ci_high", "h"]], on=on, suffixes=("_0", "_1"))
        if m.empty:
            continue
        rows = pd.DataFrame({
            "comparison": TWIN, "dataset": m["dataset"], "feature_extractor": m["feature_extractor"],
            "metric": m["metric"], "nfe": m["nfe"],
            "guidance": [_guidance(g, s) for g, s in zip(m["guidance"], m["guidance_scale"], strict=True)],
            "sample_seed": m["seed"], "method": m["method"], "K": m["K"], "run": run_0, "run_seed1": run_1,
            "solver": m["solver"], "sample_set": m["sample_set"], "train_seed0": train_seeds[run_0],
            "train_seed1": train_seeds[run_1], "value_seed0": m["value_0"], "ci_low_seed0": m["ci_low_0"],
            "ci_high_seed0": m["ci_high_0"], "value_seed1": m["value_1"], "ci_low_seed1": m["ci_low_1"],
            "ci_high_seed1": m["ci_high_1"]})
        rows = rows.reset_index(drop=True)
        out.append(pd.concat([rows, pd.DataFrame(spread(m["value_0"], m["h_0"], m["value_1"], m["h_1"]))], axis=1))
    return _order(pd.concat(out, ignore_index=True)) if out else pd.DataFrame(columns=COLUMNS)


def matched_points(d: pd.DataFrame, run: str) -> pd.DataFrame:
    """``run``'s metric rows at one point per :data:`POINT_KEY`: the sample set of lowest FID of its extractor (the
    first name without an FID), every metric read at that sample set."""
    r = d[d["run"] == run]
    fid = r[r["metric"] == "fid"][[*POINT_KEY, "sample_set", "value"]].rename(columns={"value": "_fid"})
    sets = r[[*POINT_KEY, "sample_set"]].drop_duplicates().merge(fid, on=[*POINT_KEY, "sample_set"], how="left")
    best = (sets.sort_values(["_fid", "sample_set"], na_position="last", kind="stable")
            .groupby(POINT_KEY, dropna=False, sort=False).head(1))
    return r.merge(best[[*POINT_KEY, "sample_set"]], on=[*POINT_KEY, "sample_set"])


def _difference(d: pd.DataFrame, gm: str, fm: str) -> pd.DataFrame:
    """GMFlow run ``gm`` minus FM run ``fm`` per metric at every matched pair of points; interval half-width
    ``sqrt(h_gm^2 + h_fm^2)``."""
    g, f = matched_points(d, gm), matched_points(d, fm)
    on = ["dataset", "feature_extractor", "nfe", "guided", "seed", "metric"]
    m = g.merge(f, on=on, suffixes=("_gm", "_fm"))
    return m.assign(diff=m["value_gm"] - m["value_fm"], h=np.sqrt(m["h_gm"] ** 2 + m["h_fm"] ** 2))


def headline_rows(df: pd.DataFrame, twins: list[tuple[str, str]], train_seeds: dict[str, int]) -> pd.DataFrame:
    """Rows ``comparison == "gmflow - fm"``: for each GMFlow twin pair and FM twin pair with the same two training
    seeds, GMFlow minus FM at matched points under each seed, and ``same_sign`` of the two differences."""
    d = _metric_rows(df)
    method = d.drop_duplicates("run").set_index("run")["method"]
    pairs = [(t, method.get(t[0])) for t in twins]
    out = []
    for (g0, g1), mg in pairs:
        for (f0, f1), mf in pairs:
            if (mg, mf) != ("gmflow", "fm") or (train_seeds[g0], train_seeds[g1]) != (train_seeds[f0], train_seeds[f1]):
                continue
            on = ["dataset", "feature_extractor", "nfe", "guided", "seed", "metric", "solver_gm", "solver_fm"]
            m = _difference(d, g0, f0).merge(_difference(d, g1, f1), on=on, suffixes=("_0", "_1"))
            if m.empty:
                continue
            rows = pd.DataFrame({
                "comparison": HEADLINE, "dataset": m["dataset"], "feature_extractor": m["feature_extractor"],
                "metric": m["metric"], "nfe": m["nfe"],
                "guidance": [f"{_guidance(a, b)} - {_guidance(c, e)}" for a, b, c, e in
                             zip(m["guidance_gm_0"], m["guidance_scale_gm_0"], m["guidance_fm_0"],
                                 m["guidance_scale_fm_0"], strict=True)],
                "sample_seed": m["seed"], "method": "gmflow - fm", "K": m["K_gm_0"], "run": f"{g0} - {f0}",
                "run_seed1": f"{g1} - {f1}", "solver": m["solver_gm"] + " - " + m["solver_fm"],
                "sample_set": m["sample_set_gm_0"] + " - " + m["sample_set_fm_0"], "train_seed0": train_seeds[g0],
                "train_seed1": train_seeds[g1], "value_seed0": m["diff_0"], "ci_low_seed0": m["diff_0"] - m["h_0"],
                "ci_high_seed0": m["diff_0"] + m["h_0"], "value_seed1": m["diff_1"],
                "ci_low_seed1": m["diff_1"] - m["h_1"], "ci_high_seed1": m["diff_1"] + m["h_1"]}).reset_index(drop=True)
            same = pd.Series(np.sign(m["diff_0"].to_numpy()) == np.sign(m["diff_1"].to_numpy()), dtype=object)
            rows["same_sign"] = same.where((m["diff_0"].notna() & m["diff_1"].notna()).to_numpy(), np.nan)
            out.append(pd.concat([rows, pd.DataFrame(spread(m["diff_0"], m["h_0"], m["diff_1"], m["h_1"]))], axis=1))
    return _order(pd.concat(out, ignore_index=True)) if out else pd.DataFrame(columns=COLUMNS)


def seed_spread(df: pd.DataFrame, twins: list[tuple[str, str]], train_seeds: dict[str, int]) -> pd.DataFrame:
    """The table: :func:`twin_rows` then :func:`headline_rows`, in :data:`COLUMNS`.

    Args:
        df: the long image table (``{results}/tables/images.csv``, read by
            :func:`gmflow.experiments.images.points.load_images`).
        twins: pairs ``(run_0, run_1)`` of seed twins, ``run_0`` of the smaller training seed.
        train_seeds: the training seed of every run in ``twins``.
    """
    missing = sorted({r for t in twins for r in t} - set(train_seeds))
    if missing:
        raise ValueError(f"no training seed given for runs {missing}; pass one per run of every twin pair")
    parts = [t for t in (twin_rows(df, twins, train_seeds), headline_rows(df, twins, train_seeds)) if len(t)]
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(parts, ignore_index=True).reindex(columns=COLUMNS)
