"""Helpers of the report notebooks: styled tables, the claims of one figure, log-2 axes and 2D histograms.

The notebooks read only ``results/``; what they have in common lives here instead of in each notebook.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HIST_WINDOW = (-4.2, 4.2)


def show(df: pd.DataFrame | None, fmt: str = "{:.4g}", paper_cols=(), caption: str | None = None) -> None:
    """A styled table: our missing values read "not run", the paper's missing values "-"."""
    from IPython.display import Markdown, display

    if df is None or df.empty:
        display(Markdown("*not run*"))
        return
    ours_cols = [c for c in df.columns if c not in paper_cols]

    def num(cols):
        return [c for c in cols if pd.api.types.is_numeric_dtype(df[c])]

    st = df.style.format(na_rep="not run", escape="html").format(fmt, subset=num(ours_cols), na_rep="not run")
    if paper_cols:
        st = st.format(na_rep="-", subset=list(paper_cols)).format(fmt, subset=num(paper_cols), na_rep="-")
    if caption:
        st = st.set_caption(caption)
    display(st)


def yes_no(v) -> str:
    return "not run" if pd.isna(v) else ("yes" if str(v) in ("True", "1", "1.0") else "no")


def claims_viewer(claims: pd.DataFrame, paper_label: str):
    """``show_claims(figure)``: the rows of ``claims`` of one figure or table (or a list of them), styled; the
    ``verdict`` counts the 95% intervals (agrees, disagrees, within noise), ``agrees`` the point values only."""

    def show_claims(figure) -> None:
        c = claims[claims.figure.isin([figure] if isinstance(figure, str) else figure)]
        c = c.assign(agrees=c.agrees.map(yes_no))
        if "verdict" in c.columns:
            c = c.assign(verdict=c.verdict.fillna("not run"))
        c = c.rename(columns={"paper": paper_label, "agrees": "agrees in direction",
                              "verdict": "verdict (95% intervals)"})
        show(c.drop(columns=["dataset"]).reset_index(drop=True))

    return show_claims


def with_interval(df: pd.DataFrame, fmt: str = "{:.4g}") -> pd.Series:
    """``value`` as text with its 95% interval, "v [lo, hi]" (just "v" without one; NaN when there is no value)."""
    lo = df["ci_low"] if "ci_low" in df.columns else pd.Series(np.nan, index=df.index)
    hi = df["ci_high"] if "ci_high" in df.columns else pd.Series(np.nan, index=df.index)

    def one(v, a, b):
        if pd.isna(v):
            return np.nan
        return fmt.format(v) + (f" [{fmt.format(a)}, {fmt.format(b)}]" if pd.notna(a) and pd.notna(b) else "")

    return pd.Series([one(*t) for t in zip(df["value"], lo, hi, strict=True)], index=df.index, dtype=object)


def interval_band(ax, x, lo, hi, color, alpha: float = 0.15) -> None:
    """Shade the 95% interval ``[lo, hi]`` along ``x`` (nothing where the interval is NaN)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    if np.isfinite(lo).any() and np.isfinite(hi).any():
        ax.fill_between(np.asarray(x, float), lo, hi, color=color, alpha=alpha, lw=0)


def interval_errors(value, lo, hi) -> np.ndarray:
    """``(2, N)`` non-negative error-bar lengths of intervals around ``value`` for ``errorbar`` (0 where NaN; an
    interval that excludes its value, as FID's basic one can, is drawn up to the value)."""
    v = np.asarray(value, float)
    lo, hi = (np.full_like(v, np.nan) if a is None else np.asarray(a, float) for a in (lo, hi))
    return np.nan_to_num(np.stack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]), nan=0.0)


def log2_axis(ax, values) -> None:
    """Log-2 x axis with the values as plain tick labels."""
    ax.set_xscale("log", base=2)
    v = sorted({int(x) for x in values})
    if v:
        ax.set_xticks(v, [str(x) for x in v])
        ax.minorticks_off()


def hist_image(x: np.ndarray, n_ref: float = 1e6) -> np.ndarray:
    """The paper's 2D figure: a 200 x 200 histogram on [-4.2, 4.2]^2 scaled to ``n_ref`` points, counts / 160 clipped
    to [0, 1], y pointing up (for ``imshow`` with viridis)."""
    h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=200, range=[HIST_WINDOW, HIST_WINDOW])
    return np.clip(h * (n_ref / len(x)) / 160, 0, 1).T[::-1]
