#!/usr/bin/env bash
# Set up and run the main job on the embedded default: `reasondistill demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec reasondistill demo "$@"
