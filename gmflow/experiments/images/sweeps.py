"""Sweep points of the image experiment: the product of each configured sweep, normalised and de-duplicated.

A point is one sample set: ``(run, solver, nfe, guidance, scale, orthogonal, substeps, spectral, seed)``. Options that
do not apply to a solver are normalised away (sub-steps only for GM-ODE, spectral sampling only for GM-SDE of a run
with a SpectrumMLP, orthogonal projection only for guided points), so two sweeps that ask for the same sample set share
one file. The file name is a pure function of the point (:func:`point_tag`, parsed back by :data:`TAG_PATTERN`).

Runs are read here too: a run's training settings (:func:`run_setting`: its own ``trans_ratio`` or ``seed`` over the
section's ``train``) and its seed twins (:func:`seed_twins`), for the image and the 2D sections alike.
"""

from __future__ import annotations

import re
from itertools import product

from gmflow.harness import registry

EXTRACTOR_ALIASES = ("classifier", "inception-tf")

TAG_PATTERN = (r"(?P<solver>[a-z0-9+-]+?)_nfe(?P<nfe>\d+)_g(?P<guidance>none|cfg|probabilistic)(?P<scale>[0-9.]+)"
               r"_o(?P<orthogonal>[0-9.]+)_n(?P<substeps>\d+|ceil128|paper-imagenet)_sp(?P<spectral>[01])"
               r"_seed(?P<seed>\d+)")


def fmt(x: float) -> str:
    """Numbers in file names: ``2.0 -> "2"``, ``0.30 -> "0.3"``."""
    return f"{float(x):g}"


def point_tag(p: dict) -> str:
    return (f"{p['solver']}_nfe{p['nfe']}_g{p['guidance']}{fmt(p['scale'])}_o{fmt(p['orthogonal'])}"
            f"_n{p['substeps']}_sp{p['spectral']}_seed{p['seed']}")


def parse_tag(tag: str) -> dict:
    m = re.fullmatch(TAG_PATTERN, tag)
    if m is None:
        raise ValueError(f"not a sample-set name: {tag!r}")
    d = m.groupdict()
    return {"solver": d["solver"], "nfe": int(d["nfe"]), "guidance": d["guidance"], "scale": float(d["scale"]),
            "orthogonal": float(d["orthogonal"]), "substeps": d["substeps"], "spectral": int(d["spectral"]),
            "seed": int(d["seed"])}


SNAPSHOT_PATTERN = r"(?P<base>[A-Za-z0-9][A-Za-z0-9-]*?)-at(?P<step>\d+)"
"""A snapshot run ``{run}-at{k}``: run ``run``'s EMA weights at training step ``k`` (images.train.snapshot_steps)."""


def snapshot_run(run: str, step: int) -> str:
    return f"{run}-at{step}"


def parse_snapshot_run(run: str) -> tuple[str, int] | None:
    """``("fm", 300)`` for ``"fm-at300"``; None for a run that is not a snapshot."""
    m = re.fullmatch(SNAPSHOT_PATTERN, run)
    return None if m is None else (m["base"], int(m["step"]))


def extractor_key(alias: str, dataset: str) -> str:
    """Config alias -> feature-extractor registry key ('classifier' -> 'classifier-<dataset>')."""
    return f"classifier-{dataset}" if alias == "classifier" else alias


