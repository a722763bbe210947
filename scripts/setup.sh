#!/usr/bin/env bash
# Create (or reuse) ./.venv and install polytask with the extras the tests and demo use.
# torch is installed first and pinned: torch==2.13.0 is the CPU build this machine keeps on disk,
# whereas an unpinned torch pulled in by another package would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[chem,tensorboard,cvx,parquet,qm9,hf,dev,detection,onnx,compress,federated,auto,sklearn,lightning]"
# LibMTL for the side-by-side benchmark cells and their tests. --no-deps: its metadata asks for an
# unpinned torchvision (and through it a CUDA torch); the parts we drive need only torch/numpy/scipy.
python -m pip install -q --no-deps "libmtl==1.1.5"
