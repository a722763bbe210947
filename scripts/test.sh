#!/usr/bin/env bash
# Set up ./.venv if needed, then run ruff and the test suite against the real data in ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export POLYTASK_DATA="${POLYTASK_DATA:-$(cd .. && pwd)/shared/data}"
export POLYTASK_CACHE="${POLYTASK_CACHE:-$(pwd)/.polytask_cache}"
export MPLBACKEND=Agg
ruff check src tests
set +e
python -m pytest -q "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests"; exit 1
fi
exit "$code"
