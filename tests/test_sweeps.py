"""Sweep points: normalisation of options that do not apply, de-duplication across sweeps, names that round-trip."""

import re

import pytest
import yaml
from project import validate_config

from gmflow.experiments.images.sweeps import TAG_PATTERN, image_points, parse_tag, point_tag


def _images(sweeps, spectral=True):
    cfg = yaml.safe_load(open("config/ci.yaml"))
    cfg.pop("lfm_images")  # it names sweeps of the shipped config
    cfg["images"]["sweeps"] = sweeps
    cfg["images"]["train"]["spectral"] = spectral
    return validate_config(cfg)["images"]


def test_options_apply_only_where_they_mean_something():
    pts = image_points(_images({"s": {
        "runs": {"fm": ["euler"], "gm-k4": ["gm-ode-2", "gm-sde"]}, "nfe": [4],
        "guidance": {"fm": {"cfg": [2.0]}, "gmflow": {"probabilistic": [0.3]}},
        "substeps": ["paper-imagenet", 2], "spectral": [0, 1], "orthogonal": [0, 1]}}))
    by = {(p["run"], p["solver"]): [] for p in pts}
    for p in pts:
        by[(p["run"], p["solver"])].append(p)
    # euler: sub-steps and spectral collapse -> one point per orthogonal value
    assert {(p["substeps"], p["spectral"]) for p in by[("fm", "euler")]} == {(1, 0)}
    assert len(by[("fm", "euler")]) == 2
    # GM-ODE keeps sub-steps, drops spectral; GM-SDE keeps spectral, drops sub-steps
    assert {p["substeps"] for p in by[("gm-k4", "gm-ode-2")]} == {"paper-imagenet", 2}
    assert {p["spectral"] for p in by[("gm-k4", "gm-ode-2")]} == {0}
    assert {(p["substeps"], p["spectral"]) for p in by[("gm-k4", "gm-sde")]} == {(1, 0), (1, 1)}
    assert len(pts) == 2 + 4 + 4


def test_no_spectrum_means_no_spectral_points_and_unguided_points_have_no_orthogonal():
    pts = image_points(_images({"s": {"runs": {"gm-k4": ["gm-sde-2"]}, "nfe": [2, 4], "spectral": [0, 1],
                                      "orthogonal": [0, 1]}}, spectral=False))
    assert len(pts) == 2
    assert all(p["spectral"] == 0 and p["guidance"] == "none" and p["orthogonal"] == 0 for p in pts)


def test_shared_points_are_sampled_once_and_keep_every_extractor():
    sweep = {"runs": {"gm-k4": ["gm-ode-2"]}, "nfe": [4], "guidance": {"gmflow": {"probabilistic": [0.3]}}}
    pts = image_points(_images({"a": sweep, "b": {**sweep, "extractors": ["inception-tf"]}}))
    assert len(pts) == 1
    assert pts[0]["extractors"] == ["classifier-digits", "inception-tf"] and pts[0]["sweeps"] == ["a", "b"]


@pytest.mark.parametrize("p", [
    {"solver": "dpm++-2m-sde", "nfe": 8, "guidance": "probabilistic", "scale": 0.39, "orthogonal": 1.0,
     "substeps": 1, "spectral": 1, "seed": 3},
    {"solver": "gm-ode-2", "nfe": 6, "guidance": "cfg", "scale": 2.5, "orthogonal": 0.5, "substeps": "paper-imagenet",
     "spectral": 0, "seed": 0},
    {"solver": "euler", "nfe": 32, "guidance": "none", "scale": 0.0, "orthogonal": 0.0, "substeps": 1, "spectral": 0,
     "seed": 0},
])
def test_tag_round_trip(p):
    tag = point_tag(p)
    assert re.fullmatch(TAG_PATTERN, tag)
    q = parse_tag(tag)
    assert q == {**p, "substeps": str(p["substeps"])}


def test_every_shipped_point_has_a_parsable_unique_name():
    for name in ("ci", "config", "paper"):
        images = validate_config(yaml.safe_load(open(f"config/{name}.yaml")))["images"]
        pts = image_points(images)
        keys = [(p["run"], p["tag"]) for p in pts]
        assert len(keys) == len(set(keys))
        for p in pts:
            assert parse_tag(p["tag"])["solver"] == p["solver"]
