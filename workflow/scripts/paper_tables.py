"""Paper tables and claims of the image experiment from ``{results}/tables/images.csv`` and the published numbers
(:mod:`gmflow.experiments.images.tables` documents the tables and their conventions)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gmflow.experiments.images.claims import build_tables
from gmflow.experiments.images.points import load_images, load_published
from gmflow.harness import io


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python workflow/scripts/paper_tables.py --results results")
    p.add_argument("--results", required=True, help="results folder; reads and writes its tables/ subfolder")
    a = p.parse_args(argv)
    tables = Path(a.results) / "tables"
    images, published = tables / "images.csv", tables / "published_gmflow.csv"
    for f, how in ((images, "run the workflow's rule table_images"),
                   (published, "copy data/published/gmflow_icml2025.csv there (rule published_numbers)")):
        if not f.is_file():
            sys.exit(f"error: {f} does not exist; {how}")
    out = build_tables(load_images(images), load_published(published))
    for name, t in out.items():
        io.save_csv(t, tables / f"{name}.csv")
        print(f"{tables / name}.csv: {len(t)} rows")


if __name__ == "__main__":
    main()
