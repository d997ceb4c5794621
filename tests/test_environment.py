"""environment.yml (conda users) pins exactly what pyproject.toml pins."""

import tomllib

import yaml


def test_environment_yml_matches_pyproject():
    deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
    env = yaml.safe_load(open("environment.yml"))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(deps)
    assert all("==" in d for d in deps), "every dependency is pinned"
    assert "python=3.11" in env["dependencies"]
