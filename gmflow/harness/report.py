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
    """``show_claims(figure)``: the rows of ``claims`` of one figure or table (or a list of them), styled."""

    def show_claims(figure) -> None:
        c = claims[claims.figure.isin([figure] if isinstance(figure, str) else figure)]
        c = c.assign(agrees=c.agrees.map(yes_no)).rename(columns={"paper": paper_label,
                                                                   "agrees": "agrees in direction"})
        show(c.drop(columns=["dataset"]).reset_index(drop=True))

    return show_claims


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
