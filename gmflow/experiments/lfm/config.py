"""Cross-key checks of the ``lfm`` config section (the schema checks each key alone; docs/method.md, Sec. 7).

Called by :func:`gmflow.harness.config.validate_config` after the schema defaults are filled in.
"""

from __future__ import annotations

from gmflow.harness.schema import ConfigError

POOL_STREAM = 9000
"""``pool_0`` is ``prepare-data --seed POOL_STREAM + lfm.train.seed``; reference samples use ``--seed s`` and the
exact noise-floor samples ``--seed s + 5000`` (workflow/rules/data.smk), so these seeds must not meet."""


def sample_settings(lfm: dict) -> list[tuple[str, str]]:
    """Every ``(solver, setting)`` of the LFM sample sets: ``("euler", "nfe2")``, ``("dopri5", "tol0.001")``,
    ``("distilled", "nfe1")``; ``nfe`` is per block. The setting is the file name part after the solver."""
    s = lfm["sample"]
    out = [(solver, f"nfe{k}") for solver in ("euler", "heun") for k in s[solver]]
    out += [("dopri5", f"tol{tol:g}") for tol in s["dopri5_tol"]]
    if lfm["distill"]["steps"] > 0:
        out.append(("distilled", "nfe1"))
    return out


MAIN_CHAIN_2D = "lfm"
"""The 2D chain trained with ``lfm.train`` as given (folder ``{results}/2d/{dataset}/lfm``, tables/lfm_2d.csv); the
chains of ``lfm.chains`` (``lfm-{name}``) override some of its settings, each in its own folder."""


def chains_2d(lfm: dict) -> list[str]:
    """The 2D chains: the main chain, then those of ``lfm.chains``."""
    return [MAIN_CHAIN_2D, *lfm.get("chains", {})]


def chain_train(lfm: dict, chain: str) -> dict:
    """The training settings of a 2D chain: ``lfm.train`` with the chain's overrides (``lfm.chains.{chain}``)."""
    if chain not in chains_2d(lfm):
        raise ValueError(f"{chain!r} is not a 2D LFM chain of the config (chains: {chains_2d(lfm)})")
    return {**lfm["train"], **lfm.get("chains", {}).get(chain, {})}


def check_lfm_config(config: dict) -> None:
    """Raise :class:`ConfigError` if the ``lfm`` section cannot run as configured."""
    lfm = config["lfm"]
    if "toy" not in config:
        raise ConfigError("config error at 'lfm': the LFM baseline needs the 'toy' section (its exact reference "
                          "samples and the 2D table it is compared with); add 'toy' or remove 'lfm'")
    toy = config["toy"]
    if lfm["nll"]["num_points"] > toy["reference_samples"]:
        raise ConfigError(f"config error at 'lfm.nll.num_points': {lfm['nll']['num_points']} held-out points but the "
                          f"reference sample has toy.reference_samples = {toy['reference_samples']}; lower it")
    if not sample_settings(lfm):
        raise ConfigError("config error at 'lfm.sample': no sampler configured (euler, heun and dopri5_tol are empty "
                          "and lfm.distill.steps is 0); give at least one")
    if config.get("report", {}).get("bandwidth_2d"):
        totals = sorted({lfm["num_blocks"] * k for solver in ("euler", "heun") for k in lfm["sample"][solver]})
        if not set(totals) & set(toy["sample"]["nfe"]):
            raise ConfigError(f"config error at 'lfm.sample': report.bandwidth_2d compares TV at toy.sample.nfe = "
                              f"{toy['sample']['nfe']}, but the LFM chains are sampled at {totals} NFE (num_blocks "
                              "x the euler / heun settings per block); make at least one of them equal")
    for chain in chains_2d(lfm):
        pool_seed = POOL_STREAM + chain_train(lfm, chain)["seed"]
        for where, seeds in (("toy.sample.seeds", toy["sample"]["seeds"]),
                             ("lfm.sample.seeds", lfm["sample"]["seeds"])):
            clash = sorted(s for s in seeds if pool_seed in (s, s + 5000))
            if clash:
                raise ConfigError(f"config error at '{where}': seeds {clash} draw the same data stream as the "
                                  f"training pool of LFM chain {chain!r} (prepare-data --seed {pool_seed}); use other "
                                  "seeds")


# ---------------------------------------------------------------------------------------------------------------------
# lfm_images: LFM on the image dataset of the images section, beside flow matching and GMFlow
# ---------------------------------------------------------------------------------------------------------------------

CHAIN = "lfm"
"""The image chain trained with the image runs' budget (``images.train.steps`` in total); ``lfm-at{k}`` chains have
``k`` steps in total (``lfm_images.budgets``), as snapshot runs ``{run}-at{k}`` of the flow-matching and GMFlow runs."""
CHAIN_PATTERN = r"lfm(-at\d+)?"


def chain_name(total_steps: int, images: dict) -> str:
    return CHAIN if total_steps == images["train"]["steps"] else f"{CHAIN}-at{total_steps}"


def chain_total_steps(chain: str, images: dict) -> int:
    return images["train"]["steps"] if chain == CHAIN else int(chain.removeprefix(f"{CHAIN}-at"))


