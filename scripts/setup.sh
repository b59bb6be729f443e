#!/usr/bin/env bash
# Create .venv (if missing) and install vr with its dev extra into it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, on its own: where a local wheel cache caps torch (as on the project's CI machines)
# this takes it from disk; elsewhere pip picks the right build for the machine.
python -c "import torch, torchvision" 2>/dev/null || python -m pip install -q "torch>=2.4" "torchvision>=0.19" 2> .venv/pip-torch.log \
  || { cat .venv/pip-torch.log >&2; exit 1; }
# pip's and setuptools' warnings go to a log, shown only when the install fails.
python -m pip install -q -e ".[dev]" 2> .venv/pip-install.log || { cat .venv/pip-install.log >&2; exit 1; }
