#!/usr/bin/env bash
# Set everything up (once) and run the test suite (the default selection; add -m slow for the long checks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
ruff check gmflow baselines tests workflow/scripts
exec python -m pytest "$@"