def image_points(images: dict) -> list[dict]:
    """Every sample set of the configured sweeps: dicts with the point's fields, ``run``, ``tag``, ``extractors``
    (registry keys) and ``sweeps`` (names), in a stable order."""
    runs, train = images["runs"], images["train"]
    seeds = images.get("sample", {}).get("seeds", [0])
    points: dict[tuple, dict] = {}
    for name, sw in images["sweeps"].items():
        extractors = [extractor_key(e, images["dataset"]) for e in sw.get("extractors", ["classifier"])]
        for (base, solvers), snap in product(sw["runs"].items(), [None, *sw.get("snapshots", [])]):
            run = base if snap is None else snapshot_run(base, snap)
            method = runs[base]["method"]
            guid = sw.get("guidance", {}).get(method, {}) or {"none": [0]}
            has_spectrum = method == "gmflow" and train.get("spectral", True)
            for solver, nfe, (mode, scales), seed in product(solvers, sw["nfe"], guid.items(), seeds):
                for scale, orth, sub, spec in product(scales, sw.get("orthogonal", [1.0]),
                                                      sw.get("substeps", ["paper-imagenet"]), sw.get("spectral", [1])):
                    p = {"run": run, "solver": solver, "nfe": nfe, "guidance": mode,
                         "scale": 0.0 if mode == "none" else float(scale),
                         "orthogonal": 0.0 if mode == "none" else float(orth),
                         "substeps": sub if solver in registry.GM_ODE_SOLVERS else 1,
                         "spectral": int(spec) if (solver in registry.GM_SDE_SOLVERS and has_spectrum) else 0,
                         "seed": seed}
                    p["tag"] = point_tag(p)
                    key = (run, p["tag"])
                    q = points.setdefault(key, {**p, "extractors": [], "sweeps": []})
                    q["extractors"] += [e for e in extractors if e not in q["extractors"]]
                    if name not in q["sweeps"]:
                        q["sweeps"].append(name)
    return list(points.values())


RUN_OVERRIDES = ("trans_ratio", "seed")
"""Training settings a run may set for itself (``runs.<run>.<key>``), over its section's ``train.<key>``."""


def run_setting(section: dict, run: str, key: str):
    """The training setting ``key`` of ``run`` in an experiment section (``images`` or ``toy``): the run's own value,
    else the section's ``train`` value."""
    return section["runs"][run].get(key, section["train"][key])


def seed_twins(section: dict) -> list[tuple[str, str]]:
    """Pairs ``(run_0, run_1)`` of trained runs identical in every setting but the training seed (``runs.<run>.seed``
    over ``train.seed``), ``run_0`` of the smaller seed, in the order of ``section["runs"]``.

    Settings are compared as the trainer sees them (a run's override equal to the ``train`` value is no difference);
    a group of three or more seeds gives one pair per further seed, each against the smallest. Runs imported from a
    published snapshot are never twins (they were not trained here). Runs sharing their seed too are one model twice,
    not twins: the first name stands for it.
    """
    groups: dict[tuple, dict[int, str]] = {}
    for run, spec in section["runs"].items():
        if "official" in spec:
            continue
        rest = {**spec, **{k: run_setting(section, run, k) for k in RUN_OVERRIDES}}
        seed = rest.pop("seed")
        groups.setdefault(tuple(sorted(rest.items())), {}).setdefault(seed, run)
    pairs = []
    for by_seed in groups.values():
        seeds = sorted(by_seed)
        pairs += [(by_seed[seeds[0]], by_seed[s]) for s in seeds[1:]]
    return pairs


