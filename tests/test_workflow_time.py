"""workflow/scripts/workflow_time.py: Snakemake benchmark files summed per stage, only those of the run measured."""

import csv
import json
import os
import subprocess
import sys

import pytest
from project import ROOT

SCRIPT = ROOT / "workflow" / "scripts" / "workflow_time.py"
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, wall, cpu, mtime):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{wall}\t0:00:01\t1\t1\t1\t1\t0\t0\t50\t{cpu}\n")
    os.utime(path, (mtime, mtime))


def _run(results, *extra):
    return subprocess.run([sys.executable, str(SCRIPT), "--results", str(results), *extra],
                          capture_output=True, text=True)


def test_sums_per_stage_and_leaves_out_older_runs(tmp_path):
    b = tmp_path / "benchmarks"
    _bench(b / "train_images" / "fashion-mnist_fm.tsv", 600.0, 590.0, 2000)
    _bench(b / "train_images" / "fashion-mnist_gm-k8.tsv", 500.0, 480.0, 2000)
    _bench(b / "sample_2d" / "a.tsv", 10.0, 9.0, 2000)
    _bench(b / "lfm" / "train_checkerboard_1.tsv", 30.0, 29.0, 2000)
    _bench(b / "lfm" / "push_checkerboard_1.tsv", 20.0, 19.0, 2000)
    _bench(b / "sample_2d" / "old.tsv", 999.0, 999.0, 1000)  # an earlier run: left out
    out = tmp_path / "benchmarks" / "workflow_time.csv"
    r = _run(tmp_path, "--since", "1500", "--wall-seconds", "700", "--cores", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = {row["stage"]: row for row in csv.DictReader(open(out))}
    assert set(rows) == {"train_images", "sample_2d", "lfm/train", "lfm/push", "total"}
    assert int(rows["train_images"]["jobs"]) == 2
    assert float(rows["train_images"]["job_seconds"]) == pytest.approx(1100.0)
    assert float(rows["train_images"]["max_job_seconds"]) == pytest.approx(600.0)
    assert float(rows["sample_2d"]["job_seconds"]) == pytest.approx(10.0)
    assert float(rows["total"]["job_seconds"]) == pytest.approx(1160.0)
    assert float(rows["total"]["cpu_seconds"]) == pytest.approx(1127.0)
    assert sum(float(r["share"]) for s, r in rows.items() if s != "total") == pytest.approx(1.0, abs=1e-3)
    summary = json.load(open(out.with_suffix(".json")))
    assert summary["wall_seconds"] == 700 and summary["cores"] == 2 and summary["jobs"] == 5
    assert summary["cpu_utilisation"] == pytest.approx(1127.0 / 1400.0, abs=1e-3)


def test_no_benchmarks_is_an_error(tmp_path):
    r = _run(tmp_path, "--out", str(tmp_path / "x.csv"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    _bench(tmp_path / "benchmarks" / "sample_2d" / "old.tsv", 1.0, 1.0, 1000)
    r = _run(tmp_path, "--since", "5000", "--out", str(tmp_path / "x.csv"))
    assert r.returncode == 1 and "no benchmark file" in r.stderr
