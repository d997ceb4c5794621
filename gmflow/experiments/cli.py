"""The ``gmflow-bench`` command: one group of sub-commands per experiment, and ``report``.

    gmflow-bench 2d {prepare-data,train,sample,evaluate} ...
    gmflow-bench images {train,snapshot-run,sample,train-classifier,reference-features,evaluate,evaluate-adm,nll} ...
    gmflow-bench lfm {train-block,image-pool,push,sample,nll,distill} ...
    gmflow-bench report --inputs a.csv b.csv --out table.csv

``gmflow-bench <group> --help`` gives a worked example of each group.
"""

from __future__ import annotations

import argparse
import sys

from gmflow.experiments.images.cli import add_parsers as add_images
from gmflow.experiments.lfm.parsers import add_parsers as add_lfm
from gmflow.experiments.toy2d.cli import add_parsers as add_2d
from gmflow.harness import io
from gmflow.harness.tables import concat_tables


def cmd_report(a) -> None:
    io.save_csv(concat_tables(a.inputs), a.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gmflow-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    add_2d(sub, fmt)
    add_images(sub, fmt)
    add_lfm(sub, fmt)
    s = sub.add_parser("report", help="concatenate long-format metric files into one table", formatter_class=fmt)
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = " ".join(x for x in (args.command, getattr(args, "stage", None)) if x)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"gmflow-bench {name}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
