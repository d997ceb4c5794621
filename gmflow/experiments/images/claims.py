"""The paper's claims checked on the image tables: one row per claim with our number, the paper's, whether they
agree in direction (``agrees``, point values only) and the ``verdict`` once the 95% intervals are counted (the claims
of Figs. 6-7 and Tables 2-4 of Chen et al. 2025).

Verdict of one comparison of two of our numbers, ``a`` vs ``b``: "within noise" when their intervals overlap, else
"agrees" or "disagrees" as the direction of ``a - b`` matches the paper's. A number without an interval (NLL,
points run before the intervals existed) counts as exact, so its direction decides. Overlap of two 95% intervals is a
conservative test (two intervals of equal width overlap up to a difference of about 2.8 standard errors, not 1.96), so
"within noise" errs towards not calling a difference. A claim of several comparisons "agrees" only if every
comparison agrees beyond noise, "disagrees" if any disagrees beyond noise, else it is "within noise"; this is stricter
than ``agrees``, which follows the majority where the claim is a majority. NaN when nothing can be checked.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from gmflow.experiments.images.points import CLAIM_COLUMNS, SATURATION, main_extractor, points
from gmflow.experiments.images.tables import (
    fig6_nfe,
    fig7_k,
    fig8_pairs,
    table2_guidance,
    table3_nll,
    table4_ablation,
)

AGREES, DISAGREES, NOISE = "agrees", "disagrees", "within noise"
NAN_CI = (np.nan, np.nan)


def _vals(t: pd.DataFrame, **eq) -> pd.DataFrame:
    for k, v in eq.items():
        t = t[t[k] == v]
    return t


def _fmt(x: float) -> str:
    return "nan" if pd.isna(x) else f"{x:.4g}"


def _claim(figure: str, claim: str, ours: str, paper: str, ours_holds, paper_holds, comparisons=()) -> dict:
    """``agrees``: our numbers go in the paper's direction (NaN when either side cannot be evaluated); ``verdict``:
    :func:`verdict` of our ``comparisons`` against the paper's direction."""
    agrees = np.nan if ours_holds is None or paper_holds is None else bool(ours_holds == paper_holds)
    return {"figure": figure, "claim": claim, "ours": ours, "paper": paper, "agrees": agrees,
            "verdict": verdict(comparisons, paper_holds)}


def _ci(row) -> tuple[float, float]:
    """A row's 95% interval (NaN, NaN when it has none)."""
    lo, hi = row.get("ci_low", np.nan), row.get("ci_high", np.nan)
    return (float(lo), float(hi)) if pd.notna(lo) and pd.notna(hi) else NAN_CI


def compare(a: float, b: float, op: str, a_ci=NAN_CI, b_ci=NAN_CI) -> str | None:
    """Our comparison ``a op b`` (op "<" or ">") with the numbers' intervals: "noise" when both intervals exist and
    overlap, else "holds" or "fails"; None when a number is missing."""
    if pd.isna(a) or pd.isna(b):
        return None
    if not any(pd.isna(x) for x in (*a_ci, *b_ci)) and a_ci[0] <= b_ci[1] and b_ci[0] <= a_ci[1]:
        return "noise"
    return "holds" if _holds(a, b, op) else "fails"


def verdict(comparisons, paper_holds) -> str | float:
    """"agrees" if every comparison agrees with the paper's direction beyond noise, "disagrees" if any disagrees
    beyond noise, else "within noise"; NaN when the paper's direction or all of ours are unknown."""
    comps = [c for c in comparisons if c is not None]
    if paper_holds is None or not comps:
        return np.nan
    each = [NOISE if c == "noise" else (AGREES if (c == "holds") == bool(paper_holds) else DISAGREES) for c in comps]
    if DISAGREES in each:
        return DISAGREES
    return AGREES if all(e == AGREES for e in each) else NOISE


def combine(values, intervals) -> tuple[float, tuple[float, float]]:
    """Mean of independent numbers and its interval: centred on the mean of the interval centres, half-width
    ``sqrt(sum h_i^2) / k`` of the half-widths (NaN if any number has no interval)."""
    values, iv = np.asarray(values, float), np.asarray(intervals, float).reshape(-1, 2)
    if len(values) == 0:
        return np.nan, NAN_CI
    if np.isnan(iv).any():
        return float(values.mean()), NAN_CI
    centre, half = iv.mean(1).mean(), np.sqrt((((iv[:, 1] - iv[:, 0]) / 2) ** 2).sum()) / len(iv)
    return float(values.mean()), (float(centre - half), float(centre + half))


