#!/usr/bin/env bash
# Set up .venv and run the default test suite (GPU tests skip cleanly without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
python -m pytest -q "$@"
