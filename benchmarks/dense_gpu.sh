#!/usr/bin/env bash
# The dense GPU suites, NYUv2 and Cityscapes (benchmarks/nyuv2.yaml, benchmarks/cityscapes.yaml),
# on one CUDA device, run only where both a GPU and the data set's files are present.
#
#   POLYTASK_NYUV2=/data/nyuv2 POLYTASK_CITYSCAPES=/data/cityscapes bash benchmarks/dense_gpu.sh [OUT] [-- BENCH_RUN_ARGS...]
#
# From the repository root, after pip install -e . . Each data set's folder holds train/ and val/
# in MTAN's .npy layout (docs/datasets.md: where to get it); a data set whose variable is unset
# (and that is not under $POLYTASK_DATA/<name>) is skipped with a message, and the script fails if
# neither is there or if torch sees no CUDA device. Results go to OUT/<suite> (default
# bench-results), reports to docs/results/<suite>.md. The suites are resumable: rerunning continues
# where an interrupted run stopped. Extra arguments after -- go to `polytask bench run`, e.g.
#   bash benchmarks/dense_gpu.sh bench-results -- --only architecture=hard_sharing --only seed=0
# Expected cost: about 80 trainings of 200 epochs per suite (see each suite's header).
set -euo pipefail
out=bench-results
if [[ $# -gt 0 && "$1" != "--" ]]; then out=$1; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
extra=("$@")

if ! python -c 'import polytask, torch' 2>/dev/null; then
  echo "dense_gpu.sh: python cannot import polytask and torch; activate the environment" \
    "(pip install -e .)" >&2
  exit 2
fi
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "dense_gpu.sh: torch sees no CUDA device; these suites are GPU-sized (200 epochs)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

data_dir() {  # the folder a loader would read: $POLYTASK_<NAME>, else $POLYTASK_DATA/<name>
  local name=$1 var=$2
  if [[ -n "${!var:-}" ]]; then echo "${!var}"; elif [[ -n "${POLYTASK_DATA:-}" ]]; then
    echo "$POLYTASK_DATA/$name"; fi
}

ran=0
for pair in nyuv2:POLYTASK_NYUV2 cityscapes:POLYTASK_CITYSCAPES; do
  name=${pair%%:*} var=${pair##*:}
  dir=$(data_dir "$name" "$var")
  if [[ -z "$dir" || ! -d "$dir/train/image" || ! -d "$dir/val/image" ]]; then
    echo "dense_gpu.sh: skipping $name: no $name folder with train/image and val/image" \
      "(set $var, or put it at \$POLYTASK_DATA/$name)" >&2
    continue
  fi
  echo "dense_gpu.sh: $name from $dir"
  export "$var=$dir"
  polytask bench run "benchmarks/$name.yaml" --out "$out/$name" "${extra[@]}"
  polytask bench report "$out/$name" --out "docs/results/$name.md"
  ran=$((ran + 1))
done
if [[ $ran -eq 0 ]]; then
  echo "dense_gpu.sh: neither data set was found; nothing ran" >&2
  exit 2
fi
