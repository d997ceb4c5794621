"""Cross-key checks of the ``lfm`` config section (the schema checks each key alone; SPEC Part B).

Called by :func:`gmflow.harness.config.validate_config` after the schema defaults are filled in.
"""

from __future__ import annotations

from gmflow.harness.config import ConfigError

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
    pool_seed = POOL_STREAM + lfm["train"]["seed"]
    for where, seeds in (("toy.sample.seeds", toy["sample"]["seeds"]), ("lfm.sample.seeds", lfm["sample"]["seeds"])):
        clash = sorted(s for s in seeds if pool_seed in (s, s + 5000))
        if clash:
            raise ConfigError(f"config error at '{where}': seeds {clash} draw the same data stream as the LFM "
                              f"training pool (prepare-data --seed {pool_seed}); use other seeds")
