"""Paths of the checkout that tests share: the workflow's config schema, and config validation against it."""

from __future__ import annotations

from pathlib import Path

from gmflow.experiments.config import validate_config as _validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def validate_config(config: dict) -> dict:
    return _validate(config, SCHEMA)
