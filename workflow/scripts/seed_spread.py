"""The spread between training seeds of seed-twin runs beside the generated-set intervals, from the long image table
(:mod:`gmflow.experiments.images.seed_spread` documents the rows and columns)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from gmflow.experiments.images.points import load_images
from gmflow.experiments.images.seed_spread import seed_spread
from gmflow.harness import io


def run_seed(text: str) -> tuple[str, int]:
    """``"fm-seed1=1"`` -> ``("fm-seed1", 1)``."""
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9-]*)=(\d+)", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"expected RUN=SEED (e.g. fm-seed1=1), got {text!r}")
    return m[1], int(m[2])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python workflow/scripts/seed_spread.py --table results-seeds/tables/images.csv "
               "--twin fm=0 fm-seed1=1 --twin gm-k8=0 gm-k8-seed1=1 --out results-seeds/tables/seed_spread.csv")
    p.add_argument("--table", required=True, help="the long image table (rule table_images)")
    p.add_argument("--twin", nargs=2, action="append", required=True, type=run_seed,
                   metavar=("RUN0=SEED0", "RUN1=SEED1"),
                   help="a pair of seed twins with their training seeds, the smaller seed first; repeat per pair")
    p.add_argument("--out", required=True, help="the CSV to write")
    a = p.parse_args(argv)
    if not Path(a.table).is_file():
        sys.exit(f"error: {a.table} does not exist; run the workflow's rule table_images")
    twins = [(r0, r1) for (r0, _), (r1, _) in a.twin]
    seeds = {run: seed for pair in a.twin for run, seed in pair}
    t = seed_spread(load_images(a.table), twins, seeds)
    out = Path(a.out)
    io.save_csv(t, out)
    print(f"{out}: {len(t)} rows ({', '.join(f'{k} {v}' for k, v in t['comparison'].value_counts().items())})")


if __name__ == "__main__":
    main()
