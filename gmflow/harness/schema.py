"""Configuration files: validation against a JSON schema with errors that name the key and the value."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """A configuration value that is wrong, with where it is and what to do."""


def load_schema(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


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


def validate_schema(config: dict, schema_path: str | Path) -> dict:
    """Validate ``config`` against the JSON schema at ``schema_path`` and fill in its defaults (in place).

    Raises :class:`ConfigError` naming the first wrong key, the value seen and where the allowed values are.
    """
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "<top level>"
        raise ConfigError(f"config error at '{where}': {e.message} (value seen: {e.instance!r}). "
                          f"See {schema_path} for allowed values.")
    _fill_defaults(schema, config)
    return config