def abs_interval(ci: tuple[float, float]) -> tuple[float, float]:
    """The interval of ``|x|`` for ``x`` in ``ci``."""
    lo, hi = ci
    if pd.isna(lo) or pd.isna(hi):
        return NAN_CI
    if lo <= 0 <= hi:
        return 0.0, max(-lo, hi)
    return min(abs(lo), abs(hi)), max(abs(lo), abs(hi))


def _gm_beats_fm(f6: pd.DataFrame, gm_solvers: tuple, metric: str, max_nfe: float):
    """Per NFE <= max_nfe present for the FM run and a GM solver: is every GM solver's best better than every FM
    solver's (lower FID, higher precision)? Text, holds, and one comparison per GM solver and NFE (against the best
    FM solver, whose interval is its own: the choice of the best is not in it)."""
    sel = "best_fid" if metric == "fid" else "best_precision"
    t = _vals(f6, selection=sel, metric=metric)
    gm, fm = t[t.solver.isin(gm_solvers) & (t.method == "gmflow")], t[t.method == "fm"]
    op = "<" if metric == "fid" else ">"
    parts, ok, comps = [], [], []
    for nfe in sorted(set(gm.nfe) & set(fm.nfe)):
        if nfe > max_nfe:
            continue
        f_best = fm[fm.nfe == nfe].sort_values("value", ascending=(metric == "fid")).iloc[0]
        for _, g in gm[gm.nfe == nfe].iterrows():
            ok.append(bool(_holds(g.value, f_best.value, op)))
            comps.append(compare(g.value, f_best.value, op, _ci(g), _ci(f_best)))
            parts.append(f"NFE {int(nfe)}: {g.solver} {_fmt(g.value)} vs {f_best.solver} {_fmt(f_best.value)}")
    return "; ".join(parts) or "not run", (all(ok) if ok else None), comps


def _mean_abs(t: pd.DataFrame, guidance: str, metric: str) -> tuple[float, tuple[float, float]]:
    """Mean of |value| over the rows (solvers, orthogonal settings) and its :func:`combine` interval."""
    v = _vals(t, guidance=guidance, metric=metric).dropna(subset=["value"])
    return combine(v.value.abs(), [abs_interval(_ci(r)) for _, r in v.iterrows()])


def _max(t: pd.DataFrame, guidance: str, metric: str) -> tuple[float, tuple[float, float]]:
    """The largest value over the rows and that row's interval (the choice of the largest is not in it)."""
    v = _vals(t, guidance=guidance, metric=metric).dropna(subset=["value"])
    if v.empty:
        return np.nan, NAN_CI
    r = v.loc[v.value.idxmax()]
    return float(r.value), _ci(r)


def _holds(a: float, b: float, op: str) -> bool | None:
    if pd.isna(a) or pd.isna(b):
        return None
    return bool(a < b) if op == "<" else bool(a > b)


def _orthogonal_effect(t: pd.DataFrame, metric: str, want: str, absolute: bool):
    """Solvers with both orthogonal settings: how many move ``metric`` the wanted way ("<" or ">") with projection
    on; holds when more do than do not. Also one comparison per solver."""
    t = t.dropna(subset=["value"])
    t = t.assign(v=t.value.abs() if absolute else t.value)
    up = down = 0
    comps = []
    for _, g in t[t.metric == metric].groupby(["solver", "guidance"]):
        on, off = g[g.orthogonal == 1], g[g.orthogonal == 0]
        if len(on) and len(off):
            (a, a_ci), (b, b_ci) = (combine(q.v, [abs_interval(_ci(r)) if absolute else _ci(r)
                                                  for _, r in q.iterrows()]) for q in (on, off))
            better = _holds(a, b, want)
            up, down = up + bool(better), down + (not better)
            comps.append(compare(a, b, want, a_ci, b_ci))
    if up + down == 0:
        return "not run", None, comps
    return f"{up} of {up + down} solvers", up > down, comps


def _k_effect(f7: pd.DataFrame, metric: str):
    """Per (solver, NFE) curve with two K or more: does the largest K beat the smallest? Holds for a majority. Also
    one comparison per curve."""
    sel = "best_fid" if metric == "fid" else "best_precision"
    t = _vals(f7, selection=sel, metric=metric).dropna(subset=["value"])
    op = "<" if metric == "fid" else ">"
    up = n = 0
    parts, comps = [], []
    for label, g in t.groupby("label", sort=True):
        by_k = g.groupby("K").value.mean()
        if len(by_k) < 2:
            continue
        n += 1
        up += bool(_holds(by_k.iloc[-1], by_k.iloc[0], op))
        (a, a_ci), (b, b_ci) = (combine(q.value, [_ci(r) for _, r in q.iterrows()])
                                for q in (g[g.K == by_k.index[-1]], g[g.K == by_k.index[0]]))
        comps.append(compare(a, b, op, a_ci, b_ci))
        parts.append(f"{label}: K={int(by_k.index[0])} {_fmt(by_k.iloc[0])} -> K={int(by_k.index[-1])} "
                     f"{_fmt(by_k.iloc[-1])}")
    if n == 0:
        return "not run", None, comps
    return f"{up} of {n} curves; " + "; ".join(parts), up > n - up, comps


