"""The 2D bandwidth table (tables/bandwidth_2d.csv): per dataset, run or LFM chain and solver, the position-feature
min_period beside TV and exact-density NLL (:mod:`gmflow.experiments.toy2d.bandwidth`)."""

from __future__ import annotations

import argparse

from gmflow.experiments.toy2d.bandwidth import bandwidth_table, min_periods_of
from gmflow.harness import io
from gmflow.harness.argtypes import positive_int
from gmflow.harness.tables import concat_tables


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python workflow/scripts/bandwidth_2d.py --metrics r/2d/gmm2d/fm/metrics/*.csv "
        "--runs r/2d/gmm2d/fm --chains r/2d/gmm2d/lfm --nfe 9 36 --out r/tables/bandwidth_2d.csv")
    p.add_argument("--metrics", nargs="+", required=True, help="long-format 2D metric and NLL files")
    p.add_argument("--runs", nargs="*", default=[], help="trained 2D run folders (their run.json)")
    p.add_argument("--chains", nargs="*", default=[], help="2D LFM chain folders (their block_*/run.json)")
    p.add_argument("--nfe", nargs="+", type=positive_int, required=True, help="NFE of the TV columns")
    p.add_argument("--out", required=True, help="output .csv")
    a = p.parse_args(argv)
    table = bandwidth_table(concat_tables(a.metrics), min_periods_of(a.runs, a.chains), a.nfe)
    io.save_csv(table, a.out)
    print(f"{a.out}: {len(table)} rows")


if __name__ == "__main__":
    main()
