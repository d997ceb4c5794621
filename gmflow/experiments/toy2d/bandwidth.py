"""The position-feature bandwidth of the 2D networks beside their sample quality and exact likelihood.

The 2D MLP embeds each coordinate by Fourier features whose periods run from ``min_period`` to 50 (docs/method.md,
Sec. 2.4; the paper's 0.005). The finest period bounds how rough the learned velocity can be: a field that is rough
at scales far below the data's structure can still give good samples and a poor exact density. The table puts, per
2D dataset, trained run (or LFM chain) and solver, the network's ``min_period`` (read from its ``run.json``), the TV
of its samples at the chosen NFE points and, for the velocity models (flow matching by its ODE, LFM by its chain of
blocks), the held-out NLL and the KL estimate against the exact density. GMFlow runs get TV only: this project has no
exact likelihood of a GM model's flow, and ``nll_note`` says so.

Inputs are the long-format rows of :data:`gmflow.harness.tables.COLUMNS_2D` (2D sample-set metrics,
``lfm sample`` metrics and ``lfm nll`` rows); the table is a pure function of them and of the runs' ``min_period``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gmflow.harness.runs import mlp2d_min_period, read_spec

TV_METRIC = "tv_hist200"
"""The TV of the 200 x 200 histogram against the exact bin masses (the 2D table's headline metric)."""
NLL_METRICS = ("nll", "nll_se", "data_nll", "kl_estimate", "kl_estimate_se")
METHOD_ORDER = {"fm": 0, "gmflow": 1, "lfm": 2}
NO_NLL = {
    "gmflow": "no exact likelihood: GM models are not integrated for their density in this project",
    None: "not computed (needs the lfm section with lfm.nll.num_points > 0 and this dataset in lfm.datasets)",
}


def tv_column(nfe: int) -> str:
    return f"tv_nfe{nfe}"


def columns(nfe: Sequence[int]) -> list[str]:
    return ["dataset", "method", "K", "run", "min_period", "solver", *(tv_column(k) for k in nfe), *NLL_METRICS,
            "nll_note"]


def bandwidth_table(rows: pd.DataFrame, min_periods: dict[tuple[str, str], float], nfe: Sequence[int]
                    ) -> pd.DataFrame:
    """One row per (dataset, run, solver) of the runs in ``min_periods``, keyed ``(dataset, run)``.

    Args:
        rows: long-format metric rows (``dataset, run, method, K, solver, nfe, seed, metric, value``, ...).
        min_periods: the finest position-feature period of each run or chain.
        nfe: the TV columns: the TV of the sample set whose measured NFE is ``k`` (mean over seeds; empty when the
            run has no sample set of that NFE, e.g. an LFM chain of N blocks at an NFE that is not a multiple of N).

    Returns:
        :func:`columns` ``(nfe)``; the NLL columns (means over seeds) of the run on every solver row of it, or empty
        with the reason in ``nll_note``. Solvers with no TV at any of ``nfe`` are left out.
    """
    keys = pd.Series(list(zip(rows["dataset"], rows["run"], strict=True)), index=rows.index)
    rows = rows[keys.isin(set(min_periods))]
    tv = rows[rows["metric"] == TV_METRIC]
    nll = rows[rows["metric"].isin(NLL_METRICS)]
    nll = nll.groupby(["dataset", "run", "metric"])["value"].mean()
    out = []
    for (dataset, run, method, K, solver), g in tv.groupby(["dataset", "run", "method", "K", "solver"], sort=False):
        values = {tv_column(k): g.loc[np.isclose(g["nfe"].astype(float), k), "value"].mean() for k in nfe}
        if all(pd.isna(v) for v in values.values()):
            continue
        measured = {m: nll.get((dataset, run, m), np.nan) for m in NLL_METRICS}
        note = "" if pd.notna(measured["nll"]) else NO_NLL.get(method, NO_NLL[None])
        out.append({"dataset": dataset, "method": method, "K": int(K), "run": run,
                    "min_period": float(min_periods[(dataset, run)]), "solver": solver, **values, **measured,
                    "nll_note": note})
    table = pd.DataFrame(out, columns=columns(nfe))
    if table.empty:
        return table
    order = table["method"].map(METHOD_ORDER).fillna(len(METHOD_ORDER))
    table = table.assign(_order=order).sort_values(["dataset", "_order", "K", "min_period", "solver", "run"])
    return table.drop(columns="_order").reset_index(drop=True)


def run_min_period(run_dir: str | Path) -> tuple[str, str, float]:
    """``(dataset, run name, min_period)`` of a trained 2D run folder (its ``run.json``)."""
    spec = read_spec(run_dir)
    return spec["dataset"], Path(run_dir).name, mlp2d_min_period(spec)


def chain_min_period(chain_dir: str | Path) -> tuple[str, str, float]:
    """``(dataset, chain name, min_period)`` of a 2D LFM chain folder, read from every ``block_{n}/run.json``
    (they must agree)."""
    blocks = sorted(Path(chain_dir).glob("block_*/run.json"))
    if not blocks:
        raise FileNotFoundError(f"{chain_dir} has no block_*/run.json: train the chain first (lfm train-block)")
    specs = [json.loads(p.read_text()) for p in blocks]
    periods = {mlp2d_min_period(s) for s in specs}
    if len(periods) != 1:
        raise ValueError(f"the blocks of {chain_dir} were trained with different min_period {sorted(periods)}; "
                         "retrain the chain with one value")
    return specs[0]["dataset"], Path(chain_dir).name, periods.pop()


def min_periods_of(run_dirs: Iterable[str | Path] = (), chain_dirs: Iterable[str | Path] = ()
                   ) -> dict[tuple[str, str], float]:
    """``{(dataset, name): min_period}`` of trained 2D runs and LFM chains."""
    found = [run_min_period(d) for d in run_dirs] + [chain_min_period(d) for d in chain_dirs]
    return {(dataset, name): period for dataset, name, period in found}
