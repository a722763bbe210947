#!/usr/bin/env bash
# The overhead benchmark at the scale of issue 15 on one CUDA device: every balancer in every engine
# mode, and LibMTL's same methods, on the MLP, ResNet-18 (64x64 images) and the transformer encoder
# (4 layers, width 256, 64 tokens), batch 128, T in {2, 12, 40}; CUDA-synchronised step times and
# torch.cuda.max_memory_allocated. Companion of benchmarks/gpu.yaml (the training matrix).
#
#   bash benchmarks/overhead_gpu.sh [OUT_DIR]     # from the repository root, pip install -e '.[bench]'
#
# Writes OUT_DIR/{mlp,resnet18,transformer}.{json,md} (default bench-results/overhead-gpu) and
# the combined report docs/benchmarks/overhead-gpu.md. Each trunk's run stands alone: rerun one by
# hand and combine again with the last command. Expected time on one H100/H200: well under an hour.
set -euo pipefail
out=${1:-bench-results/overhead-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
common=(--device cuda --tasks 2,12,40 --warmup 3 --repeats 10 --losses both)
for trunk in mlp resnet18 transformer; do
  python benchmarks/overhead.py "${common[@]}" --trunk "$trunk" --batch-size 128 \
    --json "$out/$trunk.json" --out "$out/$trunk.md"
done
python benchmarks/overhead.py --combine "$out/mlp.json" "$out/resnet18.json" "$out/transformer.json" \
  --out docs/benchmarks/overhead-gpu.md
