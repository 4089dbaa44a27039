#!/usr/bin/env bash
# Create .venv (if missing) and install rlexp with pinned versions: torch 2.13.0 CPU and the
# exact versions CI tested (constraints.txt). Usage: bash scripts/setup.sh [extras, default dev]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull several GB of CUDA packages
.venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[${extras}]"
