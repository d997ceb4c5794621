"""One set of string keys: registry, config schema enums, CLI choices and Snakemake wildcards agree."""

import yaml
from project import SCHEMA

from gmflow.experiments.cli import build_parser
from gmflow.harness import registry
from gmflow.harness.schema import load_schema


def _choices(group, stage, dest):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[group]
    stage_parser = sub._subparsers._group_actions[0].choices[stage]
    action = next(a for a in stage_parser._actions if a.dest == dest)
    return set(action.choices)


def test_schema_enums_match_registry():
    toy = load_schema(SCHEMA)["properties"]["toy"]["properties"]
    solvers = toy["experiments"]["additionalProperties"]["additionalProperties"]["items"]["enum"]
    assert set(solvers) == set(registry.SOLVERS)
    assert set(toy["experiments"]["propertyNames"]["enum"]) == set(registry.DATASETS_2D)
    method = toy["runs"]["additionalProperties"]["properties"]["method"]["enum"]
    assert set(method) == set(registry.METHODS)
    assert set(toy["train"]["properties"]["network"]["enum"]) == set(registry.NETWORKS_2D)
    assert set(toy["train"]["properties"]["time_sampler"]["enum"]) == set(registry.TIME_SAMPLERS)


def test_image_schema_enums_match_registry():
    img = load_schema(SCHEMA)["properties"]["images"]["properties"]
    assert set(img["dataset"]["enum"]) == set(registry.CLASS_IMAGE_DATASETS)
    assert set(img["train"]["properties"]["network"]["enum"]) == set(registry.IMAGE_NETWORKS)
    sweep = img["sweeps"]["additionalProperties"]["properties"]
    assert set(sweep["runs"]["additionalProperties"]["items"]["enum"]) == set(registry.SOLVERS)
    assert set(img["runs"]["additionalProperties"]["properties"]["method"]["enum"]) == set(registry.METHODS)
    modes = set(sweep["guidance"]["properties"]["gmflow"]["properties"]) | set(
        sweep["guidance"]["properties"]["fm"]["properties"])
    assert modes == set(registry.GUIDANCE)


def test_cli_choices_match_registry():
    for group in ("2d", "images"):
        assert _choices(group, "sample", "solver") == set(registry.SOLVERS)
        assert _choices(group, "train", "method") == set(registry.METHODS)
    assert _choices("2d", "train", "dataset") == set(registry.DATASETS_2D)
    assert _choices("images", "train", "dataset") == set(registry.CLASS_IMAGE_DATASETS)
    assert _choices("2d", "train", "network") == set(registry.NETWORKS_2D)
    assert _choices("images", "train", "network") == set(registry.IMAGE_NETWORKS)
    assert _choices("images", "sample", "guidance") == set(registry.GUIDANCE)
    assert _choices("images", "evaluate", "extractor") == set(registry.FEATURE_EXTRACTORS) - {"coords"}
    assert _choices("lfm", "train-block", "dataset") == set(registry.DATASETS) - set(registry.LATENT_DATASETS)


def test_registry_keys_match_the_modules_that_define_them():
    """The registry lists the keys of slow-to-import modules as literals; they must be those modules' keys."""
    from gmflow.harness.data_images import IMAGE_DATASETS
    from gmflow.harness.dit import DIT_VARIANTS
    from gmflow.harness.features import FEATURE_EXTRACTORS
    from gmflow.harness.runs import BUILDERS
    from gmflow.harness.unet import UNET_VARIANTS

    assert set(registry.IMAGE_DATASETS) == set(IMAGE_DATASETS)
    assert set(registry.IMAGE_NETWORKS) == set(DIT_VARIANTS) | set(UNET_VARIANTS)
    assert set(registry.UNET_NETWORKS) == set(UNET_VARIANTS)
    assert set(registry.FEATURE_EXTRACTORS) == {"coords", *FEATURE_EXTRACTORS}
    assert set(BUILDERS) == set(registry.NETWORKS)
    assert set(registry.GM_ODE_SOLVERS) | set(registry.GM_SDE_SOLVERS) == set(registry.GM_SOLVERS_KEYS)


def test_every_solver_belongs_to_one_method():
    for solver in registry.SOLVERS:
        assert registry.method_of_solver(solver) in registry.METHODS
    assert set(registry.SOLVERS_BY_METHOD["gmflow"]).isdisjoint(registry.SOLVERS_BY_METHOD["fm"])


def test_shipped_config_uses_registry_keys():
    cfg = yaml.safe_load(open("config/config.yaml"))
    for runs in cfg["toy"]["experiments"].values():
        for solvers in runs.values():
            assert set(solvers) <= set(registry.SOLVERS)
