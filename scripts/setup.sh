#!/usr/bin/env bash
# Create .venv (if missing) and install reasondistill into it.
# torch is installed FIRST and pinned, so that pip never resolves a bare `torch` requirement
# to a multi-GB CUDA build on a CPU-only machine. Override with TORCH_SPEC="torch==X" for a GPU box.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
python -c "import torch" >/dev/null 2>&1 || python -m pip install --quiet "$TORCH_SPEC"
python -m pip install --quiet -e ".[test]"
