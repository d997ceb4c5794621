"""The ``gmflow-bench`` command: one group of sub-commands per experiment, and ``report``.

    gmflow-bench 2d {prepare-data,train,sample,evaluate} ...
    gmflow-bench images {train,snapshot-run,sample,train-classifier,reference-features,evaluate,evaluate-adm,nll} ...
    gmflow-bench lfm {train-block,image-pool,push,sample,nll,distill} ...
    gmflow-bench report --inputs a.csv b.csv --out table.csv
    gmflow-bench import-official --snapshot DIR --out RUN_DIR [--variant bf16]

``gmflow-bench <group> --help`` gives a worked example of each group.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gmflow.experiments.images.cli import add_parsers as add_images
from gmflow.experiments.lfm.parsers import add_parsers as add_lfm
from gmflow.experiments.toy2d.cli import add_parsers as add_2d
from gmflow.harness import io
from gmflow.harness.tables import concat_tables


def cmd_report(a) -> None:
    io.save_csv(concat_tables(a.inputs), a.out)


def cmd_index(a) -> None:
    from gmflow.experiments.index_page import write_index

    shown = write_index(a.results, a.out, a.nfe)
    print(f"{a.out}: {shown['claims']} claims, {len(shown['reports'])} reports, {len(shown['grids'])} sample grids")


def cmd_check_config(a) -> None:
    """Parse and validate configuration files as the workflow will (a YAML error names its line)."""
    from pathlib import Path

    from gmflow.experiments.config import validate_config
    from gmflow.harness.schema import load_config_file

    config: dict = {}
    for path in a.configfile:
        config.update(load_config_file(path))  # later files override earlier ones at the top level, as Snakemake
    if a.syntax_only:
        print(f"{', '.join(a.configfile)}: valid YAML")
        return
    validate_config(config, Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml")
    print(f"{', '.join(a.configfile)}: valid")


IMPORT_EXAMPLE = """Convert the authors' published GM-DiT (a local diffusers snapshot, safetensors only) into a run
folder that the image stages load like a trained run (docs/official_checkpoint.md).

Example:
    huggingface-cli download Lakonik/gmflow_imagenet_k8_ema --local-dir ckpt/gmflow_imagenet_k8_ema
    gmflow-bench import-official --snapshot ckpt/gmflow_imagenet_k8_ema --out runs/imagenet256/official --variant bf16
"""


def cmd_import_official(a) -> None:
    from gmflow.harness.official import import_official

    spec = import_official(a.snapshot, a.out, a.variant)
    files = spec["imported_from"]["files"]
    print(f"{a.out}: {spec['network']} K={spec['num_components']} {spec['sample_shape']} from {len(files)} files of "
          f"{spec['imported_from']['snapshot']}")


class _ExampleFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the example's line breaks and shows the defaults."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gmflow-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    add_2d(sub, fmt)
    add_images(sub, fmt)
    add_lfm(sub, fmt)
    s = sub.add_parser("index", help="write results/index.html: claims with verdicts, links to reports, sample grids",
                       formatter_class=fmt)
    s.add_argument("--results", required=True, help="the results folder")
    s.add_argument("--nfe", type=int, default=6, help="NFE of the sample grids shown")
    s.add_argument("--out", required=True, help="output .html")
    s.set_defaults(func=cmd_index)
    s = sub.add_parser("check-config", help="validate workflow configuration files (YAML syntax, schema, rules)",
                       formatter_class=fmt)
    s.add_argument("configfile", nargs="+", help="config files, in the order given to snakemake --configfile")
    s.add_argument("--syntax-only", action="store_true",
                   help="check the YAML only (values may still come from snakemake --config overrides)")
    s.set_defaults(func=cmd_check_config)
    s = sub.add_parser("report", help="concatenate long-format metric files into one table", formatter_class=fmt)
    s.add_argument("--inputs", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("import-official", help="convert the published GM-DiT snapshot into a run folder",
                       description=IMPORT_EXAMPLE, formatter_class=_ExampleFormatter)
    s.add_argument("--snapshot", type=Path, required=True,
                   help="root of the downloaded snapshot (holds transformer/ and spectrum_net/)")
    s.add_argument("--out", type=Path, required=True, help="run folder to create (must not hold a run.json yet)")
    s.add_argument("--variant", choices=("bf16", "fp16"), default=None,
                   help="weight file variant to read (converted to float32); none: the full-precision files")
    s.set_defaults(func=cmd_import_official)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or the help): its exit code, as a return value
        return e.code if isinstance(e.code, int) else 2
    name = " ".join(x for x in (args.command, getattr(args, "stage", None)) if x)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"gmflow-bench {name}: error: {e}", file=sys.stderr)
        return 2
    finally:
        _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Leave the process group of a ``torchrun`` launch, if the command joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
