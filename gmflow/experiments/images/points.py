"""Points of the image table: reading the long table and the published numbers, one row per sweep point with its
metrics as columns, best over guidance, and the choice of the main runs and feature extractor. The conventions are
in :mod:`gmflow.experiments.images.tables`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gmflow.experiments.images.sweeps import parse_snapshot_run

IMAGE_COLUMNS = ["dataset", "run", "method", "K", "trans_ratio", "solver", "guidance", "guidance_scale", "orthogonal",
                 "spectral", "nfe", "nfe_budget", "substeps", "seed", "num_samples", "metric", "value",
                 "feature_extractor", "train_steps", "sample_set"]
CI_COLUMNS = ["ci_low", "ci_high"]  # the 95% interval of ``value`` (NaN where none was computed)
EXTRA_COLUMNS = ["num_seeds", "num_scales", "source", "label", "selection", "reference", "description",
                 "agrees_in_direction"]
OUT_COLUMNS = IMAGE_COLUMNS + CI_COLUMNS + EXTRA_COLUMNS
CLAIM_COLUMNS = ["dataset", "figure", "claim", "feature_extractor", "ours", "paper", "agrees", "verdict"]
TABLES = ("fig6_nfe", "fig7_k", "table2_guidance", "table3_nll", "table4_ablation", "fig8_pairs")

# one sweep point (seed and sample set aside) and one best-over-guidance group
POINT = [c for c in IMAGE_COLUMNS if c not in ("seed", "metric", "value", "sample_set")]
GROUP = [c for c in POINT if c != "guidance_scale"]
CURVE = ["dataset", "feature_extractor", "run", "solver", "guidance", "nfe"]

SATURATION = "contrast_diff"
NLL = "nll_bits_per_dim"
CLASS_CONSISTENCY = "class_consistency"
REAL_FLOOR = "class_consistency_real"  # the classifier's accuracy on the real reference images
POINT_METRICS = ("fid", "kid", "precision", "recall", SATURATION, "clipped_diff", CLASS_CONSISTENCY, REAL_FLOOR)
PAPER_SETTING = "paper (ImageNet 256, DiT-XL/2)"
PAPER_POINT = {"dataset": "imagenet256", "run": "paper", "feature_extractor": "inception-tf", "num_samples": 50000}

# ------------------------------------------------------------------------------------------------------------ input


def load_images(path: str | Path) -> pd.DataFrame:
    """The long table of the image experiment, with numeric columns typed. Training snapshots (runs '{run}-at{k}',
    shown beside LFM for quality vs training time) are left out: the paper's tables compare fully trained models."""
    df = pd.read_csv(path)
    if "run" in df.columns:
        df = df[df["run"].map(lambda r: parse_snapshot_run(str(r)) is None)].reset_index(drop=True)
    missing = [c for c in IMAGE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} are missing (columns seen: {list(df.columns)}); "
                         "it must be the long table written by `gmflow-bench report` (rule table_images)")
    for c in CI_COLUMNS:  # tables written before the intervals existed have none
        if c not in df.columns:
            df[c] = np.nan
    for c in ("K", "trans_ratio", "guidance_scale", "orthogonal", "spectral", "nfe", "nfe_budget", "substeps", "seed",
              "num_samples", "value", "train_steps", *CI_COLUMNS):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def load_published(path: str | Path) -> pd.DataFrame:
    """The paper's numbers (data/published/gmflow_icml2025.csv) as rows of the output columns, source "paper"."""
    pub = pd.read_csv(path)
    out = pd.DataFrame({c: pub[c] for c in ("method", "solver", "guidance", "guidance_scale", "orthogonal", "nfe", "K",
                                            "metric", "value") if c in pub.columns})
    for c, v in PAPER_POINT.items():
        out[c] = v
    out["dataset"] = pub["dataset"]
    out["nfe_budget"] = out["nfe"]
    out["reference"] = pub["table"]
    out["description"] = pub["note"]
    out["source"] = "paper"
    out["train_steps"] = 200000
    return _frame(out)


def _frame(rows: pd.DataFrame | list) -> pd.DataFrame:
    """Rows in the output columns (missing columns empty), numeric columns typed."""
    df = pd.DataFrame(rows) if isinstance(rows, list) else rows
    df = df.reindex(columns=OUT_COLUMNS)
    for c in ("K", "trans_ratio", "guidance_scale", "orthogonal", "spectral", "nfe", "nfe_budget", "substeps", "seed",
              "num_samples", "value", "train_steps", "num_seeds", "num_scales", *CI_COLUMNS):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["agrees_in_direction"] = df["agrees_in_direction"].astype(object)
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- points and groups


