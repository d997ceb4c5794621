"""Every rule declares its software environment and what it asks of a scheduler; the environment files pin what
pyproject.toml pins; the resources section of the config reaches the rules (threads, memory, runtime, GPUs,
partition, account) and multi-process training is launched with torchrun."""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from project import ROOT, validate_config

from gmflow.harness.schema import ConfigError

RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))


def _rules():
    """(file, rule name, body) of every rule in workflow/rules/*.smk and the Snakefile."""
    out = []
    for path in [*RULE_FILES, ROOT / "Snakefile"]:
        text = path.read_text()
        for m in re.finditer(r"(?m)^rule (\w+):\n((?:(?:[ \t]+.*)?\n)*)", text):
            out.append((path.name, m.group(1), m.group(2)))
    return out


RULES = [r for r in _rules() if r[1] != "all"]  # `all` only names the targets; it runs nothing


def _directive(body, name):
    """The text of a rule's directive `name:` (its own line and the lines indented below it)."""
    m = re.search(rf"(?m)^    {name}:(.*)\n((?:        .*\n|\n)*)", body)
    return None if m is None else (m.group(1) + "\n" + m.group(2)).strip()


def test_rules_are_found():
    names = {r[1] for r in RULES}
    assert len(names) == len(RULES) >= 30
    assert {"train_2d", "train_images", "sample_2d", "evaluate_images", "report_2d", "lfmi_distill"} <= names


@pytest.mark.parametrize("file,rule,body", RULES, ids=[r[1] for r in RULES])
def test_every_rule_has_env_threads_resources_and_log(file, rule, body):
    conda = _directive(body, "conda")
    assert conda == "ENV", f"{file}: rule {rule} needs `conda: ENV` (got {conda!r})"
    threads = _directive(body, "threads")
    assert threads and re.fullmatch(r'stage_threads\("\w+"\)|all_cores\(\)', threads), (file, rule, threads)
    resources = _directive(body, "resources")
    assert resources and re.match(r'\*\*stage_resources\("(data|train|sample|evaluate|report)"', resources), (
        f"{file}: rule {rule} needs resources from its stage (got {resources!r})")
    assert _directive(body, "log"), f"{file}: rule {rule} has no log"
    assert _directive(body, "output"), f"{file}: rule {rule} has no output"
    bench = _directive(body, "benchmark")
    assert bench and "{RES}/benchmarks/" in bench, f"{file}: rule {rule} needs a benchmark file under benchmarks/"


def _env_files():
    """Every file that a rule's `conda:` names: ENV (common.smk) and any workflow/envs/*.yaml."""
    common = (ROOT / "workflow/rules/common.smk").read_text()
    env = re.search(r'^ENV = f"\{ROOT\}/(.+)"$', common, re.M).group(1)
    return [ROOT / env, *sorted((ROOT / "workflow" / "envs").glob("*.y*ml"))]


