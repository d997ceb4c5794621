#!/usr/bin/env bash
# Set everything up (once) and run the default workflow. Extra arguments go to snakemake, e.g.
#   bash scripts/run_workflow.sh --configfile config/ci.yaml     (the tiny CI configuration)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec snakemake --cores all "$@"
