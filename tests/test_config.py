"""Config validation: the schema's defaults, and errors that name the bad key and value."""

import copy

import pytest
import yaml

from gmflow.harness.config import ConfigError, validate_config


def _load(name):
    with open(f"config/{name}.yaml") as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("name", ["config", "ci"])
def test_shipped_configs_are_valid(name):
    cfg = validate_config(_load(name))
    assert cfg["toy"]["sample"]["substeps"] in ("ceil128", "paper-imagenet") or isinstance(
        cfg["toy"]["sample"]["substeps"], int
    )


def test_defaults_are_filled():
    cfg = _load("ci")
    assert "seeds" not in cfg["toy"]["sample"]
    out = validate_config(cfg)
    assert out["toy"]["sample"]["seeds"] == [0]
    assert out["toy"]["train"]["trans_ratio"] == 0.9


@pytest.mark.parametrize(
    "mutate,key,value",
    [
        (lambda c: c["toy"]["train"].__setitem__("steps", -5), "toy.train.steps", "-5"),
        (lambda c: c["toy"]["train"].__setitem__("trans_ratio", 1.5), "toy.train.trans_ratio", "1.5"),
        (lambda c: c["toy"]["sample"].__setitem__("nfe", [0]), "toy.sample.nfe.0", "0"),
        (lambda c: c["toy"]["runs"].__setitem__("gm-k4", {"method": "gmflw", "K": 4}), "toy.runs.gm-k4.method",
         "gmflw"),
        (lambda c: c["toy"]["train"].__setitem__("stepz", 5), "toy.train", "stepz"),
        (lambda c: c["toy"]["experiments"]["checkerboard"].__setitem__("fm", ["gm-ode"]),
         "toy.experiments.checkerboard.fm", "gm-ode"),
        (lambda c: c["toy"]["experiments"]["checkerboard"].__setitem__("nope", ["euler"]),
         "toy.experiments.checkerboard.nope", "nope"),
        (lambda c: c["toy"]["runs"].__setitem__("fm", {"method": "fm", "K": 3}), "toy.runs.fm.K", "3"),
    ],
)
def test_bad_values_name_key_and_value(mutate, key, value):
    cfg = copy.deepcopy(_load("ci"))
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    msg = str(e.value)
    assert f"'{key}'" in msg and value in msg
