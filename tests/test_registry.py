"""One set of string keys: registry, config schema enums, CLI choices and Snakemake wildcards agree."""

import yaml

from gmflow.harness import registry
from gmflow.harness.cli import build_parser
from gmflow.harness.config import load_schema


def _choices(sub, dest):
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions[0].choices[sub]._actions if a.dest == dest)
    return set(action.choices)


def test_schema_enums_match_registry():
    toy = load_schema()["properties"]["toy"]["properties"]
    solvers = toy["experiments"]["additionalProperties"]["additionalProperties"]["items"]["enum"]
    assert set(solvers) == set(registry.SOLVERS)
    assert set(toy["experiments"]["propertyNames"]["enum"]) == set(registry.DATASETS_2D)
    method = toy["runs"]["additionalProperties"]["properties"]["method"]["enum"]
    assert set(method) == set(registry.METHODS)
    assert set(toy["train"]["properties"]["network"]["enum"]) == set(registry.NETWORKS_2D)
    assert set(toy["train"]["properties"]["time_sampler"]["enum"]) == set(registry.TIME_SAMPLERS)


def test_image_schema_enums_match_registry():
    img = load_schema()["properties"]["images"]["properties"]
    assert set(img["dataset"]["enum"]) == set(registry.IMAGE_DATASETS)
    assert set(img["train"]["properties"]["network"]["enum"]) == set(registry.IMAGE_NETWORKS)
    sweep = img["sweeps"]["additionalProperties"]["properties"]
    assert set(sweep["runs"]["additionalProperties"]["items"]["enum"]) == set(registry.SOLVERS)
    assert set(img["runs"]["additionalProperties"]["properties"]["method"]["enum"]) == set(registry.METHODS)
    modes = set(sweep["guidance"]["properties"]["gmflow"]["properties"]) | set(
        sweep["guidance"]["properties"]["fm"]["properties"])
    assert modes == set(registry.GUIDANCE)


def test_cli_choices_match_registry():
    assert _choices("sample", "solver") == set(registry.SOLVERS)
    assert _choices("train", "method") == set(registry.METHODS)
    assert _choices("train", "dataset") == set(registry.DATASETS)
    assert _choices("train", "network") == set(registry.NETWORKS)
    assert _choices("sample", "guidance") == set(registry.GUIDANCE)
    assert _choices("evaluate-images", "extractor") == set(registry.FEATURE_EXTRACTORS) - {"coords"}


def test_every_solver_belongs_to_one_method():
    for solver in registry.SOLVERS:
        assert registry.method_of_solver(solver) in registry.METHODS
    assert set(registry.SOLVERS_BY_METHOD["gmflow"]).isdisjoint(registry.SOLVERS_BY_METHOD["fm"])


def test_shipped_config_uses_registry_keys():
    cfg = yaml.safe_load(open("config/config.yaml"))
    for runs in cfg["toy"]["experiments"].values():
        for solvers in runs.values():
            assert set(solvers) <= set(registry.SOLVERS)
