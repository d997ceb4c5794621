"""Paper tables of the image experiment: our numbers beside those of GMFlow (Chen et al., ICML 2025), long format.

Reads ``{results}/tables/images.csv`` (one metric value a row, written by the report rule) and
``{results}/tables/published_gmflow.csv`` (the paper's numbers, ImageNet 256 with DiT-XL/2), and writes to
``{results}/tables/``:

    fig6_nfe.csv         best FID and best precision over the guidance sweep vs NFE, per solver (paper Fig. 6), with
                         the class consistency at best precision and its real-data floor (selection "real_data")
    fig7_k.csv           the same vs K for the GM solvers of the runs with lambda < 1 (paper Fig. 7)
    table2_guidance.csv  best precision and the saturation analogue at it, per solver and orthogonal projection, and
                         every point of the guidance sweep at that NFE (selection "sweep") (paper Table 2), with
                         the class consistency and its real-data floor
    table3_nll.csv       NLL in bits/dim per GMFlow run (paper Table 3)
    table4_ablation.csv  ablations A0-A5, B0-B1 (paper Table 4)
    fig8_pairs.csv       the probabilistic-guidance and the CFG sample set of closest precision (paper Fig. 8)
    claims.csv           one row per claim of the paper: our numbers, the paper's, whether they agree in direction
                         (``agrees``, point values) and the ``verdict`` with the intervals (agrees, disagrees, within
                         noise)

Every table has the columns of images.csv (``ci_low`` / ``ci_high``: the value's 95% interval, NaN where none;
docs/method.md, Sec. 8.1) and: ``source`` ("ours" or "paper": ImageNet 256, DiT-XL/2, rows of the
published CSV, whose table key is in ``reference``), ``label`` (the row's name in the paper's table or figure),
``selection`` ("best_fid", "best_precision", "sweep", "nll" or "matched_precision"), ``num_seeds``, ``num_scales``
(guidance scales in the point's group), ``description`` and ``agrees_in_direction`` (Table 4).

Conventions (one place for all of them):
- A sweep point is found by its column values (K, trans_ratio, solver, guidance, spectral, substeps, nfe, ...), never
  by its run name. Metrics of several seeds of one point are averaged.
- "Best over guidance": the lowest FID and the highest precision over the guidance scales of one group (dataset,
  feature extractor, run, solver, guidance mode, nfe, orthogonal, spectral, substeps), as the paper sweeps its
  guidance and reports the best FID and the best precision separately. Ties go to the smaller scale.
- Saturation analogue for grayscale data: ``contrast_diff`` (per-image pixel std, generated minus real), shown with
  ``clipped_diff`` (fraction of clipped pixels, generated minus real), both at the point of best precision.
- The main GMFlow run is the gmflow run with K = 8 and trans_ratio != 1 if present, else the one with the largest K
  among trans_ratio != 1; the lambda = 1 run (trans_ratio == 1) is ablation A5.
- Curves use each solver's full configuration: orthogonal projection, spectral sampling and sub-steps at the largest
  value present.
- Every row names its feature extractor; tables hold every extractor, the claims use the in-domain classifier.
- An interval is the selected sample set's own: the selection of the best point over guidance scales (and of the best
  solver) is not part of it, so the best of many noisy points is optimistic.
- Class consistency: the in-domain classifier's top-1 accuracy on the generated images against their conditioning
  labels, at the point of best precision; its floor is the same accuracy on the real reference images.

Missing points never fail: a table leaves them out (Table 4 keeps its rows with value NaN, description "not run"),
and a claim that cannot be checked has ``agrees`` empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gmflow.experiments.images.points import (
    CLASS_CONSISTENCY,
    CURVE,
    NLL,
    SATURATION,
    _frame,
    _labels,
    best_over_guidance,
    full_config,
    guided_nfe,
    lambda1_run,
    main_extractor,
    main_fm_run,
    main_gmflow_run,
    real_floor,
    run_label,
    to_long,
)
from gmflow.harness.registry import GM_SOLVERS_KEYS as GM_SOLVERS

# Table 4: label -> (which run, solver, guidance, spectral, substeps rule, description)
ABLATIONS = {
    "A0": ("main", "gm-sde-2", "probabilistic", 1, None, "GM-SDE 2, spectral sampling (full)"),
    "A1": ("main", "gm-sde", "probabilistic", 1, None, "A0 with first-order GM-SDE"),
    "A2": ("main", "gm-sde", "probabilistic", 0, None, "A1 without spectral sampling"),
    "A3": ("main", "gm-sde", "cfg", 0, None, "A2 with vanilla CFG instead of probabilistic guidance"),
    "A4": ("main", "dpm++-2m-sde", "probabilistic", None, None, "A0 with DPM++ 2M SDE instead of GM-SDE 2"),
    "A5": ("lambda1", "gm-sde-2", "probabilistic", 1, None, "A0 trained with lambda = 1 (no transition loss)"),
    "B0": ("main", "gm-ode-2", "probabilistic", None, "max", "GM-ODE 2 with analytic sub-steps (full)"),
    "B1": ("main", "gm-ode-2", "probabilistic", None, 1, "B0 without sub-steps"),
}
ABLATION_REFERENCE = {"A1": "A0", "A2": "A0", "A3": "A0", "A4": "A0", "A5": "A0", "B1": "B0"}
TABLE4_NFE = 8


# ---------------------------------------------------------------------------------------------------- the tables


def _per_dataset(w: pd.DataFrame):
    yield from w.groupby("dataset", sort=True)


def fig6_nfe(w: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """Best FID and precision over the guidance sweep at each NFE: every solver of the FM run (CFG) and the GM solvers
    of the main GMFlow run (probabilistic guidance); paper rows: the headline points (abstract, Sec. 4.2)."""
    out = []
    for _, wd in _per_dataset(w):
        fm, gm = main_fm_run(wd), main_gmflow_run(wd)
        sel = wd[((wd.run == fm) & (wd.guidance == "cfg"))
                 | ((wd.run == gm) & wd.solver.isin(GM_SOLVERS) & (wd.guidance == "probabilistic"))]
        sel = full_config(sel, CURVE).copy()
        sel["label"] = _labels(sel, lambda r: f"{run_label(r.method, r.K, r.trans_ratio)} / {r.solver}")
        out += [best_over_guidance(sel), real_floor(wd)]
    paper = pub[pub.reference.isin(["abstract", "sec4.2"])].copy()
    paper["label"] = _labels(paper, lambda r: f"{run_label(r.method, r.K, r.trans_ratio)} / {r.solver}")
    paper["selection"] = "best_" + paper.metric
    return _frame(pd.concat([*out, paper], ignore_index=True))


def fig7_k(w: pd.DataFrame) -> pd.DataFrame:
    """Best FID and precision over the guidance sweep vs K: GM solvers, probabilistic guidance, runs with
    trans_ratio != 1; label "<solver>, NFE <n>" (one curve)."""
    sel = w[(w.method == "gmflow") & (w.trans_ratio != 1) & w.solver.isin(GM_SOLVERS)
            & (w.guidance == "probabilistic")]
    sel = full_config(sel, CURVE).copy()
    sel["label"] = _labels(sel, lambda r: f"{r.solver}, NFE {int(r.nfe)}")
    return best_over_guidance(sel)


def table3_nll(df: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """NLL (bits/dim) of every GMFlow run (seeds averaged); paper Table 3 rows beside."""
    nll = df[(df.metric == NLL) & (df.method == "gmflow")]
    rows = []
    if len(nll):
        keys = ["dataset", "run", "method", "K", "trans_ratio", "train_steps", "metric", "feature_extractor"]
        g = nll.groupby(keys, dropna=False)
        ours = g["value"].mean().reset_index()
        ours["num_seeds"] = g.size().values
        ours["num_samples"] = g["num_samples"].first().values
        ours["seed"] = g["seed"].min().values
        ours["label"] = _labels(ours, lambda r: f"K={int(r.K)}" + (", lambda=1" if r.trans_ratio == 1 else ""))
        ours["source"] = "ours"
        ours["selection"] = "nll"
        rows.append(ours)
    paper = pub[pub.reference == "table3"].copy()
    paper["label"] = _labels(paper, lambda r: f"K={int(r.K)}" + (", spectral prior" if "spectral" in r.method else ""))
    paper["selection"] = "nll"
    rows.append(paper)
    return _frame(pd.concat(rows, ignore_index=True))


def _table2_candidates(wd: pd.DataFrame) -> pd.DataFrame:
    fm, gm = main_fm_run(wd), main_gmflow_run(wd)
    return wd[((wd.run == fm) & (wd.guidance == "cfg"))
              | ((wd.run == gm) & wd.solver.isin(GM_SOLVERS) & (wd.guidance == "probabilistic"))]


def _table2_label(r) -> str:
    return f"{r.solver} ({r.guidance}), orthogonal={int(r.orthogonal)}"


def table2_guidance(w: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """At NFE 32 (else the largest NFE of the guidance sweep): per solver and orthogonal projection, the best
    precision over the guidance scales with the saturation analogue at it (selection "best_precision"), and every point
    of the sweep (selection "sweep": precision, contrast_diff, clipped_diff, fid, class_consistency), and the
    real-data floor of the class consistency (selection "real_data"). FM run with CFG, main GMFlow run's GM solvers
    with probabilistic guidance, as in the paper."""
    out = []
    for _, wd in _per_dataset(w):
        cand = _table2_candidates(wd)
        nfe = guided_nfe(cand)
        if nfe is None:
            continue
        at = full_config(cand[cand.nfe == nfe], CURVE + ["orthogonal"]).copy()
        at["label"] = _labels(at, _table2_label)
        best = best_over_guidance(at)
        out += [best[best.selection == "best_precision"],
                to_long(at, ["precision", SATURATION, "clipped_diff", "fid", CLASS_CONSISTENCY], "sweep"),
                real_floor(wd)]
    paper = pub[pub.reference == "table2"].copy()
    paper["label"] = _labels(paper, _table2_label)
    paper["selection"] = "best_precision"
    return _frame(pd.concat([*out, paper], ignore_index=True))


def _ablation_rows(wd: pd.DataFrame, label: str, nfe: int, main: str | None, lam1: str | None) -> pd.DataFrame:
    which, solver, guidance, spectral, substeps, _ = ABLATIONS[label]
    run = main if which == "main" else lam1
    q = wd[(wd.run == run) & (wd.solver == solver) & (wd.guidance == guidance) & (wd.nfe == nfe)]
    if spectral is not None:
        q = q[q.spectral == spectral]
    if substeps == "max":
        q = q[(q.substeps > 1) & (q.substeps == q.substeps.max())]
    elif substeps is not None:
        q = q[q.substeps == substeps]
    # the paper uses orthogonal projection throughout: the largest value present
    return q[q.orthogonal == q.orthogonal.max()] if len(q) else q


def table4_nfe(wd: pd.DataFrame, main: str | None, lam1: str | None) -> tuple[int | None, str]:
    """NFE 8 if any ablation is there, else the NFE with the most ablations present (ties: closest to 8, then the
    larger); with a note saying which."""
    counts = {}
    for nfe in sorted(set(wd.nfe.dropna().astype(int))):
        counts[nfe] = sum(len(_ablation_rows(wd, lab, nfe, main, lam1)) > 0 for lab in ABLATIONS)
    counts = {n: c for n, c in counts.items() if c > 0}
    if not counts:
        return None, "no ablation point was run"
    if TABLE4_NFE in counts:
        return TABLE4_NFE, f"at NFE {TABLE4_NFE}, as in the paper"
    nfe = max(counts, key=lambda n: (counts[n], -abs(n - TABLE4_NFE), n))
    return nfe, f"at NFE {nfe} (the paper's NFE {TABLE4_NFE} was not run)"


def _sign(x: float) -> float:
    return float(np.sign(x)) if pd.notna(x) else np.nan


def _same_sign(a: float, b: float) -> float | bool:
    """True/False when both changes are known, NaN otherwise."""
    if pd.isna(a) or pd.isna(b):
        return np.nan
    return bool(_sign(a) == _sign(b))


def table4_ablation(w: pd.DataFrame, pub: pd.DataFrame) -> pd.DataFrame:
    """Ablations A0-A5, B0-B1 at NFE 8 (see :func:`table4_nfe`): best FID, best precision, and the saturation analogue
    at best precision, per feature extractor; every row present (value NaN, description "not run" when missing).
    ``agrees_in_direction`` on our rows: the change relative to A0 (B0 for B1) has the sign of the paper's change;
    for saturation the change of |saturation|, the distance to the real data."""
    out = []
    for dataset, wd in _per_dataset(w):
        main = main_gmflow_run(wd)
        lam1 = lambda1_run(wd, main)
        nfe, note = table4_nfe(wd, main, lam1)
        for ext in sorted(set(wd.feature_extractor)):
            we = wd[wd.feature_extractor == ext]
            for label, (which, solver, guidance, spectral, _, desc) in ABLATIONS.items():
                q = _ablation_rows(we, label, nfe, main, lam1) if nfe is not None else we.iloc[:0]
                if len(q):
                    q = q.assign(label=label, description=f"{desc}; {note}")
                    out.append(best_over_guidance(q))
                else:
                    run = main if which == "main" else lam1
                    out.append(_frame([{"dataset": dataset, "run": run, "solver": solver, "guidance": guidance,
                                        "spectral": spectral, "nfe": nfe, "feature_extractor": ext, "metric": m,
                                        "selection": sel, "label": label, "source": "ours",
                                        "description": f"{desc}; not run {note}"}
                                       for m, sel in [("fid", "best_fid"), ("precision", "best_precision"),
                                                      (SATURATION, "best_precision"),
                                                      ("clipped_diff", "best_precision"),
                                                      (CLASS_CONSISTENCY, "best_precision")]]))
    paper = pub[pub.reference.fillna("").str.startswith("table4-")].copy()
    paper["label"] = paper.reference.str.removeprefix("table4-")
    paper["selection"] = np.where(paper.metric == "fid", "best_fid", "best_precision")
    t = _frame(pd.concat([*out, paper], ignore_index=True))
    # direction relative to the reference entry
    pv = paper.set_index(["label", "metric"]).value
    for i, r in t[t.source == "ours"].iterrows():
        ref = ABLATION_REFERENCE.get(r.label)
        if ref is None or r.metric not in ("fid", "precision", SATURATION):
            continue
        pm = "saturation" if r.metric == SATURATION else r.metric
        mine = t[(t.source == "ours") & (t.dataset == r.dataset) & (t.feature_extractor == r.feature_extractor)
                 & (t.label == ref) & (t.metric == r.metric)].value
        ours_ref = mine.iloc[0] if len(mine) else np.nan
        p, p_ref = pv.get((r.label, pm), np.nan), pv.get((ref, pm), np.nan)
        if r.metric == SATURATION:
            d_ours, d_paper = abs(r.value) - abs(ours_ref), abs(p) - abs(p_ref)
        else:
            d_ours, d_paper = r.value - ours_ref, p - p_ref
        t.at[i, "agrees_in_direction"] = _same_sign(d_ours, d_paper)
    return t


def fig8_pairs(w: pd.DataFrame) -> pd.DataFrame:
    """The pair of guided sample sets of closest precision (in-domain extractor), one per method: CFG on the FM run
    and probabilistic guidance on the main GMFlow run's GM solvers (the candidates of Table 2, full configuration), at
    the largest NFE of the guidance sweep; ties go to the higher precision. Labels "probabilistic" and "cfg";
    metrics precision, contrast_diff, clipped_diff, fid, class_consistency."""
    out = []
    for dataset, wd in _per_dataset(w):
        ext = main_extractor(wd, dataset)
        cand = _table2_candidates(wd[wd.feature_extractor == ext])
        nfe = guided_nfe(cand, prefer=-1)
        cand = full_config(cand[(cand.nfe == nfe) & cand.precision.notna()], CURVE + ["orthogonal"])
        prob, cfg = cand[cand.guidance == "probabilistic"], cand[cand.guidance == "cfg"]
        if prob.empty or cfg.empty:
            continue
        pairs = prob.reset_index(drop=True).merge(cfg.reset_index(drop=True), how="cross", suffixes=("_p", "_c"))
        pairs["gap"] = (pairs.precision_p - pairs.precision_c).abs()
        pairs["mean"] = (pairs.precision_p + pairs.precision_c) / 2
        best = pairs.sort_values(["gap", "mean"], ascending=[True, False], kind="stable").iloc[0]
        for sfx, label in (("_p", "probabilistic"), ("_c", "cfg")):
            row = {c: best[c + sfx] for c in w.columns}
            row["label"] = label
            row["description"] = f"closest precision of the two methods at NFE {nfe}: gap {best.gap:.4f}"
            out.append(to_long(pd.DataFrame([row]), ["precision", SATURATION, "clipped_diff", "fid",
                                                     CLASS_CONSISTENCY], "matched_precision"))
    return _frame(pd.concat(out, ignore_index=True)) if out else _frame([])


# --------------------------------------------------------------------------------------------------------- driver
