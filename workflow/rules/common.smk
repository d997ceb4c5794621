# Shared helpers: config validation (before any job), paths as pure functions of wildcards, target lists.
import re
import shlex
import sys

from snakemake.exceptions import WorkflowError

sys.path.insert(0, workflow.basedir)

from gmflow.experiments.config import validate_config
from gmflow.experiments.images.sweeps import TAG_PATTERN, image_points, parse_tag, run_setting, seed_twins
from gmflow.harness import registry
from gmflow.harness.argtypes import DIT_SHAPE_FLAGS

validate_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")

RES = config["results"]
TOY = config.get("toy")
IMG = config.get("images")
THREADS = config["threads"]
RESOURCES = config["resources"]
ROOT = workflow.basedir
# Every rule calls the project's CLI with the python on PATH (the set-up script puts .venv/bin first; a conda env
# from environment.yml also works). PYTHONPATH makes the checkout importable without installation.
PYPATH = f"PYTHONPATH={shlex.quote(ROOT)}:${{PYTHONPATH:-}}"
PY = f"{PYPATH} python"
CLI = f"{PY} -m gmflow.experiments.cli"
# One environment for every rule: each calls the same CLI, which imports the whole package (torch included), so
# per-stage files would pin the same packages and install torch once per stage. Same pins as pyproject.toml.
ENV = f"{ROOT}/environment.yml"


def stage_threads(stage):
    """Threads of a job of `stage` (resources.<stage>.threads, or the top-level threads when that is null)."""
    threads = RESOURCES[stage]["threads"]
    return THREADS if threads is None else threads


def stage_resources(stage, one_process=False):
    """Snakemake resources of a job of `stage`: memory (MB), run time (minutes), GPUs, SLURM partition and account.

    `gpu` is the name that Snakemake's local scheduler (--resources gpu=N) and the SLURM executor (--gpus) read. A
    job that runs one process (every trainer but the 2D and image runs under torchrun) asks for one GPU at most.
    """
    spec = RESOURCES[stage]
    gpus = min(spec["gpus"], 1) if one_process else spec["gpus"]
    out = dict(mem_mb=spec["mem_mb"], runtime=spec["runtime"], gpu=gpus)
    partition = spec["partition"] or RESOURCES["partition"]
    if partition:
        out["slurm_partition"] = partition
    if RESOURCES["account"]:
        out["slurm_account"] = RESOURCES["account"]
    return out


def train_launcher():
    """The command that starts a 2D or image trainer: the CLI, or torchrun with resources.train.processes ranks."""
    n = RESOURCES["train"]["processes"]
    if n == 1:
        return CLI
    return f"{PYPATH} torchrun --standalone --nproc_per_node {n} -m gmflow.experiments.cli"


def opt(flag, value):
    """`flag value` with the value shell-quoted, or nothing when the value is None or empty."""
    return f"{flag} {shlex.quote(str(value))}" if value not in (None, "") else ""


TRAIN = train_launcher()


def dit_opts():
    """The image runs' DiT shape overrides (images.train: patch_size, depth, width, num_heads) as CLI flags; the LFM
    image blocks take the same, so every image method trains one network."""
    given = [(flag, IMG["train"].get(key)) for key, flag, _ in DIT_SHAPE_FLAGS]
    return " ".join(opt(flag, value) for flag, value in given if value is not None)


def official_runs():
    """Image runs imported from the authors' published snapshot (images.runs.{run}.official) instead of trained."""
    return [r for r, spec in (IMG or {}).get("runs", {}).items() if "official" in spec]


def trained_runs():
    return [r for r in (IMG or {}).get("runs", {}) if r not in official_runs()]

# Device and precision of every 2D and image trainer and sampler (top-level config keys device, precision)
DEVICE = f"--device {shlex.quote(config['device'])} --precision {shlex.quote(config['precision'])}"


def all_cores():
    """Every core of a local run (--cores N); a cluster run has no --cores: there a job asks for its own whole node."""
    try:
        return workflow.cores
    except WorkflowError:
        return stage_threads("report")


