"""The paper's Table 5 (unconditional CIFAR-10, FID at NFE 10 / 25 / 50 / 100) with our numbers beside the published.

Entries, in the paper's order: DDPM large and DDPM small (flow-matching U-Net, :mod:`baselines.samplers`), SN-DDPM and
GMS (published only: not reimplemented here), and GM-SDE 2 (GMFlow, K = 2 on the same U-Net). Ours are FID of
TF-Inception pool3 features against the configured reference set (the training set in config/cifar10.yaml), unguided,
mean over sampling seeds; a GM-SDE 2 point is reported with and without spectral sampling when both were run. A
published entry with no row of ours says "not run"; nothing is interpolated.
"""

from __future__ import annotations

from itertools import product

import pandas as pd

DATASET = "cifar10"
TABLE = "table5"
NFES = (10, 25, 50, 100)
EXTRACTOR = "inception-tf"
# entry label -> (published method, solver, our method or None = published only)
ENTRIES = {
    "DDPM large": ("ddpm", "ddpm-large", "fm"),
    "DDPM small": ("ddpm", "ddpm-small", "fm"),
    "SN-DDPM": ("sn-ddpm", "sde", None),
    "GMS": ("gms", "sde", None),
    "GM-SDE 2": ("gmflow", "gm-sde-2", "gmflow"),
}
COLUMNS = ["entry", "nfe", "paper", "ours", "status", "run", "solver", "spectral", "K", "num_samples", "num_seeds",
           "train_steps", "feature_extractor"]


def _published(pub: pd.DataFrame) -> pd.DataFrame:
    """Published Table 5 FIDs (rows of data/published/gmflow_icml2025.csv with table 'table5')."""
    p = pub[(pub["table"] == TABLE) & (pub["metric"] == "fid")]
    return p.assign(nfe=pd.to_numeric(p["nfe"]), value=pd.to_numeric(p["value"]))


def _ours(images: pd.DataFrame | None) -> pd.DataFrame:
    """Our unguided CIFAR-10 FIDs with TF-Inception features, mean over seeds, per (run, solver, spectral, NFE)."""
    if images is None or images.empty:
        return pd.DataFrame(columns=["run", "method", "solver", "spectral", "K", "nfe", "value", "num_samples",
                                     "num_seeds", "train_steps"])
    q = images[(images["dataset"] == DATASET) & (images["metric"] == "fid") & (images["guidance"] == "none")
               & (images["feature_extractor"] == EXTRACTOR)]
    keys = ["run", "method", "solver", "spectral", "K", "nfe_budget"]
    g = q.groupby(keys, dropna=False).agg(value=("value", "mean"), num_samples=("num_samples", "first"),
                                          num_seeds=("seed", "nunique"), train_steps=("train_steps", "first"))
    return g.reset_index().rename(columns={"nfe_budget": "nfe"})


def table5(images: pd.DataFrame | None, pub: pd.DataFrame) -> pd.DataFrame:
    """One row per (entry, NFE, our run variant): the published FID, ours, and a status.

    The NFE columns are the paper's (:data:`NFES`) and any other NFE we ran (the CPU smoke runs NFE 2 and 4).

    Args:
        images: the long image table (``results/tables/images.csv``), or None when nothing was run.
        pub: the published numbers (``data/published/gmflow_icml2025.csv`` columns).

    Returns:
        :data:`COLUMNS`; ``status`` is ``ours`` (we have the point), ``not run`` (ours is missing) or
        ``published only`` (an entry this project does not reimplement).
    """
    published, ours = _published(pub), _ours(images)
    nfes = sorted({*NFES, *(int(n) for n in ours["nfe"])})
    rows = []
    for entry, (paper_method, paper_solver, method) in ENTRIES.items():
        mine = ours[(ours["method"] == method) & (ours["solver"] == paper_solver)]
        variants = mine[["run", "spectral"]].drop_duplicates().itertuples(index=False) if len(mine) else [None]
        for variant, nfe in product(list(variants), nfes):
            p = published[(published["method"] == paper_method) & (published["solver"] == paper_solver)
                          & (published["nfe"] == nfe)]
            base = {"entry": entry, "nfe": nfe, "paper": float(p["value"].iloc[0]) if len(p) else float("nan"),
                    "solver": paper_solver}
            if method is None:
                rows.append({**base, "status": "published only"})
                continue
            if variant is None:
                rows.append({**base, "status": "not run"})
                continue
            r = mine[(mine["run"] == variant.run) & (mine["spectral"] == variant.spectral) & (mine["nfe"] == nfe)]
            base.update(run=variant.run, spectral=variant.spectral)
            if r.empty:
                rows.append({**base, "status": "not run"})
                continue
            r = r.iloc[0]
            rows.append({**base, "ours": r.value, "status": "ours", "K": r.K, "num_samples": r.num_samples,
                         "num_seeds": r.num_seeds, "train_steps": r.train_steps, "feature_extractor": EXTRACTOR})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def table5_display(t: pd.DataFrame) -> pd.DataFrame:
    """The table as the paper prints it: entries (one row per run variant of ours) x NFE, cells 'ours / paper'."""

    def label(r) -> str:
        if pd.isna(r.run):
            return r.entry
        extra = [f"run {r.run}"] + ([f"spectral {int(r.spectral)}"] if r.solver == "gm-sde-2" else [])
        return f"{r.entry} ({', '.join(extra)})"

    def cell(r) -> str:
        ours = {"not run": "not run", "published only": "-"}.get(r.status) or f"{r.ours:.2f}"
        return f"{ours} / {'-' if pd.isna(r.paper) else f'{r.paper:.2f}'}"

    d = t.assign(row=[label(r) for r in t.itertuples()], cell=[cell(r) for r in t.itertuples()])
    wide = d.pivot_table(index="row", columns="nfe", values="cell", aggfunc="first")
    wide = wide.reindex(list(dict.fromkeys(d["row"])))
    wide.columns = [f"NFE {c} (ours / paper)" for c in wide.columns]
    wide.index.name = "Table 5 entry"
    return wide