def _entry(t4: pd.DataFrame, label: str, metric: str, source: str) -> tuple[float, tuple[float, float]]:
    v = _vals(t4, source=source, label=label, metric=metric).dropna(subset=["value"])
    return (float(v.value.iloc[0]), _ci(v.iloc[0])) if len(v) else (np.nan, NAN_CI)


TABLE4_CLAIMS = [
    ("A0", "A1", "fid", "<", "second-order GM-SDE 2 has a lower best FID than first-order GM-SDE (A0 < A1)"),
    ("A1", "A2", "fid", "<", "spectral sampling lowers the best FID of GM-SDE (A1 < A2)"),
    ("A2", "A3", "precision", ">", "probabilistic guidance reaches a higher best precision than vanilla CFG (A2 > A3)"),
    ("A2", "A3", "|saturation|", "<", "probabilistic guidance: smaller |saturation| at best precision than vanilla "
                                      "CFG (A2 < A3)"),
    ("A0", "A4", "fid", "<", "GM-SDE 2 has a lower best FID than DPM++ 2M SDE on the same GMFlow model (A0 < A4)"),
    ("A0", "A4", "precision", ">", "GM-SDE 2 has a higher best precision than DPM++ 2M SDE on the same model "
                                   "(A0 > A4)"),
    ("A0", "A5", "fid", "<", "the transition loss (lambda < 1) lowers the best FID vs lambda = 1 (A0 < A5)"),
    ("B0", "B1", "fid", "<", "analytic sub-steps lower the best FID of GM-ODE 2 (B0 < B1)"),
]


