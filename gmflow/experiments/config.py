"""The workflow's configuration: the JSON schema (``workflow/schemas/config.schema.yaml``, passed in by the
Snakefile), then each configured experiment's own cross-key checks."""

from __future__ import annotations

from pathlib import Path

from gmflow.harness.schema import ConfigError, validate_schema

PATH_KEYS = ("results", "data_root", "image_root", "vae", "latent_cache", "reference_batch", "snapshot", "classifier")


def check_values(node, where: str = "") -> None:
    """Rules of every value, whatever its key: numbers finite (a NaN passes every minimum and maximum of a schema),
    no repeated items in a list (repeated seeds or NFEs would repeat table rows), no empty path."""
    import math

    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{where}.{k}" if where else str(k)
            if k in PATH_KEYS and isinstance(v, str) and not v.strip():
                raise ConfigError(f"config error at '{key}': an empty path (it would resolve to the current folder "
                                  "or the filesystem root); give a folder or leave the key out")
            check_values(v, key)
    elif isinstance(node, list):
        seen = [x for x in node if isinstance(x, (int, float, str, bool))]
        dupes = sorted({repr(x) for x in seen if seen.count(x) > 1})
        if dupes:
            raise ConfigError(f"config error at '{where}': repeated items {', '.join(dupes)} in {node}")
        for i, v in enumerate(node):
            check_values(v, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"config error at '{where}': {node} is not a finite number")


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Validate ``config`` (defaults filled in place) and check cross-key rules; raise :class:`ConfigError`."""
    check_values(config)
    validate_schema(config, schema_path)
    train = config["resources"]["train"]
    if train["gpus"] not in (0, train["processes"]):
        raise ConfigError(
            f"config error at 'resources.train.gpus': {train['gpus']} GPUs for {train['processes']} training "
            "process(es); a data-parallel job runs one process per GPU: set resources.train.processes to the GPU "
            "count (or gpus to 0 for CPU processes)."
        )
    if "toy" not in config and "images" not in config:
        raise ConfigError("config error at '<top level>': neither 'toy' nor 'images' is configured; nothing to run")
    if config["report"]["bandwidth_2d"] and "toy" not in config:
        raise ConfigError("config error at 'report.bandwidth_2d': the bandwidth table compares the 2D runs; add the "
                          "'toy' section or set it to false")
    if "toy" in config:
        from gmflow.experiments.toy2d.config import check_toy_config

        check_toy_config(config)
    if "images" in config:
        from gmflow.experiments.images.sweeps import check_images_config

        errors = check_images_config(config["images"])
        if errors:
            raise ConfigError(errors[0])
    if "lfm" in config:
        from gmflow.experiments.lfm.config import check_lfm_config

        check_lfm_config(config)
    if "lfm_images" in config:
        from gmflow.experiments.lfm.config import check_lfm_images_config

        check_lfm_images_config(config)
    return config
