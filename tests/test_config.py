"""Config validation: the schema's defaults, and errors that name the bad key and value."""

import copy

import pytest
import yaml
from project import SCHEMA, assert_refused, validate_config

from gmflow.harness.schema import ConfigError


def _load(name):
    with open(f"config/{name}.yaml") as f:
        return yaml.safe_load(f)


def _assert_contains(full, given, path="config"):
    """Every value written in the file survives validation unchanged (validation only adds defaults)."""
    if isinstance(given, dict):
        assert isinstance(full, dict), path
        for key, value in given.items():
            assert key in full, f"{path}.{key} was dropped"
            _assert_contains(full[key], value, f"{path}.{key}")
    else:
        assert full == given, f"{path}: {given!r} became {full!r}"


@pytest.mark.parametrize("name", ["config", "ci", "paper"])
def test_shipped_configs_are_valid(name):
    """Truth: the YAML files themselves (validation must keep every value they set and only fill defaults) and, for
    the full-scale configs, the training recipe of the authors' released configs: toy lambda = 0.9 with uniform t,
    images lambda = 0.5 with logit-normal t and loss scale 2."""
    raw = _load(name)
    cfg = validate_config(copy.deepcopy(raw))
    _assert_contains(cfg, raw)
    assert cfg["toy"]["sample"]["substeps"] in ("ceil128", "paper-imagenet") or isinstance(
        cfg["toy"]["sample"]["substeps"], int
    )
    if name != "ci":
        toy, img = cfg["toy"]["train"], cfg["images"]["train"]
        assert (toy["trans_ratio"], toy["time_sampler"]) == (0.9, "uniform")
        assert (img["trans_ratio"], img["time_sampler"], img["weight_scale"]) == (0.5, "logit-normal", 2.0)


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
        (lambda c: c["images"]["train"].__setitem__("network", "dit-huge"), "images.train.network", "dit-huge"),
        (lambda c: c["images"]["sweeps"]["nfe"]["runs"].__setitem__("fm", ["gm-ode-2"]), "images.sweeps.nfe.runs.fm",
         "gm-ode-2"),
        (lambda c: c["images"]["sweeps"]["nfe"]["runs"].__setitem__("gm-k99", ["gm-ode-2"]),
         "images.sweeps.nfe.runs.gm-k99", "gm-k99"),
        (lambda c: c["images"]["sweeps"]["guidance"]["guidance"]["gmflow"].__setitem__("probabilistic", [1.2]),
         "images.sweeps.guidance.guidance.gmflow.probabilistic.0", "1.2"),
        (lambda c: c["images"]["sweeps"]["guidance"]["guidance"]["fm"].__setitem__("probabilistic", [0.3]),
         "images.sweeps.guidance.guidance.fm", "probabilistic"),
        (lambda c: c["images"]["runs"].__setitem__("gm-k2", {"method": "gmflow"}), "images.runs.gm-k2", "K"),
    ],
)
def test_bad_values_name_key_and_value(mutate, key, value):
    assert_refused(_load("ci"), mutate, key, value)


def test_images_only_config_is_valid_and_empty_config_is_not():
    cfg = _load("ci")
    del cfg["toy"], cfg["lfm"]  # the LFM baseline is part of the 2D experiment
    assert "toy" not in validate_config(cfg)
    with pytest.raises(ConfigError, match="nothing to run"):
        validate_config({"results": "r"})


def test_schema_bounds_equal_the_training_ranges():
    """One source of truth: every bound the schema states for a training setting is gmflow.harness.ranges'."""

    from gmflow.harness.ranges import RANGES

    schema = yaml.safe_load(open(SCHEMA))
    keys = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    found = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        name = path[-1] if path else ""
        if name in RANGES and "classifier" not in path and any(k in node for k in keys):
            assert {k: node[k] for k in keys if k in node} == RANGES[name].schema(), ".".join(path)
            found.append(".".join(path))
        for k, v in node.items():
            walk(v, path if k in ("properties", "additionalProperties") else [*path, str(k)])

    walk(schema, [])
    assert len(found) >= 15, found


def test_seeds_config_is_valid_and_has_the_default_image_recipe():
    """config/seeds.yaml (two training seeds of the headline pair) trains, samples and measures exactly as the default
    configuration does, so its spread is the spread of the default's numbers: the recipe (dataset, classifier,
    reference, training, sampling, NLL) and each run's method and K equal config/config.yaml's, with defaults filled.
    When the default recipe changes, change config/seeds.yaml with it."""
    raw = _load("seeds")
    cfg = validate_config(copy.deepcopy(raw))
    _assert_contains(cfg, raw)
    seeds, default = cfg["images"], validate_config(_load("config"))["images"]
    for key in ("dataset", "data_root", "classifier", "reference", "train", "sample", "nll"):
        assert seeds[key] == default[key], f"images.{key} of config/seeds.yaml differs from config/config.yaml's"
    for run, twin in (("fm", "fm-seed1"), ("gm-k8", "gm-k8-seed1")):
        recipe = {k: default["runs"][run].get(k) for k in ("method", "K", "trans_ratio")}
        assert {k: seeds["runs"][run].get(k) for k in recipe} == recipe, run
        assert {k: seeds["runs"][twin].get(k) for k in recipe} == recipe, twin
        assert seeds["runs"][run].get("seed", seeds["train"]["seed"]) == 0 and seeds["runs"][twin]["seed"] == 1


def test_run_seed_is_ranged_like_the_train_seed():
    schema = yaml.safe_load(open(SCHEMA))
    for part in ("toy", "images"):
        props = schema["properties"][part]["properties"]
        train, run = props["train"]["properties"]["seed"], props["runs"]["additionalProperties"]["properties"]["seed"]
        assert {k: run[k] for k in ("type", "minimum", "maximum")} == {k: train[k] for k in ("type", "minimum",
                                                                                           "maximum")}, part
        assert "default" not in run  # absent: the run trains with train.seed


@pytest.mark.parametrize("seed,key,value", [(10000, "images.runs.fm.seed", "10000"), (-1, "images.runs.fm.seed", "-1"),
                                            (1.5, "images.runs.fm.seed", "1.5")])
def test_bad_run_seed_names_key_and_value(seed, key, value):
    assert_refused(_load("ci"), lambda c: c["images"]["runs"]["fm"].__setitem__("seed", seed), key, value)


def test_fairness_config_has_the_default_image_recipe():
    """config/fairness.yaml writes into the default results folder and claims the default's paths and contents for the
    points it shares: its image recipe must be the default's."""
    fair, default = (validate_config(_load(n))["images"] for n in ("fairness", "config"))
    for key in ("dataset", "data_root", "classifier", "reference", "train", "sample", "nll"):
        assert fair[key] == default[key], f"images.{key} of config/fairness.yaml differs from config/config.yaml's"
    for run in ("fm", "gm-k8"):
        assert fair["runs"][run] == default["runs"][run], run
