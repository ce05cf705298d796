#!/usr/bin/env bash
# Runs on the GPU machine (the device tool), in the repository root: installs fleetlm without
# dependencies (the machine has torch, transformers, safetensors; wheels it lacks travel in
# .whl/), runs the tests that exercise CUDA, then the GPU benchmarks. Results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/fleetlm-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

# Tests that run on the GPU when one is present (device "auto" picks CUDA).
python3 -m pytest -q -p no:cacheprovider tests/kernels tests/engine/core tests/engine/sample \
  tests/engine/test_llama_family.py 2>&1 | tee "$OUT/tests.log" | tail -5

# Llama-3.1-8B architecture, random bf16 weights.
model=benchmarks/configs/llama-3.1-8b
python3 benchmarks/throughput.py --systems fleetlm --model $model --load-format dummy \
  --num-prompts 1 --input-len 512 --range-ratio 0 --output-len 512 \
  --output "$OUT/gpu_llama8b_batch1.json" 2>&1 | tail -12
python3 benchmarks/throughput.py --systems fleetlm --model $model --load-format dummy \
  --num-prompts 64 --input-len 512 --range-ratio 0 --output-len 256 --seed 2 \
  --output "$OUT/gpu_llama8b_64x512x256.json" 2>&1 | tail -12
