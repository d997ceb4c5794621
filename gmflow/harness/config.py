"""Workflow configuration: validation against the JSON schema with errors that name the key and the value."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml

from gmflow.harness import registry

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value that is wrong, with where it is and what to do."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(schema: dict, obj):
    """Insert schema defaults for missing keys (recursively through objects)."""
    if not isinstance(obj, dict) or schema.get("type") != "object":
        return obj
    for key, sub in schema.get("properties", {}).items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if key in obj:
            _fill_defaults(sub, obj[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in obj:
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, obj[key])
    return obj


def validate_config(config: dict) -> dict:
    """Validate ``config`` (defaults filled in place) and check cross-key rules; raise :class:`ConfigError`."""
    schema = load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "<top level>"
        raise ConfigError(f"config error at '{where}': {e.message} (value seen: {e.instance!r}). "
                          f"See workflow/schemas/config.schema.yaml for allowed values.")
    _fill_defaults(schema, config)
    if "toy" not in config and "images" not in config:
        raise ConfigError("config error at '<top level>': neither 'toy' nor 'images' is configured; nothing to run")
    if "toy" in config:
        _check_toy(config)
    if "images" in config:
        from gmflow.harness.sweeps import check_images_config

        errors = check_images_config(config["images"])
        if errors:
            raise ConfigError(errors[0])
    if "lfm" in config:
        from gmflow.harness.lfm_config import check_lfm_config

        check_lfm_config(config)
    if "lfm_images" in config:
        from gmflow.harness.lfm_config import check_lfm_images_config

        check_lfm_images_config(config)
    return config


def _check_toy(config: dict) -> None:
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
    for run, spec in toy["runs"].items():
        if spec["method"] == "gmflow" and "K" not in spec:
            raise ConfigError(f"config error at 'toy.runs.{run}': a gmflow run needs K (number of components)")
        if spec["method"] == "fm" and "K" in spec:
            raise ConfigError(f"config error at 'toy.runs.{run}.K': K applies to gmflow runs only (value seen: "
                              f"{spec['K']!r}); remove it")
    missing = set(config.get("report", {}).get("histogram_nfe", [])) - set(toy["sample"]["nfe"])
    if missing:
        raise ConfigError(f"config error at 'report.histogram_nfe': {sorted(missing)} not in toy.sample.nfe")
