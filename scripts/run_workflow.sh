#!/usr/bin/env bash
# Set everything up (once) and run the default workflow. Extra arguments go to snakemake, e.g.
#   bash scripts/run_workflow.sh --configfile config/ci.yaml     (the tiny CI configuration)
# Jobs run on this machine (profile workflow/profiles/local: every core) unless another profile is given first:
#   bash scripts/run_workflow.sh --profile workflow/profiles/slurm --configfile config/paper.yaml   (sbatch per job)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="$ROOT/workflow/profiles/local"
case "${1:-}" in
    --profile) PROFILE="${2:?--profile needs a folder, e.g. workflow/profiles/slurm}"; shift 2 ;;
    --profile=*) PROFILE="${1#--profile=}"; shift ;;
esac
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec snakemake --profile "$PROFILE" "$@"
