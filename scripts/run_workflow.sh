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
# Check the configuration files' YAML first, naming the line of a syntax error (values are checked by the workflow,
# after any --config overrides).
CONFIGS=()
take=0
for arg in "$@"; do
    case "$arg" in
        --configfile|--configfiles) take=1 ;;
        --configfile=*) CONFIGS+=("${arg#*=}") ;;
        -*) take=0 ;;
        *) if [ "$take" = 1 ]; then CONFIGS+=("$arg"); fi ;;
    esac
done
[ "${#CONFIGS[@]}" -gt 0 ] || CONFIGS=(config/config.yaml)
python -m gmflow.experiments.cli check-config --syntax-only "${CONFIGS[@]}" > /dev/null
# A real run (not a dry run or a query) ends with where its time went: results/benchmarks/workflow_time.{csv,json}.
timed=1
for arg in "$@"; do
    case "$arg" in
        -n|--dry-run|--dryrun|--summary|--detailed-summary|--list-rules|--list|--dag|--rulegraph|--unlock|--touch|\
        --lint|--help|-h|--version) timed=0 ;;
    esac
done
start=$(date +%s)
snakemake --profile "$PROFILE" "$@"
if [ "$timed" = 1 ]; then
    results=$(python -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("results", "results"))' \
        "${CONFIGS[-1]}")
    python workflow/scripts/workflow_time.py --results "$results" --since "$start" \
        --wall-seconds "$(( $(date +%s) - start ))" --config "${CONFIGS[*]}" \
        --out "$results/benchmarks/workflow_time.csv"
fi
