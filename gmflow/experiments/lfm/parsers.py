"""The ``gmflow-bench lfm`` sub-commands' options (the commands are in :mod:`gmflow.experiments.lfm.cli`)."""

from __future__ import annotations

import argparse

from gmflow.experiments.lfm import cli
from gmflow.experiments.lfm.chain import RUN, SAMPLE_SOLVERS
from gmflow.harness.argtypes import add_dit_shape_args, ranged
from gmflow.harness.argtypes import nonneg_int as _nonneg_int
from gmflow.harness.argtypes import positive_float as _positive_float
from gmflow.harness.argtypes import positive_int as _positive_int


def add_parsers(sub, fmt) -> None:
    """The ``lfm`` group of sub-commands."""
    from baselines.lfm import INTERPOLANTS, SOLVERS
    from gmflow.harness import registry

    group = sub.add_parser("lfm", help="Local Flow Matching: blocks, pushes, students, chained sampling, exact NLL",
                           description=cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = group.add_subparsers(dest="stage", required=True)
    ex = "example: gmflow-bench lfm {} (see gmflow-bench lfm --help for a whole chain)"

    s = sub.add_parser("train-block", help="train block n of a chain on its pool (resumable)",
                       formatter_class=fmt, epilog=ex.format(
                           "train-block --dataset gmm2d --block 2 --num-blocks 9 --pool lfm/pool_1.npz "
                           "--init-from lfm/block_1/ema.safetensors --out lfm/block_2"))
    s.add_argument("--dataset", choices=(*registry.DATASETS_2D, *registry.IMAGE_DATASETS), required=True)
    s.add_argument("--block", type=_positive_int, required=True, help="block index n (1-based); n = N is the free one")
    s.add_argument("--num-blocks", type=_positive_int, required=True, help="N, including the free block")
    s.add_argument("--step-c", type=_positive_float, default=0.025, help="h_n = c rho^(n-1)")
    s.add_argument("--step-rho", type=_positive_float, default=1.25, help="h_n = c rho^(n-1)")
    s.add_argument("--pool", required=True, help="block n's pool .npz (pool_{n-1}; pool_0 = the training sample)")
    s.add_argument("--init-from", default=None, help="warm start: block n-1's ema.safetensors")
    s.add_argument("--interpolant", choices=sorted(INTERPOLANTS), default="linear")
    s.add_argument("--network", default=None, help="image datasets: the DiT variant (velocity head)")
    add_dit_shape_args(s, help_prefix="images, as the image runs': ")
    s.add_argument("--width", type=_positive_int, default=256, help="2D MLP width")
    s.add_argument("--depth", type=_positive_int, default=3, help="2D MLP depth")
    s.add_argument("--min-period", type=ranged("min_period"), default=None,
                   help="2D MLP: finest period of the position features, in (0, 50); default the paper's 0.005")
    s.add_argument("--label-dropout", type=float, default=0.1, help="images: probability of the null class")
    s.add_argument("--grad-clip", type=float, default=0.0, help="gradient-norm clip; 0 = off")
    s.add_argument("--steps", type=_positive_int, default=667)
    s.add_argument("--batch-size", type=_positive_int, default=1024)
    s.add_argument("--lr", type=_positive_float, default=2e-4)
    s.add_argument("--warmup-steps", type=_nonneg_int, default=50)
    s.add_argument("--ema-gamma", type=float, default=7.0)
    s.add_argument("--checkpoint-every", type=_positive_int, default=1000)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--restart", action="store_true", help="discard a saved state and train from the start")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="block folder")
    s.set_defaults(func=cli.cmd_train_block)

    s = sub.add_parser("image-pool", help="the training pool of an image chain (images and labels)",
                       formatter_class=fmt, epilog=ex.format(
                           "image-pool --dataset fashion-mnist --num-images 10000 --out lfm/pool_0.npz"))
    s.add_argument("--dataset", choices=registry.IMAGE_DATASETS, required=True)
    s.add_argument("--num-images", type=_positive_int, default=None,
                   help="a class-balanced prefix of the training split (default: all of it)")
    s.add_argument("--data-root", default=None, help="folder of the dataset's files (default: its standard place)")
    s.add_argument("--out", required=True, help="pool_0 .npz (x in [-1, 1], labels)")
    s.set_defaults(func=cli.cmd_image_pool)

    s = sub.add_parser("push", help="push a pool through a trained block (t: 0 -> 1), cached",
                       formatter_class=fmt, epilog=ex.format(
                           "push --block-dir lfm/block_1 --pool lfm/pool_0.npz --out lfm/pool_1.npz"))
    s.add_argument("--block-dir", required=True)
    s.add_argument("--pool", required=True, help="the block's pool .npz")
    s.add_argument("--solver", choices=SOLVERS, default="dopri5")
    s.add_argument("--nfe", type=_positive_int, default=None, help="evaluations per block (euler / heun only)")
    s.add_argument("--rtol", type=_positive_float, default=1e-5)
    s.add_argument("--atol", type=_positive_float, default=1e-5)
    s.add_argument("--batch-size", type=_positive_int, default=10000, help="points per dopri5 solve")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="next pool .npz (left alone if it exists)")
    s.set_defaults(func=cli.cmd_push)

    s = sub.add_parser("sample", help="sample a chain (blocks N..1), counting every NFE",
                       formatter_class=fmt, epilog=ex.format(
                           "sample --blocks lfm/block_1 lfm/block_2 --solver heun --nfe-per-block 2 "
                           "--reference ref.npz --metrics-out m.csv --out s.npz"))
    s.add_argument("--blocks", nargs="+", required=True,
                   help="block folders (students for 'distilled') of blocks 1..N, block 1 first")
    s.add_argument("--solver", choices=SAMPLE_SOLVERS, required=True)
    s.add_argument("--nfe-per-block", type=_positive_int, default=None, help="euler / heun: evaluations per block")
    s.add_argument("--rtol", type=_positive_float, default=1e-5, help="dopri5")
    s.add_argument("--atol", type=_positive_float, default=1e-5, help="dopri5")
    s.add_argument("--teacher-blocks", nargs="+", default=None,
                   help="distilled: the teachers' block folders (for the chain's training cost in the record)")
    s.add_argument("--run", default=RUN, help="the chain's name in the tables")
    s.add_argument("--num-samples", type=_positive_int, default=50000)
    s.add_argument("--block-size", type=_positive_int, default=10000, help="samples per noise stream")
    s.add_argument("--reference", default=None, help="exact reference sample to evaluate against")
    s.add_argument("--metrics-out", default=None, help="also write the 2D metrics (long-format .csv)")
    s.add_argument("--knn-points", type=_positive_int, default=10000)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="output .npz")
    s.set_defaults(func=cli.cmd_sample)

    s = sub.add_parser("nll", help="exact NLL of held-out data points and its gap to the data entropy",
                       formatter_class=fmt, epilog=ex.format(
                           "nll --blocks lfm/block_1 lfm/block_2 --reference ref.npz --out nll.csv"))
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--blocks", nargs="+", help="block folders of blocks 1..N, block 1 first")
    g.add_argument("--flow-run", help="instead: a flow-matching run folder (one flow over sigma 0 -> 1), to compare")
    s.add_argument("--run", default=None, help=f"--blocks: the chain's name in the tables (default {RUN!r}); a "
                   "--flow-run is named by its folder")
    s.add_argument("--reference", required=True, help="exact data sample (held out from the training pool)")
    s.add_argument("--num-points", type=_positive_int, default=2000, help="the reference's first points")
    s.add_argument("--num-steps", type=_positive_int, default=10,
                   help="fixed ODE steps per block (also reported at half as many, a convergence check)")
    s.add_argument("--method", choices=("rk4", "euler", "dopri5"), default="rk4")
    s.add_argument("--tol", type=_positive_float, default=1e-5, help="dopri5: rtol = atol (the coarse check uses 10x)")
    s.add_argument("--batch-size", type=_positive_int, default=1000)
    s.add_argument("--seed", type=_nonneg_int, default=0, help="the reference's seed (a table column)")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--out", required=True, help="output long-format .csv")
    s.set_defaults(func=cli.cmd_nll)

    s = sub.add_parser("distill", help="distil one block (or consecutive blocks) into a one-step student",
                       formatter_class=fmt, epilog=ex.format(
                           "distill --blocks lfm/block_2 --pool-in lfm/pool_1.npz --pool-out lfm/pool_2.npz "
                           "--out lfm/student_2"))
    s.add_argument("--blocks", nargs="+", required=True,
                   help="the teacher block folder, or consecutive blocks n..m first to last (one student for all)")
    s.add_argument("--pool-in", required=True, help="the group's pool pool_{n-1} (data side: the t = 0 endpoints)")
    s.add_argument("--pool-out", required=True, help="that pool pushed through blocks n..m, pool_m (t = 1 inputs)")
    s.add_argument("--steps", type=_positive_int, default=300)
    s.add_argument("--batch-size", type=_positive_int, default=1024)
    s.add_argument("--lr", type=_positive_float, default=2e-4)
    s.add_argument("--warmup-steps", type=_nonneg_int, default=20)
    s.add_argument("--seed", type=_nonneg_int, default=0)
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--out", required=True, help="student folder")
    s.set_defaults(func=cli.cmd_distill)