def check_images_config(images: dict) -> list[str]:
    """Cross-key rules the schema cannot state; returns error messages (empty when the config is consistent)."""
    errors = []
    runs = images["runs"]
    if images["dataset"] in registry.USER_SUPPLIED_DATASETS and not images.get("data_root"):
        errors.append(f"config error at 'images.data_root': dataset {images['dataset']!r} is supplied by the user "
                      f"and has no standard place; set images.data_root to its folder (docs/{images['dataset']}.md), "
                      f"e.g. --config images='{{data_root: /data/cifar10}}'")
    for run, spec in runs.items():
        if "official" in spec and (spec["method"], spec.get("K"), images["dataset"]) != ("gmflow", 8, "imagenet256"):
            errors.append(f"config error at 'images.runs.{run}.official': the published snapshot is a GMFlow K = 8 "
                          f"model of imagenet256 (seen: method {spec['method']!r}, K {spec.get('K')!r}, dataset "
                          f"{images['dataset']!r}); set method: gmflow, K: 8")
        if "official" in spec and "seed" in spec:
            errors.append(f"config error at 'images.runs.{run}.seed': a run imported from a published snapshot is "
                          f"not trained here, so it has no training seed (value seen: {spec['seed']!r}); remove it")
        if spec["method"] == "gmflow" and "K" not in spec:
            errors.append(f"config error at 'images.runs.{run}': a gmflow run needs K (number of components)")
        if spec["method"] == "fm" and "K" in spec:
            errors.append(f"config error at 'images.runs.{run}.K': K applies to gmflow runs only (value seen: "
                          f"{spec['K']!r}); remove it")
    from gmflow.harness.datasets import dataset_info
    from gmflow.harness.dit import DIT_VARIANTS

    if images["dataset"] == "digits" and images.get("data_root"):
        errors.append(f"config error at 'images.data_root': digits ship inside scikit-learn and take no data root "
                      f"(value seen: {images['data_root']!r}); remove the key")
    network, info = images["train"].get("network"), dataset_info(images["dataset"])
    if network is not None and network not in info.networks:
        errors.append(f"config error at 'images.train.network': {network!r} does not take {images['dataset']} "
                      f"images; choose one of {list(info.networks)}")
    elif network in DIT_VARIANTS:  # the network's input must be the dataset's sample (caught here, not in a job)
        cfg = DIT_VARIANTS[network]
        size = cfg.input_size if isinstance(cfg.input_size, int) else tuple(cfg.input_size)
        takes = (cfg.in_channels, *((size, size) if isinstance(size, int) else size))
        shape = tuple(info.sample_shape)
        if images["dataset"] in registry.LATENT_DATASETS:  # SD-VAE latents: 4 channels at 1/8 of the crop size
            res = images.get("latents", {}).get("resolution", 8 * shape[-1]) // 8
            shape = (shape[0], res, res)
        if takes != shape:
            fits = [n for n, c in DIT_VARIANTS.items() if (c.in_channels, c.input_size, c.input_size) == shape]
            errors.append(f"config error at 'images.train.network': {network!r} takes {takes} inputs (C, H, W) but "
                          f"{images['dataset']} samples are {shape}; choose one of {fits}")
    snapshot_steps = images["train"].get("snapshot_steps", [])
    for k in snapshot_steps:
        if k >= images["train"]["steps"]:
            errors.append(f"config error at 'images.train.snapshot_steps': step {k} is not below images.train.steps "
                          f"= {images['train']['steps']} (the last step is the run itself)")
    for name, sw in images["sweeps"].items():
        if images["dataset"] in registry.LATENT_DATASETS and "classifier" in sw.get("extractors", ["classifier"]):
            errors.append(f"config error at 'images.sweeps.{name}.extractors': {images['dataset']} has no in-domain "
                          "classifier (value seen: "
                          f"{sw.get('extractors', ['classifier (the default)'])}); set extractors: [inception-tf]")
        missing = sorted(set(sw.get("snapshots", [])) - set(snapshot_steps))
        if missing:
            errors.append(f"config error at 'images.sweeps.{name}.snapshots': steps {missing} are not in "
                          f"images.train.snapshot_steps = {snapshot_steps}; add them there (the runs keep only "
                          "those snapshots)")
        for run, solvers in sw["runs"].items():
            where = f"images.sweeps.{name}.runs.{run}"
            if run not in runs:
                errors.append(f"config error at '{where}': run {run!r} is not defined in images.runs "
                              f"(defined: {sorted(runs)})")
                continue
            method = runs[run]["method"]
            for solver in solvers:
                if solver not in registry.APPLICABLE_SOLVERS[method]:
                    errors.append(f"config error at '{where}': solver {solver!r} does not apply to method "
                                  f"{method!r}; choose from {sorted(registry.APPLICABLE_SOLVERS[method])}")
    return errors