def claims(dataset: str, ext: str | None, f6, f7, t2, t3, t4) -> pd.DataFrame:
    """One row per claim of the paper for one dataset, our numbers from the in-domain extractor ``ext``."""
    def ours(t):
        return t[(t.source == "ours") & (t.dataset == dataset) & (t.feature_extractor == ext)]

    def paper(t):
        return t[t.source == "paper"]

    rows = []
    s, h, c = _gm_beats_fm(ours(f6), ("gm-ode-2",), "fid", 8)
    rows.append(_claim("Fig. 6", "GM-ODE 2 best FID at NFE <= 8 lower than every FM solver's", s,
                       "GMFlow has the best FID at NFE <= 8 (Sec. 4.2, Fig. 6; B0 2.77 at NFE 8)", h, True, c))
    s, h, c = _gm_beats_fm(ours(f6), ("gm-ode-2", "gm-sde-2"), "precision", math.inf)
    rows.append(_claim("Fig. 6", "GM-ODE 2 and GM-SDE 2 best precision higher than every FM solver's at every NFE", s,
                       "both beat all baselines in precision at every NFE (abstract, Sec. 4.2)", h, True, c))

    o2, p2 = ours(t2[t2.selection == "best_precision"]), paper(t2)
    nfe2 = ", ".join(str(int(n)) for n in sorted(set(o2.nfe.dropna()))) or "-"
    (a, a_ci), (b, b_ci) = _mean_abs(o2, "probabilistic", SATURATION), _mean_abs(o2, "cfg", SATURATION)
    (pa, _), (pb, _) = _mean_abs(p2, "probabilistic", "saturation"), _mean_abs(p2, "cfg", "saturation")
    rows.append(_claim("Table 2", "probabilistic guidance |saturation| at best precision lower than CFG's (mean over "
                       "solvers and orthogonal settings)", f"NFE {nfe2}: {_fmt(a)} vs {_fmt(b)} (|contrast_diff|)",
                       f"NFE 32: {_fmt(pa)} vs {_fmt(pb)} (|HSV saturation - real|)", _holds(a, b, "<"),
                       _holds(pa, pb, "<"), [compare(a, b, "<", a_ci, b_ci)]))
    (a, a_ci), (b, b_ci) = _max(o2, "probabilistic", "precision"), _max(o2, "cfg", "precision")
    (pa, _), (pb, _) = _max(p2, "probabilistic", "precision"), _max(p2, "cfg", "precision")
    rows.append(_claim("Table 2", "probabilistic guidance reaches a higher best precision than CFG (best solver)",
                       f"NFE {nfe2}: {_fmt(a)} vs {_fmt(b)}", f"NFE 32: {_fmt(pa)} vs {_fmt(pb)}",
                       _holds(a, b, ">"), _holds(pa, pb, ">"), [compare(a, b, ">", a_ci, b_ci)]))
    s, h, c = _orthogonal_effect(o2, "precision", ">", absolute=False)
    ps, ph, _ = _orthogonal_effect(p2, "precision", ">", absolute=False)
    rows.append(_claim("Table 2", "orthogonal projection raises the best precision", s, ps, h, ph, c))
    s, h, c = _orthogonal_effect(o2, SATURATION, "<", absolute=True)
    ps, ph, _ = _orthogonal_effect(p2, "saturation", "<", absolute=True)
    rows.append(_claim("Table 2", "orthogonal projection lowers |saturation| at best precision", s, ps, h, ph, c))

    o3 = t3[(t3.source == "ours") & (t3.dataset == dataset) & (t3.trans_ratio != 1)].dropna(subset=["value"])
    by_k = o3.groupby("K").value.mean()
    p3 = paper(t3)
    p3 = p3[p3.method == "gmflow"].groupby("K").value.mean()
    h = _holds(by_k.iloc[-1], by_k.iloc[0], "<") if len(by_k) >= 2 else None
    s = (f"K={int(by_k.index[0])} {_fmt(by_k.iloc[0])} -> K={int(by_k.index[-1])} {_fmt(by_k.iloc[-1])}"
         if len(by_k) >= 2 else "not run")
    nll_comp = [compare(by_k.iloc[-1], by_k.iloc[0], "<")] if len(by_k) >= 2 else []  # NLL: no interval
    rows.append(_claim("Table 3", "NLL (bits/dim) decreases from the smallest to the largest K", s,
                       f"K={int(p3.index[0])} {_fmt(p3.iloc[0])} -> K={int(p3.index[-1])} {_fmt(p3.iloc[-1])}",
                       h, _holds(p3.iloc[-1], p3.iloc[0], "<") if len(p3) >= 2 else None, nll_comp))
    for metric, word in (("fid", "lower best FID"), ("precision", "higher best precision")):
        s, h, c = _k_effect(ours(f7), metric)
        rows.append(_claim("Fig. 7", f"the largest K has a {word} than the smallest K (most solver/NFE curves)", s,
                           "FID and precision improve with K and generally saturate at K = 8 (Fig. 7)", h, True, c))

    o4 = ours(t4)
    nfe4 = ", ".join(str(int(n)) for n in sorted(set(o4.nfe.dropna()))) or "-"
    for a_lab, b_lab, metric, op, text in TABLE4_CLAIMS:
        m_ours, m_paper = (SATURATION, "saturation") if metric == "|saturation|" else (metric, metric)
        (a, a_ci), (b, b_ci) = _entry(o4, a_lab, m_ours, "ours"), _entry(o4, b_lab, m_ours, "ours")
        (pa, _), (pb, _) = _entry(t4, a_lab, m_paper, "paper"), _entry(t4, b_lab, m_paper, "paper")
        if metric == "|saturation|":
            a, b, pa, pb = abs(a), abs(b), abs(pa), abs(pb)
            a_ci, b_ci = abs_interval(a_ci), abs_interval(b_ci)
        mine = " vs ".join(f"{lab} {'not run' if pd.isna(x) else _fmt(x)}" for lab, x in ((a_lab, a), (b_lab, b)))
        rows.append(_claim("Table 4", text, f"NFE {nfe4}: {mine}",
                           f"NFE 8: {a_lab} {_fmt(pa)} vs {b_lab} {_fmt(pb)}", _holds(a, b, op),
                           _holds(pa, pb, op), [compare(a, b, op, a_ci, b_ci)]))
    out = pd.DataFrame(rows)
    out["dataset"], out["feature_extractor"] = dataset, ext
    return out.reindex(columns=CLAIM_COLUMNS)


def build_tables(df: pd.DataFrame, pub: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every table (name -> long frame) and the claims, from the long image table and the published numbers."""
    w = points(df)
    t = {"fig6_nfe": fig6_nfe(w, pub), "fig7_k": fig7_k(w), "table2_guidance": table2_guidance(w, pub),
         "table3_nll": table3_nll(df, pub), "table4_ablation": table4_ablation(w, pub), "fig8_pairs": fig8_pairs(w)}
    cl = [claims(d, main_extractor(df[df.dataset == d], d), t["fig6_nfe"], t["fig7_k"], t["table2_guidance"],
                 t["table3_nll"], t["table4_ablation"]) for d in sorted(set(df.dataset.dropna()))]
    t["claims"] = pd.concat(cl, ignore_index=True) if cl else pd.DataFrame(columns=CLAIM_COLUMNS)
    return t
