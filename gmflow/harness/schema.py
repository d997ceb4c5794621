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


def _condition(schema: dict, schema_path) -> dict:
    """The ``const`` values of the ``if`` beside the ``then`` at ``schema_path`` (what made a key required)."""
    path = list(schema_path)
    node = schema
    for p in path[: path.index("then")]:
        node = node[p]
    return {k: v.get("const") for k, v in node.get("if", {}).get("properties", {}).items()}


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
        seen = "" if e.validator == "required" else f" (value seen: {e.instance!r})"  # not a whole section
        if e.validator == "required" and "then" in e.schema_path:  # a key that one setting makes necessary
            seen = f" when {', '.join(f'{k} = {v!r}' for k, v in _condition(schema, e.schema_path).items())}"
        raise ConfigError(f"config error at '{where}': {e.message}{seen}. See {schema_path} for allowed values.")
    _fill_defaults(schema, config)
    return config
