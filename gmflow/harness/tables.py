"""Long-format metric tables: one row per (sample set, metric), the columns every table of an experiment shares."""

from __future__ import annotations

import pandas as pd

COLUMNS_2D = ["dataset", "run", "method", "K", "solver", "guidance", "guidance_scale", "orthogonal", "nfe",
              "nfe_budget", "substeps", "seed", "num_samples", "metric", "value", "feature_extractor", "train_steps"]
COLUMNS_IMAGES = ["dataset", "run", "method", "K", "trans_ratio", "solver", "guidance", "guidance_scale",
                  "orthogonal", "spectral", "nfe", "nfe_budget", "substeps", "seed", "num_samples", "metric", "value",
                  "feature_extractor", "train_steps", "sample_set", "train_seconds", "ci_low", "ci_high"]


def metric_rows(record: dict, metrics: dict[str, float], columns: list[str], feature_extractor: str,
                intervals: dict[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """One row per metric: the sample set's ``record`` fields in ``columns``, then the metric and its value, and
    its 95% interval in ``ci_low`` / ``ci_high`` when ``intervals`` has one (NaN otherwise)."""
    intervals = intervals or {}
    nan = (float("nan"), float("nan"))
    rows = [{**{k: record.get(k) for k in columns}, "metric": m, "value": v, "feature_extractor": feature_extractor,
             **({"ci_low": intervals.get(m, nan)[0], "ci_high": intervals.get(m, nan)[1]} if "ci_low" in columns
                else {})}
            for m, v in metrics.items()]
    return pd.DataFrame(rows, columns=columns)


def concat_tables(paths: list[str]) -> pd.DataFrame:
    """Concatenate long-format files into one table in a stable order."""
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    keys = ["dataset", "method", "K", "solver", "guidance", "guidance_scale", "nfe_budget", "seed", "metric"]
    return df.sort_values([c for c in keys if c in df.columns], kind="stable")
