"""Where a workflow run's time went: Snakemake's per-job benchmark files summed by stage, beside the run's wall time.

Every rule writes a benchmark file ``{results}/benchmarks/{stage}/{job}.tsv`` (Snakemake's ``benchmark:``: wall
seconds ``s`` and ``cpu_time`` of the job). This script sums the files written since ``--since`` (the run's start, so
files of earlier runs are left out) per stage and writes

- ``--out`` (CSV): stage, jobs, job_seconds (sum of the jobs' wall times), cpu_seconds, max_job_seconds, share of the
  summed job time; a last row ``total``;
- ``--out`` with ``.json``: the run's wall time (``--wall-seconds``), the cores, the summed job and CPU times and
  the CPU utilisation, CPU seconds / (wall seconds x cores): how busy the cores were.

The LFM folders hold several stages (``lfm/train_*``, ``lfm/push_*``, ...; also those of the 2D chains of
``lfm.chains``, ``lfm-{name}/...``): their stage is the folder plus the file name's first word (``lfm/train``).

Example (scripts/run_workflow.sh does this after a successful run):
    python workflow/scripts/workflow_time.py --results results --since 1764700000 --wall-seconds 3412 --cores 2 \\
        --out results/benchmarks/workflow_time.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

from gmflow.harness.io import read_benchmark

SPLIT_FOLDERS = ("lfm", "lfm_images")  # folders whose file names start with the stage
CHAIN_FOLDER = re.compile(r"lfm-[A-Za-z0-9-]+")  # the 2D chains of lfm.chains (their pools: lfm-{name}_pool)


def stage_of(path: Path, root: Path) -> str:
    """``train_images`` for ``benchmarks/train_images/x.tsv``; ``lfm/push`` for ``benchmarks/lfm/push_x.tsv``."""
    folder = path.parent.relative_to(root).as_posix()
    if folder in SPLIT_FOLDERS or CHAIN_FOLDER.fullmatch(folder):
        return f"{folder}/{path.stem.split('_', 1)[0]}"
    return folder


def summarise(root: Path, since: float) -> list[dict]:
    """One row per stage, largest summed job time first, then the ``total`` row."""
    per_stage: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in sorted(root.rglob("*.tsv")):
        if path.stat().st_mtime >= since:
            per_stage[stage_of(path, root)].append(read_benchmark(path))
    total = sum(w for jobs in per_stage.values() for w, _ in jobs)
    rows = []
    for stage, jobs in per_stage.items():
        wall = sum(w for w, _ in jobs)
        rows.append({
            "stage": stage,
            "jobs": len(jobs),
            "job_seconds": round(wall, 1),
            "cpu_seconds": round(sum(c for _, c in jobs), 1),
            "max_job_seconds": round(max(w for w, _ in jobs), 1),
            "share": round(wall / total, 4) if total else 0.0,
        })
    rows.sort(key=lambda r: -r["job_seconds"])
    rows.append({
        "stage": "total",
        "jobs": sum(r["jobs"] for r in rows),
        "job_seconds": round(total, 1),
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in rows), 1),
        "max_job_seconds": max((r["max_job_seconds"] for r in rows), default=0.0),
        "share": 1.0 if total else 0.0,
    })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="the run's results folder (its benchmarks/ is read)")
    p.add_argument("--since", type=float, default=0.0, help="only benchmark files written at or after this Unix time")
    p.add_argument("--wall-seconds", type=float, default=None, help="the run's measured wall time")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores the run had (default: this machine's)")
    p.add_argument("--config", default=None, help="the configuration file(s) of the run, recorded as given")
    p.add_argument("--out", required=True, help="CSV path; a JSON summary is written beside it")
    a = p.parse_args(argv)
    root = Path(a.results) / "benchmarks"
    if not root.is_dir():
        print(f"error: {root} does not exist: was the workflow run with --results {a.results}?", file=sys.stderr)
        return 1
    rows = summarise(root, a.since)
    if rows[-1]["jobs"] == 0:
        print(f"error: no benchmark file under {root} written since {a.since}", file=sys.stderr)
        return 1
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    total = rows[-1]
    summary = {
        "config": a.config,
        "cores": a.cores,
        "wall_seconds": a.wall_seconds,
        "jobs": total["jobs"],
        "job_seconds": total["job_seconds"],
        "cpu_seconds": total["cpu_seconds"],
        "cpu_utilisation": (
            round(total["cpu_seconds"] / (a.wall_seconds * a.cores), 3) if a.wall_seconds and a.cores else None
        ),
    }
    with open(out.with_suffix(".json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(f"wall {a.wall_seconds} s, {total['jobs']} jobs, {total['job_seconds']} job-seconds -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