def points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per sweep point and feature extractor, one column per metric (seeds averaged), and per metric its
    interval in columns ``<metric>_ci_low`` / ``<metric>_ci_high``.

    Extra columns: ``seed`` (the smallest), ``sample_set`` (that seed's), ``num_seeds`` and ``num_scales`` (guidance
    scales in the point's best-over-guidance group). The interval of a mean over k seeds (independent sample sets)
    is centred on the mean of the seeds' interval centres with half-width ``sqrt(sum h_s^2) / k`` of their
    half-widths ``h_s`` (one seed: its own interval); NaN if any seed has none.
    """
    img = df[(df.metric != NLL) & df.solver.notna() & (df.feature_extractor != "none")]
    if img.empty:
        return pd.DataFrame(columns=POINT + ["seed", "sample_set", "num_seeds", "num_scales", *POINT_METRICS,
                                             *(f"{m}_{c}" for m in POINT_METRICS for c in CI_COLUMNS)])
    if "ci_low" not in img.columns:
        img = img.assign(ci_low=np.nan, ci_high=np.nan)
    by_seed = img.groupby(POINT + ["seed", "sample_set", "metric"], dropna=False, sort=True)
    value = by_seed["value"].mean().unstack("metric")
    metrics = list(value.columns)
    lo, hi = by_seed["ci_low"].mean().unstack("metric"), by_seed["ci_high"].mean().unstack("metric")
    per_seed = pd.concat([value, ((lo + hi) / 2).add_suffix("__centre"), ((hi - lo) ** 2 / 4).add_suffix("__h2")],
                         axis=1).reset_index().sort_values("seed", kind="stable")
    g = per_seed.groupby(POINT, dropna=False, sort=True)
    w = g[metrics].mean()
    k = g.size()
    for m in metrics:
        complete = g[f"{m}__centre"].count() == k
        centre = g[f"{m}__centre"].mean().where(complete)
        half = np.sqrt(g[f"{m}__h2"].sum()) / k
        w[f"{m}_ci_low"], w[f"{m}_ci_high"] = centre - half, centre + half
    w["seed"] = g["seed"].min()
    w["sample_set"] = g["sample_set"].first()
    w["num_seeds"] = k
    w = w.reset_index()
    for m in POINT_METRICS:
        for col in (m, f"{m}_ci_low", f"{m}_ci_high"):
            if col not in w.columns:
                w[col] = np.nan
    w["num_scales"] = w.groupby(GROUP, dropna=False)["guidance_scale"].transform("nunique")
    w.columns.name = None
    return w


def full_config(w: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Keep, within each ``by`` group, the largest orthogonal, then spectral, then substeps value present."""
    for col in ("orthogonal", "spectral", "substeps"):
        if w.empty:
            return w
        w = w[w[col] == w.groupby(by, dropna=False)[col].transform("max")]
    return w


def to_long(rows: pd.DataFrame, metrics: list[str], selection: str) -> pd.DataFrame:
    """Wide point rows -> long output rows of ``metrics`` (source "ours"), each with its interval (``ci_low``,
    ``ci_high`` from the wide ``<metric>_ci_low`` / ``<metric>_ci_high``, NaN where absent)."""
    if rows.empty:
        return _frame([])
    keep = [c for c in OUT_COLUMNS if c in rows.columns and c not in ("metric", "value", *CI_COLUMNS)]
    nan = pd.Series(np.nan, index=rows.index)
    out = pd.concat([rows[keep].assign(metric=m, value=rows[m], ci_low=rows.get(f"{m}_ci_low", nan),
                                       ci_high=rows.get(f"{m}_ci_high", nan)) for m in metrics], ignore_index=True)
    out["selection"] = selection
    out["source"] = "ours"
    return _frame(out)


def best_over_guidance(w: pd.DataFrame) -> pd.DataFrame:
    """Per group (all of ``GROUP``): the point of lowest FID (metric fid, selection "best_fid") and the point of
    highest precision (metrics precision, contrast_diff, clipped_diff; selection "best_precision"), long format.
    Extra columns of ``w`` (label, description) are carried over."""
    if w.empty:
        return _frame([])
    by = [c for c in GROUP if c in w.columns]
    fid = (w.dropna(subset=["fid"]).sort_values(["fid", "guidance_scale"], kind="stable")
           .groupby(by, dropna=False, sort=False).head(1))
    prec = (w.dropna(subset=["precision"]).sort_values(["precision", "guidance_scale"], ascending=[False, True],
                                                       kind="stable")
            .groupby(by, dropna=False, sort=False).head(1))
    return pd.concat([to_long(fid, ["fid"], "best_fid"),
                      to_long(prec, ["precision", SATURATION, "clipped_diff", CLASS_CONSISTENCY], "best_precision")],
                     ignore_index=True)


def real_floor(w: pd.DataFrame, selection: str = "real_data") -> pd.DataFrame:
    """The class consistency of the real reference images (the in-domain classifier's accuracy on them), one long
    row per dataset and feature extractor with a floor (metric ``class_consistency``, label "real data"): what a
    generator that matches the data would reach."""
    if w.empty or REAL_FLOOR not in w.columns:
        return _frame([])
    r = w.dropna(subset=[REAL_FLOOR]).groupby(["dataset", "feature_extractor"], sort=True).head(1)
    if r.empty:
        return _frame([])
    cols = ["dataset", "feature_extractor", "num_seeds"]
    out = r[cols].assign(metric=CLASS_CONSISTENCY, value=r[REAL_FLOOR].to_numpy(),
                         ci_low=r[f"{REAL_FLOOR}_ci_low"].to_numpy(), ci_high=r[f"{REAL_FLOOR}_ci_high"].to_numpy(),
                         label="real data", selection=selection, source="ours", method="data",
                         description="in-domain classifier's top-1 accuracy on the real reference images")
    return _frame(out)


# ------------------------------------------------------------------------------------------------- choosing runs


def _pick_run(rows: pd.DataFrame) -> str | None:
    """The run with the most rows (then the first name): one run among equivalent ones."""
    if rows.empty:
        return None
    n = rows.groupby("run").size().reset_index(name="n").sort_values(["n", "run"], ascending=[False, True])
    return str(n.run.iloc[0])


def main_gmflow_run(df: pd.DataFrame) -> str | None:
    """The gmflow run with K == 8 and trans_ratio != 1 if present, else the one with the largest K among them."""
    g = df[(df.method == "gmflow") & (df.trans_ratio != 1)]
    if g.empty:
        return None
    pool = g[g.K == 8] if (g.K == 8).any() else g[g.K == g.K.max()]
    return _pick_run(pool)


def lambda1_run(df: pd.DataFrame, main: str | None) -> str | None:
    """The gmflow run with trans_ratio == 1, preferably with the main run's K, else the largest K."""
    g = df[(df.method == "gmflow") & (df.trans_ratio == 1)]
    if g.empty:
        return None
    k_main = df.K[df.run == main]
    if len(k_main) and (g.K == k_main.iloc[0]).any():
        return _pick_run(g[g.K == k_main.iloc[0]])
    return _pick_run(g[g.K == g.K.max()])


def main_fm_run(df: pd.DataFrame) -> str | None:
    return _pick_run(df[df.method == "fm"])


def main_extractor(df: pd.DataFrame, dataset: str) -> str | None:
    """The in-domain classifier ``classifier-<dataset>`` if present, else another classifier, else any extractor."""
    exts = sorted(set(df.feature_extractor.dropna()) - {"none"})
    if f"classifier-{dataset}" in exts:
        return f"classifier-{dataset}"
    cls = [e for e in exts if e.startswith("classifier")]
    return (cls or exts or [None])[0]


def run_label(method: str, K, trans_ratio) -> str:
    if method != "gmflow":
        return str(method).upper()
    lam = ", lambda=1" if trans_ratio == 1 else ""
    return f"GMFlow K={int(K)}{lam}"


def _labels(w: pd.DataFrame, fmt) -> pd.Series:
    return pd.Series([fmt(r) for r in w.itertuples(index=False)], index=w.index, dtype=object)


def guided_nfe(w: pd.DataFrame, prefer: int = 32) -> int | None:
    """NFE of the guidance comparison: ``prefer`` if swept, else the largest NFE of a guidance sweep (groups with two
    or more scales; all guided points if there is no such group)."""
    g = w[w.guidance != "none"]
    swept = g[g.num_scales >= 2]
    nfes = set((swept if len(swept) else g).nfe.dropna().astype(int))
    if not nfes:
        return None
    return prefer if prefer in nfes else max(nfes)


