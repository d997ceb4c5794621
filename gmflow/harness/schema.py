"""Configuration files: validation against a JSON schema with errors that name the key and the value."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """A configuration value that is wrong, with where it is and what to do."""


def load_config_file(path: str | Path) -> dict:
    """A YAML configuration file; a syntax error names the file, the line and the column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "an unknown place"
        raise ConfigError(f"{path}: YAML syntax error at {where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a configuration is a mapping of keys, got {type(config).__name__}")
    return config


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


def _types(schema: dict) -> set[str]:
    t = schema.get("type", [])
    return {t} if isinstance(t, str) else set(t)


def _coerce_strings(schema: dict, obj):
    """Turn strings into the numbers or booleans the schema expects (in place where possible).

    ``snakemake --config 'images={"train": {"steps": 30}}'`` hands nested values over as strings ('30'); a string
    where the schema wants an integer, a number or a boolean is read as YAML and kept if it gives that type.
    """
    if isinstance(obj, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key in list(obj):
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                obj[key] = _coerce_strings(sub, obj[key])
        return obj
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [_coerce_strings(schema["items"], v) for v in obj]
    wanted = _types(schema)
    if isinstance(obj, str) and "string" not in wanted and wanted & {"integer", "number", "boolean"}:
        try:
            value = yaml.safe_load(obj)
        except yaml.YAMLError:
            return obj
        if isinstance(value, str) and "number" in wanted:  # YAML 1.1 reads '3e-4' as a string
            try:
                value = float(value)
            except ValueError:
                return obj
        ok = {"integer": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool),
              "boolean": isinstance(value, bool)}
        if any(ok[t] for t in wanted & set(ok)):
            return value
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

    Strings from command-line overrides are first read as the numbers or booleans the schema expects. Raises
    :class:`ConfigError` naming the first wrong key, the value seen and where the allowed values are.
    """
    schema = load_schema(schema_path)
    _coerce_strings(schema, config)
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
