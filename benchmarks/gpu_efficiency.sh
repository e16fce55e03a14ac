#!/usr/bin/env bash
# The efficiency check of issue 6 on one GPU (H100/H200), in one call of a few minutes:
# full-size Qwen2-Audio-7B and Audio Flamingo 3 architectures with random weights, bf16,
# SDPA. Writes JSON, markdown tables and plots under ${OUT:-runs/gpu}.
set -euo pipefail
out=${OUT:-runs/gpu}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src
python -m ltbm.cli bench --backbone qwen2-audio --random-weights --size full \
  --methods ltbm,global,pool,prune --keep-ratios 1,0.5,0.25 --batch-sizes 1,16 \
  --seconds 30 --repeats 5 --out "$out/bench_qwen2_audio.json"
python -m ltbm.cli bench --backbone audioflamingo3 --random-weights --size full \
  --methods ltbm,pool --keep-ratios 1,0.25 --batch-sizes 1 --seconds 600 --repeats 3 \
  --out "$out/bench_audioflamingo3.json"
