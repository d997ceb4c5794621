"""The paper's Table 5 (CIFAR-10, FID vs NFE) from ``{results}/tables/images.csv`` beside the published numbers
(:mod:`gmflow.experiments.images.table5`); every entry without a result of ours says "not run"."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from gmflow.experiments.images.table5 import table5
from gmflow.harness import io


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python workflow/scripts/table5_cifar10.py --results results-cifar10")
    p.add_argument("--results", required=True, help="results folder; reads and writes its tables/ subfolder")
    a = p.parse_args(argv)
    tables = Path(a.results) / "tables"
    images, published = tables / "images.csv", tables / "published_gmflow.csv"
    if not published.is_file():
        sys.exit(f"error: {published} does not exist; copy data/published/gmflow_icml2025.csv there "
                 "(rule published_numbers)")
    t = table5(pd.read_csv(images) if images.is_file() else None, pd.read_csv(published))
    out = tables / "table5_cifar10.csv"
    io.save_csv(t, out)
    print(f"{out}: {len(t)} rows, {int((t.status == 'ours').sum())} of ours")


if __name__ == "__main__":
    main()