wildcard_constraints:
    dataset="|".join(registry.DATASETS),
    extractor="|".join(re.escape(e) for e in registry.FEATURE_EXTRACTORS),
    tag=re.sub(r"\(\?P<\w+>", "(?:", TAG_PATTERN),
    run="[A-Za-z0-9][A-Za-z0-9-]*",
    solver="|".join(re.escape(s) for s in registry.SOLVERS),
    nfe=r"\d+",
    seed=r"\d+",


def run_option(run, key):
    """A 2D run's training setting: its own (toy.runs.{run}.trans_ratio, .seed), else toy.train's."""
    return run_setting(TOY, run, key)


def sample_sets_2d():
    """Every (dataset, run, solver, nfe, seed) sample set of the 2D sweep."""
    for dataset, runs in TOY["experiments"].items():
        for run, solvers in runs.items():
            for solver in solvers:
                for nfe in TOY["sample"]["nfe"]:
                    for seed in TOY["sample"]["seeds"]:
                        yield dict(dataset=dataset, run=run, solver=solver, nfe=nfe, seed=seed)


def metric_files_2d():
    files = [
        f"{RES}/2d/{s['dataset']}/{s['run']}/metrics/{s['solver']}_nfe{s['nfe']}_gnone_seed{s['seed']}.csv"
        for s in sample_sets_2d()
    ]
    files += [
        f"{RES}/2d/{d}/reference/metrics_seed{seed}.csv"
        for d in TOY["experiments"]
        for seed in TOY["sample"]["seeds"]
    ]
    return files


# ---------------------------------------------------------------------------------------------------------- images


def image_run_option(run, key):
    """An image run's training setting: its own (images.runs.{run}.trans_ratio, .seed), else images.train's."""
    return run_setting(IMG, run, key)


def image_metric_files():
    """Every (sample set, extractor) metric file of the image sweeps, and the NLL of every GMFlow run."""
    d = IMG["dataset"]
    files = [
        f"{RES}/images/{d}/{p['run']}/metrics/{p['tag']}_{e}.csv"
        for p in image_points(IMG)
        for e in p["extractors"]
    ]
    files += [
        f"{RES}/images/{d}/{run}/nll_seed0.csv" for run, spec in IMG["runs"].items() if spec["method"] == "gmflow"
    ]
    return files


IMAGE_NOTEBOOKS = ["fig6_nfe", "fig7_table3_k", "table2_guidance", "table4_ablation", "fig8_grids"]


def final_targets():
    out = []
    if TOY is not None:
        out += [f"{RES}/reports/2d_toy.html"]
        if config["report"]["bandwidth_2d"]:
            out += [f"{RES}/tables/bandwidth_2d.csv"]
    if IMG is not None:
        out += [f"{RES}/reports/{nb}.html" for nb in IMG["notebooks"]]  # schema default: IMAGE_NOTEBOOKS
        if seed_twins(IMG):  # runs that differ only in their training seed (config/seeds.yaml)
            out += [f"{RES}/tables/seed_spread.csv"]
    return out


# ---------------------------------------------------------------------------------- latent datasets (imagenet256)
import shlex


def is_latent(dataset):
    return dataset in registry.LATENT_DATASETS


def latent_cache_dir():
    return IMG["latent_cache"] or f"{RES}/images/{IMG['dataset']}/latents"


def latent_cache_input(w):
    """The latent cache's index.json for the rules that read the cache (training, NLL); none for pixel datasets."""
    return [f"{latent_cache_dir()}/index.json"] if is_latent(w.dataset) else []


def data_root_arg(w):
    """The quoted --data-root of a training-set reader: the latent cache of a latent dataset, else images.data_root."""
    root = latent_cache_dir() if is_latent(w.dataset) else IMG["data_root"]
    return f"--data-root {shlex.quote(str(root))}" if root else ""


def vae_args(w):
    """The quoted VAE options of the sample rule: latent sample sets are decoded into images as they are drawn."""
    if not is_latent(w.dataset):
        return ""
    return f"--vae {shlex.quote(IMG['vae'])} --vae-device {shlex.quote(IMG['latents']['device'])}"
