# Shared helpers: config validation (before any job), paths as pure functions of wildcards, target lists.
import re
import sys

sys.path.insert(0, workflow.basedir)

from gmflow.experiments.config import validate_config
from gmflow.experiments.images.sweeps import TAG_PATTERN, image_points, parse_tag
from gmflow.harness import registry

validate_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")

RES = config["results"]
TOY = config.get("toy")
IMG = config.get("images")
THREADS = config["threads"]
ROOT = workflow.basedir
# Every rule calls the project's CLI with the python on PATH (the set-up script puts .venv/bin first; a conda env
# from environment.yml also works). PYTHONPATH makes the checkout importable without installation.
PY = f"PYTHONPATH={ROOT}:${{PYTHONPATH:-}} python"
CLI = f"{PY} -m gmflow.experiments.cli"
ENV = f"{ROOT}/environment.yml"


wildcard_constraints:
    dataset="|".join(registry.DATASETS),
    extractor="|".join(re.escape(e) for e in registry.FEATURE_EXTRACTORS),
    tag=re.sub(r"\(\?P<\w+>", "(?:", TAG_PATTERN),
    run="[A-Za-z0-9][A-Za-z0-9-]*",
    solver="|".join(re.escape(s) for s in registry.SOLVERS),
    nfe=r"\d+",
    seed=r"\d+",


def run_option(run, key):
    spec = TOY["runs"][run]
    return spec.get(key, TOY["train"][key])


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
    spec = IMG["runs"][run]
    return spec.get(key, IMG["train"][key])


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
    if IMG is not None:
        out += [f"{RES}/reports/{nb}.html" for nb in IMG["notebooks"]]  # schema default: IMAGE_NOTEBOOKS
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