def distill_groups(num_blocks: int, num_students: int) -> list[tuple[int, int]]:
    """Blocks ``(first, last)`` of each student of a ``num_students``-NFE distilled chain, block 1 first.

    ``num_students = num_blocks``: one student per block. Fewer: the free block ``N`` keeps its own student (it does
    most of the transport, docs/method.md, Sec. 7.7) and the OU blocks ``1..N-1`` are split into ``num_students - 1``
    runs of consecutive blocks as even as possible (earlier runs one longer); one student takes all blocks.
    """
    if not 1 <= num_students <= num_blocks:
        raise ValueError(f"a distilled chain of {num_blocks} blocks has 1..{num_blocks} students, got {num_students}")
    if num_students == 1:
        return [(1, num_blocks)]
    ou, k = num_blocks - 1, num_students - 1
    sizes = [ou // k + (1 if i < ou % k else 0) for i in range(k)]
    groups, first = [], 1
    for size in sizes:
        groups.append((first, first + size - 1))
        first += size
    return [*groups, (num_blocks, num_blocks)]


def student_folder(first: int, last: int) -> str:
    return f"student_{first}" if first == last else f"student_{first}-{last}"


def image_sample_tag(solver: str, nfe: int, seed: int, tol: float | None = None) -> str:
    """A sample-set name in the image sweeps' form (``sweeps.TAG_PATTERN``) so that evaluate-images serves LFM too:
    ``euler_nfe8_gnone0_o0_n1_sp0_seed0``; ``nfe`` is the total budget (0 for dopri5, whose tolerance is in the
    solver part: ``dopri5-tol1e-02``)."""
    name = solver if tol is None else f"{solver}-tol{tol:.3e}".replace(".", "p")
    return f"{name}_nfe{nfe}_gnone0_o0_n1_sp0_seed{seed}"


def image_sample_sets(lfm: dict, images: dict) -> list[dict]:
    """Every LFM image sample set: ``chain``, ``tag``, ``solver`` (euler, heun, dopri5, distilled) and its options
    (``nfe_per_block``, ``tol``, ``num_students``)."""
    N, s = lfm["num_blocks"], lfm["sample"]
    out = []
    for seed in images.get("sample", {}).get("seeds", [0]):
        for solver in ("euler", "heun"):
            out += [{"chain": CHAIN, "solver": solver, "nfe_per_block": k, "tag": image_sample_tag(solver, k * N, seed),
                     "seed": seed} for k in s[solver]]
        out += [{"chain": CHAIN, "solver": "dopri5", "tol": tol, "tag": image_sample_tag("dopri5", 0, seed, tol),
                 "seed": seed} for tol in s["dopri5_tol"]]
        if lfm["distill"]["steps"] > 0:
            out += [{"chain": CHAIN, "solver": "distilled", "num_students": g,
                     "tag": image_sample_tag("distilled", g, seed), "seed": seed} for g in s["distilled"]]
        b = lfm["budget_sample"]
        for k in lfm["budgets"]:
            out.append({"chain": f"{CHAIN}-at{k}", "solver": b["solver"], "nfe_per_block": b["nfe_per_block"],
                        "tag": image_sample_tag(b["solver"], b["nfe_per_block"] * N, seed), "seed": seed})
    return out


def check_lfm_images_config(config: dict) -> None:
    """Raise :class:`ConfigError` if the ``lfm_images`` section cannot run as configured."""
    if "images" not in config:
        raise ConfigError("config error at 'lfm_images': LFM on images needs the 'images' section (its dataset, "
                          "network, training recipe and feature extractors); add 'images' or remove 'lfm_images'")
    lfm, images = config["lfm_images"], config["images"]
    N, steps = lfm["num_blocks"], images["train"]["steps"]
    for where, total in [("images.train.steps", steps), *((f"lfm_images.budgets ({k})", k) for k in lfm["budgets"])]:
        if total % N:
            raise ConfigError(f"config error at '{where}': {total} training steps do not split evenly over "
                              f"lfm_images.num_blocks = {N} blocks; choose a multiple of {N}")
    if any(k >= steps for k in lfm["budgets"]):
        raise ConfigError(f"config error at 'lfm_images.budgets': {lfm['budgets']} must all be below the main "
                          f"chain's budget images.train.steps = {steps}")
    bad = [g for g in lfm["sample"]["distilled"] if not 1 <= g <= N]
    if bad:
        raise ConfigError(f"config error at 'lfm_images.sample.distilled': {bad} students; a chain of {N} blocks "
                          f"has 1..{N}")
    for where, p in (("lfm_images.push", lfm["push"]), ("lfm_images.distill.push", lfm["distill"]["push"])):
        if p["solver"] != "dopri5" and p["nfe"] is None:
            raise ConfigError(f"config error at '{where}.nfe': solver {p['solver']} needs a number of evaluations")
        if p["solver"] == "dopri5" and p["nfe"] is not None:
            raise ConfigError(f"config error at '{where}.nfe': dopri5 adapts its steps; set nfe to null")
        if p["solver"] == "heun" and p["nfe"] % 2:
            raise ConfigError(f"config error at '{where}.nfe': heun takes 2 evaluations per step, got {p['nfe']}")
    if lfm["budget_sample"]["solver"] == "heun" and lfm["budget_sample"]["nfe_per_block"] % 2:
        raise ConfigError("config error at 'lfm_images.budget_sample.nfe_per_block': heun needs an even number")
    sweeps = set(images["sweeps"])
    missing = [name for name in lfm["compare_sweeps"] if name not in sweeps]
    if missing:
        raise ConfigError(f"config error at 'lfm_images.compare_sweeps': {missing} are not sweeps of images.sweeps "
                          f"(defined: {sorted(sweeps)})")
