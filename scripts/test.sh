#!/usr/bin/env bash
# Set up ./.venv if needed, then run ruff and the test suite against the real data in ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export POLYTASK_DATA="${POLYTASK_DATA:-$(cd .. && pwd)/shared/data}"
export POLYTASK_CACHE="${POLYTASK_CACHE:-$(pwd)/.polytask_cache}"
export MPLBACKEND=Agg
# Chromium for the report's browser test (tests/report/test_browser.py skips, saying why, without it)
command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 && echo "installed chromium" || echo "could not install chromium with apt-get: the report's browser test will be skipped"; }
ruff check src tests
set +e
python -m pytest -q "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests"; exit 1
fi
if [ "$code" -ne 0 ] || [ "$#" -gt 0 ]; then
  exit "$code"
fi
# The timm trunk needs torchvision, which no build matches beside the main venv's CPU torch: its
# tests run in a second environment (torch 2.14.1 + torchvision 0.29.1 + timm, ~6 GB, ~2 min).
# POLYTASK_SKIP_TIMM=1 skips it (say so: the skip is printed, not silent).
if [ "${POLYTASK_SKIP_TIMM:-0}" = "1" ]; then
  echo "SKIPPED: timm environment (POLYTASK_SKIP_TIMM=1)"; exit 0
fi
deactivate
bash scripts/setup-timm.sh
.venv-timm/bin/python -m pytest -q -p no:cacheprovider tests/models/test_timm.py
