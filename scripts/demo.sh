#!/usr/bin/env bash
# Set up ./.venv if needed, then run the demo: MultiMNIST from the bundled digits, no files needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
polytask demo "$@"
