# Sourced by demo.sh / test.sh: make (or reuse) .venv and install qvdp with its extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -d .venv ]; then
    # reuse a system torch (e.g. a GPU image's CUDA build) when there is one
    if $PY -c "import torch" 2>/dev/null; then $PY -m venv --system-site-packages .venv; else $PY -m venv .venv; fi
  fi
  . .venv/bin/activate
fi
python -m pip install -q --upgrade pip setuptools wheel pybind11 >/dev/null
# torch: keep an installed one; otherwise 2.13.0 (a CPU build lies on this workplace's disk)
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q --no-build-isolation -e ".[$1]"
