#!/usr/bin/env bash
# The CI configuration's whole DAG with every trainer and sampler on a CUDA GPU (for anyone who has one).
# Compares nothing with the CPU run (floating-point results differ between devices); it checks that every stage runs
# on the GPU and that the tables come out. Usage: bash scripts/gpu_smoke.sh [extra snakemake arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "skipped: torch sees no CUDA GPU on this machine"
    exit 0
fi
OUT="${GPU_SMOKE_RESULTS:-results-gpu-smoke}"
python -m gmflow.experiments.cli check-config config/ci.yaml
snakemake --cores all --configfile config/ci.yaml --config results="$OUT" device=cuda precision=bf16 "$@"
python - "$OUT" <<'PY'
import json, pathlib, sys
specs = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("*/*/*/run.json")]
runs = [s for s in specs if "device" in s]  # the 2D and image trainers (LFM blocks train on the CPU)
devices = {s["device"] for s in runs}
print(f"{len(runs)} trained runs on devices {sorted(map(str, devices))}")
sys.exit(0 if runs and all(str(d).startswith("cuda") for d in devices) else 1)
PY
