"""One registry of string keys: methods, solvers, guidance modes, datasets, networks and feature extractors.

The same keys are the config schema's enums, the Snakemake wildcard values, the CLI choices and the table labels
(tests/test_registry.py checks that they agree).
"""

from __future__ import annotations

from baselines.diffusers_samplers import DIFFUSERS_SOLVERS
from baselines.samplers import FLOW_SOLVERS as _OWN_FLOW_SOLVERS
from gmflow.schedule import ceil128_substeps, paper_substeps
from gmflow.solvers import GM_SOLVERS

METHODS = ("gmflow", "fm")
FLOW_SOLVERS = {**_OWN_FLOW_SOLVERS, **DIFFUSERS_SOLVERS}
SOLVERS_BY_METHOD = {"gmflow": GM_SOLVERS, "fm": FLOW_SOLVERS}
# Solvers a trained model can be sampled with: a GMFlow model also drives every flow solver through the mean of its
# (guided) GM, as in the paper's ablation A4 (DPM++ 2M SDE on the GM-DiT).
APPLICABLE_SOLVERS = {"gmflow": {**GM_SOLVERS, **FLOW_SOLVERS}, "fm": FLOW_SOLVERS}
SOLVERS = {**GM_SOLVERS, **FLOW_SOLVERS}
GM_SOLVERS_KEYS = tuple(GM_SOLVERS)
GM_ODE_SOLVERS = ("gm-ode", "gm-ode-2")  # take analytic sub-steps
GM_SDE_SOLVERS = ("gm-sde", "gm-sde-2")  # take an x0 sampler (spectral sampling)
GUIDANCE = ("none", "probabilistic", "cfg")
DATASETS_2D = ("checkerboard", "gmm2d")
# Keys of modules that are slow to import (tests/test_registry.py checks them against the modules themselves)
IMAGE_DATASETS = ("fashion-mnist", "digits", "cifar10")
IMAGE_NETWORKS = ("dit-xl-2", "dit-l-2", "dit-b-2", "dit-s-2", "dit-fmnist-tiny", "dit-fmnist-small", "dit-digits-tiny",
                  "gmdit-xl-2-official", "dit-latent-tiny")
UNET_NETWORKS = ("unet-cifar10", "unet-tiny")  # U-Nets (gmflow/harness/unet.py); the others are DiTs
IMAGE_NETWORKS += UNET_NETWORKS
# Datasets trained in a VAE's latent space from a cache made by `images encode-latents` (gmflow/harness/data_latents.py)
LATENT_DATASETS = ("imagenet256",)
LATENT_NETWORKS = ("dit-xl-2", "dit-l-2", "dit-b-2", "dit-s-2", "gmdit-xl-2-official", "dit-latent-tiny")
CLASS_IMAGE_DATASETS = IMAGE_DATASETS + LATENT_DATASETS  # the datasets of the image experiment
DATASETS = DATASETS_2D + IMAGE_DATASETS + LATENT_DATASETS
USER_SUPPLIED_DATASETS = ("cifar10",)  # no standard place on a machine: images.data_root must name their folder
NETWORKS_2D = ("mlp2d",)
NETWORKS = NETWORKS_2D + IMAGE_NETWORKS
INCEPTION_TF = "inception-tf"
FEATURE_EXTRACTORS = ("coords", INCEPTION_TF, *(f"classifier-{d}" for d in IMAGE_DATASETS))
TIME_SAMPLERS = ("uniform", "logit-normal")


def is_gm_solver(solver: str) -> bool:
    return solver in GM_SOLVERS


# Solvers that call the network more than once per step: the sampling driver gives them the most steps that fit
# the NFE budget and reports the measured count.
EVALS_PER_STEP = {"heun": 2}


def method_of_solver(solver: str) -> str:
    for method, solvers in SOLVERS_BY_METHOD.items():
        if solver in solvers:
            return method
    raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")


def check_solver(method: str, solver: str) -> None:
    if method not in SOLVERS_BY_METHOD:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if solver not in APPLICABLE_SOLVERS[method]:
        raise ValueError(
            f"solver {solver!r} does not apply to method {method!r}; choose one of {sorted(APPLICABLE_SOLVERS[method])}"
        )


def steps_for_nfe(solver: str, nfe: int) -> int:
    """Number of solver steps whose network evaluations fit in ``nfe`` (Heun: ``2N - 1 <= nfe``)."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    per = EVALS_PER_STEP.get(solver, 1)
    return max(1, (nfe + per - 1) // per) if per == 1 else max(1, (nfe + 1) // per)


SUBSTEP_RULES = {"paper-imagenet": paper_substeps, "ceil128": ceil128_substeps}
DEFAULT_SUBSTEPS = "paper-imagenet"  # the library's default (gmflow.solvers.sample_gm_ode); configs may override


MAX_SUBSTEPS = 4096  # far beyond any useful count (the paper's rule gives at most 128): refuse before allocating


def substeps_for_nfe(nfe: int, rule: str | int = DEFAULT_SUBSTEPS) -> int:
    """GM-ODE sub-steps per outer step: a named rule of :data:`SUBSTEP_RULES` or a fixed integer in
    ``[1, MAX_SUBSTEPS]``."""
    if isinstance(rule, int):
        if not 1 <= rule <= MAX_SUBSTEPS:
            raise ValueError(f"GM-ODE sub-steps must be in [1, {MAX_SUBSTEPS}], got {rule}")
        return rule
    if rule not in SUBSTEP_RULES:
        raise ValueError(f"unknown substep rule {rule!r}; use one of {sorted(SUBSTEP_RULES)} or an integer")
    return SUBSTEP_RULES[rule](nfe)
