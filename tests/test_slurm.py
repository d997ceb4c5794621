"""The CI DAG through a real single-node SLURM (scripts/slurm_test.sh): every job submitted with sbatch by the
workflow's SLURM profile, the result tables equal to a local run's. Not in the default selection: run with -m slurm
(as root, or with password-less sudo; it installs slurm-wlm and munge with apt-get where they are missing)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slurm
def test_ci_dag_on_single_node_slurm(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_test.sh"), str(tmp_path / "slurm")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=5400)
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("skipped:")]
    if proc.returncode == 0 and skipped:
        pytest.skip(skipped[0].removeprefix("skipped:").strip())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert re.search(r"compared \d+ tables \(\d+ byte-identical\): equal", proc.stdout), proc.stdout[-3000:]
    assert "slurm_test: passed" in proc.stdout, proc.stdout[-3000:]
