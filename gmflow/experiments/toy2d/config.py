"""Cross-key checks of the ``toy`` config section (the schema checks each key alone)."""

from __future__ import annotations

from gmflow.harness import registry
from gmflow.harness.schema import ConfigError


def check_toy_config(config: dict) -> None:
    """Cross-key rules of the ``toy`` section that the schema cannot state."""
    toy = config["toy"]
    for dataset, runs in toy["experiments"].items():
        for run, solvers in runs.items():
            if run not in toy["runs"]:
                raise ConfigError(f"config error at 'toy.experiments.{dataset}.{run}': run {run!r} is not defined "
                                  f"in toy.runs (defined: {sorted(toy['runs'])})")
            method = toy["runs"][run]["method"]
            for solver in solvers:
                if solver not in registry.APPLICABLE_SOLVERS[method]:
                    raise ConfigError(
                        f"config error at 'toy.experiments.{dataset}.{run}': solver {solver!r} does not apply to "
                        f"method {method!r}; choose from {sorted(registry.APPLICABLE_SOLVERS[method])}")
    chains = {"lfm", *config.get("lfm", {}).get("chains", {})}
    for run, spec in toy["runs"].items():
        if run in chains:
            raise ConfigError(f"config error at 'toy.runs.{run}': the name {run!r} is a Local Flow Matching chain's "
                              f"folder (results/2d/{{dataset}}/{run}; chains: 'lfm' and lfm.chains); rename the run")
        if spec["method"] == "gmflow" and "K" not in spec:
            raise ConfigError(f"config error at 'toy.runs.{run}': a gmflow run needs K (number of components)")
        if spec["method"] == "fm" and "K" in spec:
            raise ConfigError(f"config error at 'toy.runs.{run}.K': K applies to gmflow runs only (value seen: "
                              f"{spec['K']!r}); remove it")
    missing = set(config.get("report", {}).get("histogram_nfe", [])) - set(toy["sample"]["nfe"])
    if missing:
        raise ConfigError(f"config error at 'report.histogram_nfe': {sorted(missing)} not in toy.sample.nfe")
