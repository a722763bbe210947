#!/usr/bin/env bash
# Create (or reuse) ./.venv-timm: a second environment in which the timm trunk's tests can run.
#
# Why a separate venv: timm needs torchvision, and no torchvision build matches the CPU torch 2.13.0
# of the main .venv here. torch==2.14.1 and torchvision==0.29.1 (a matching pair that this machine
# keeps on disk) are therefore installed FIRST and pinned, so that timm and polytask's own
# requirements are resolved against them instead of dragging in another torch.
# It is large (~6 GB: that torch is the default build with its CUDA libraries) and took 1m33s
# to build from the local disk on a 2-core machine (measured when this script was written).
#
# Usage: bash scripts/setup-timm.sh && .venv-timm/bin/python -m pytest -q tests/models/test_timm.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-timm/bin/python ]; then
  "$PY" -m venv .venv-timm
fi
. .venv-timm/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -c <(printf 'torch==2.14.1\ntorchvision==0.29.1\n') "timm>=1.0" -e ".[dev]"
python -c "import timm, torch, torchvision; print('timm', timm.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
