"""Paths of the checkout that tests share: the workflow's config schema, and config validation against it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gmflow.experiments.config import validate_config as _validate
from gmflow.harness.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def validate_config(config: dict) -> dict:
    return _validate(config, SCHEMA)


def assert_refused(config: dict, mutate, key: str, value: str = "") -> None:
    """A copy of ``config`` changed by ``mutate`` fails validation with a message that names ``'key'`` and ``value``."""
    cfg = copy.deepcopy(config)
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert f"'{key}'" in str(e.value) and value in str(e.value), str(e.value)
