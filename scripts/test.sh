#!/usr/bin/env bash
# Set up and run the whole test suite (slow end-to-end tests included). CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