@pytest.mark.parametrize("path", _env_files(), ids=lambda p: p.name)
def test_env_file_pins_equal_pyproject(path):
    deps = tomllib.load(open(ROOT / "pyproject.toml", "rb"))["project"]["dependencies"]
    env = yaml.safe_load(path.read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(deps)
    assert "python=3.11" in env["dependencies"]


def _ci_config(**resources):
    cfg = yaml.safe_load(open(ROOT / "config" / "ci.yaml"))
    if resources:
        cfg["resources"] = resources
    return cfg


def test_resources_defaults_per_stage():
    res = validate_config(_ci_config())["resources"]
    assert res["partition"] is None and res["account"] is None
    assert {s: res[s]["gpus"] for s in ("data", "train", "sample", "evaluate", "report")} == dict.fromkeys(
        ("data", "train", "sample", "evaluate", "report"), 0)
    assert res["train"]["processes"] == 1 and res["train"]["threads"] is None  # None: the top-level threads
    assert res["train"]["runtime"] > res["sample"]["runtime"] > res["data"]["runtime"]


@pytest.mark.parametrize("bad,key", [
    ({"train": {"gpus": 4, "processes": 2}}, "resources.train.gpus"),
    ({"sample": {"mem_mb": 10}}, "resources.sample.mem_mb"),
    ({"partition": "gpu; rm -rf /"}, "resources.partition"),
    ({"report": {"walltime": 5}}, "resources.report"),
])
def test_bad_resources_are_refused(bad, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate_config(_ci_config(**bad))


def _dry_run(tmp_path, resources, **sections):
    """Jobs of a dry run of the CI config with this resources section (and other sections merged over the config's):
    {rule: [(resources line, shell command)]}."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"results": str(tmp_path / "res ults"), "resources": resources, **sections}))
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "2", "--configfile", "config/ci.yaml",
           str(overlay)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for block in proc.stdout.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        res = re.search(r"^    resources: (.*)$", block, re.M).group(1)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.setdefault(rule, []).append((res, shell.group(1) if shell and rule != "all" else ""))
    return jobs


def test_resources_and_launch_line_reach_the_jobs(tmp_path):
    jobs = _dry_run(tmp_path, {"account": "lab", "partition": "cpu", "train": {"processes": 2, "gpus": 2,
                                                                                 "partition": "gpu"},
                               "sample": {"gpus": 1, "mem_mb": 8000, "runtime": 30}})
    res, shell = jobs["train_images"][0]
    assert "gpu=2" in res and "slurm_partition=gpu" in res and "slurm_account=lab" in res and "runtime=720" in res
    assert " torchrun --standalone --nproc_per_node 2 -m gmflow.experiments.cli images train " in shell
    res, shell = jobs["train_2d"][0]
    assert "torchrun --standalone --nproc_per_node 2 -m gmflow.experiments.cli 2d train" in shell
    res, shell = jobs["lfm_train_block"][0]  # one process: one GPU at most, the plain CLI
    assert "gpu=1" in res and "slurm_partition=gpu" in res and "torchrun" not in shell
    res, _ = jobs["sample_images"][0]
    assert "gpu=1" in res and "mem_mb=8000" in res and "runtime=30" in res and "slurm_partition=cpu" in res
    res, _ = jobs["table_2d"][0]
    assert "gpu=0" in res and "slurm_partition=cpu" in res
    # a results folder with a space reaches every command quoted
    assert all("'" + str(tmp_path / "res ults") in s for js in jobs.values() for _, s in js if s), "unquoted path"


def test_one_process_keeps_the_plain_command(tmp_path):
    jobs = _dry_run(tmp_path, {})
    _, shell = jobs["train_2d"][0]
    assert re.match(r"PYTHONPATH=\S+:\$\{PYTHONPATH:-\} python -m gmflow.experiments.cli 2d train ", shell)
    assert all("slurm_partition" not in r and "slurm_account" not in r for js in jobs.values() for r, _ in js)


def test_lfm_image_blocks_train_the_image_runs_network(tmp_path):
    """The DiT shape overrides of images.train reach every image trainer: the flow-matching and GMFlow runs and each
    Local Flow Matching block train one network (a block of another shape would be a different baseline), and the
    speed benchmarks time that network."""
    jobs = _dry_run(tmp_path, {}, images={"train": {"patch_size": 4, "num_heads": 1}})
    trainers = [shell for rule in ("train_images", "lfmi_train_block") for _, shell in jobs[rule]]
    assert len(jobs["lfmi_train_block"]) >= 3 and len(jobs["train_images"]) >= 2
    for shell in trainers:
        assert " --network dit-digits-tiny " in shell and " --patch-size 4 " in shell and " --num-heads 1 " in shell
        assert "--dit-depth" not in shell and "--dit-width" not in shell  # unset: the variant's
    (_, bench), = jobs["bench_images"]  # the timing benchmarks time the trained network too
    assert bench.count(" --patch-size 4 --num-heads 1 ") == 3, bench
