#!/usr/bin/env bash
# The GPU check, run on the GPU machine (the device tool) in the repository root:
#
#   scripts/gpu_check.sh [stage ...]      (default: every stage, in this order)
#
# Stages: tests micro batch1 batch1eager offline offlinesync hf serve profile correctness
# (and router, not in the default list: three engine replicas behind the router).
# fleetlm is installed without dependencies (the machine has torch, triton, transformers);
# wheels it lacks travel in .whl/. Every stage writes its JSON and log under $RES, and the
# whole folder is packed into $OUT/gpu_results.tgz after each stage, so a run cut short still
# returns what it measured. The benchmark model is the Llama-3.1-8B architecture with random
# bf16 weights; the correctness stage needs the bundled SmolLM2 GGUF, which is larger than what
# travels in one call: its two halves, .smol/a/part-aa and .smol/b/part-ab (made by
# scripts/split_smollm2.sh), are carried by two calls in a row (the machine stays warm between
# them) and joined in /tmp/smol.
set -uo pipefail
OUT=${OUT:-/tmp/fleetlm-gpu}
RES=/tmp/fleetlm-gpu-results
mkdir -p "$OUT" "$RES"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RES/gpu.txt"

MODEL=benchmarks/configs/llama-3.1-8b
# vLLM's run used max_num_seqs 1024; fleetlm's KV cache holds ~512 of these requests at full
# length, and more running requests only add preemptions (recomputation) here.
BENCH_ENGINE=(--max-model-len 4096 --max-num-seqs 512 --max-num-batched-tokens 16384)

stage_tests() {
  python3 -m pytest -q -p no:cacheprovider tests/kernels tests/engine/core tests/engine/sample \
    tests/engine/test_llama_family.py tests/engine/test_cuda_graphs.py
}

# The engine-level GPU tests and the decode-attention kernel's (all kernel tests take minutes):
# async scheduling and CUDA graphs on CUDA, the engine core, the model family.
stage_enginetests() {
  python3 -m pytest -q -p no:cacheprovider tests/engine/core tests/engine/test_llama_family.py \
    tests/engine/test_cuda_graphs.py tests/kernels/test_paged_decode_attention.py \
    tests/kernels/test_triton_attention_backend.py
}

stage_micro() {
  python3 benchmarks/roofline.py --model $MODEL --batch-size 1 --input-len 512 --output-len 512 \
    --dtype bfloat16 --output "$RES/roofline_llama8b.json"
  python3 benchmarks/prefill_attention.py --output "$RES/prefill_attention.json"
  python3 benchmarks/decode_attention.py --output "$RES/decode_attention.json"
}

stage_batch1() {
  python3 benchmarks/throughput.py --systems fleetlm --model $MODEL --load-format dummy \
    --num-prompts 1 --input-len 512 --range-ratio 0 --output-len 512 --max-model-len 4096 \
    --output "$RES/llama8b_batch1.json"
}

stage_batch1eager() {
  python3 benchmarks/throughput.py --systems fleetlm --model $MODEL --load-format dummy \
    --num-prompts 1 --input-len 512 --range-ratio 0 --output-len 512 --max-model-len 4096 \
    --enforce-eager --output "$RES/llama8b_batch1_eager.json"
}

stage_offline() {
  python3 benchmarks/throughput.py --systems fleetlm --model $MODEL --load-format dummy \
    --num-prompts 1000 --input-len 512 --range-ratio 0 --output-len 256 --seed 0 \
    "${BENCH_ENGINE[@]}" --output "$RES/llama8b_offline_1000x512x256.json"
}

stage_offlinesync() {
  # The same run with every step scheduled after the previous one's tokens are in.
  python3 benchmarks/throughput.py --systems fleetlm --model $MODEL --load-format dummy \
    --num-prompts 1000 --input-len 512 --range-ratio 0 --output-len 256 --seed 0 \
    "${BENCH_ENGINE[@]}" --no-async-scheduling --output "$RES/llama8b_offline_1000x512x256_sync.json"
}

stage_hf() {
  # transformers generate, static batches of 64: the first 128 of the same seed-0 prompts.
  python3 benchmarks/throughput.py --systems transformers --hf-batch-sizes 64 --model $MODEL \
    --load-format dummy --num-prompts 128 --input-len 512 --range-ratio 0 --output-len 256 \
    --seed 0 --output "$RES/llama8b_hf_generate_bs64.json"
}

stage_serve() {
  local port=8321 started ready
  started=$(date +%s.%N)
  fleetlm serve $MODEL --load-format dummy --port $port --max-model-len 4096 \
    --max-num-seqs 256 --max-num-batched-tokens 16384 --log-level info >"$RES/serve_server.log" 2>&1 &
  local server=$!
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do
    kill -0 $server 2>/dev/null || { tail -30 "$RES/serve_server.log"; return 1; }
    sleep 0.5
  done
  ready=$(date +%s.%N)
  python3 -c "import json,sys; print(json.dumps({\"start_to_ready_s\": round(float(sys.argv[2]) - float(sys.argv[1]), 2)}))" "$started" "$ready" | tee "$RES/serve_startup.json"
  python3 benchmarks/serve.py --base-url "http://127.0.0.1:$port" --num-prompts 64 \
    --max-concurrency 64 --input-len 512 --range-ratio 0 --output-len 256 --vocab-size 128000 \
    --seed 2 --time-empty-chunks --label h100-llama8b-c64 --output "$RES/llama8b_serve_c64.json"
  kill -TERM $server
  wait $server
  grep -E "captured|KV cache|GPU memory|loaded" "$RES/serve_server.log" | head -8
}

stage_profile() {
  python3 benchmarks/profile_step.py --model $MODEL --load-format dummy --num-prompts 1 \
    --input-len 512 --output-len 512 --profile-steps 64 --output "$RES/profile_llama8b_bs1.json"
  python3 benchmarks/profile_step.py --model $MODEL --load-format dummy --num-prompts 64 \
    --max-num-seqs 256 --input-len 512 --output-len 256 --profile-steps 32 \
    --output "$RES/profile_llama8b_bs64.json"
  python3 benchmarks/profile_step.py --model $MODEL --load-format dummy --num-prompts 256 \
    --max-num-seqs 256 --input-len 512 --output-len 256 --profile-steps 32 \
    --output "$RES/profile_llama8b_bs256.json"
  # The first two steps of 64 fresh 512-token prompts: two full 16384-token prompt steps.
  python3 benchmarks/profile_step.py --model $MODEL --load-format dummy --num-prompts 64 \
    --max-num-seqs 256 --max-num-batched-tokens 16384 --input-len 512 --output-len 16 \
    --window prefill --profile-steps 2 --output "$RES/profile_llama8b_prefill_16384.json"
}

stage_router() {
  # Three replicas of the 8B architecture (random weights) share the GPU, each with a fixed
  # 800-block KV cache (12800 tokens: the 8 system prompts of 1024 tokens fit across three
  # caches, not in each); 8 system prompts x 40 users x 3 turns, 16 users at a time.
  python3 benchmarks/router_bench.py prefix --token-ids --model $MODEL \
    --serve-args "--load-format dummy --max-model-len 2048 --num-gpu-blocks-override 800" \
    --systems 8 --users 40 --turns 3 --system-tokens 1024 --max-tokens 32 --concurrency 16 \
    --start-one-at-a-time --warmup --output "$RES/router_prefix_8x40x3.json"
}

stage_routeroverhead() {
  python3 benchmarks/router_bench.py overhead --rate 200 --duration 20 \
    --output "$RES/router_overhead_200rps.json"
}

stage_correctness() {
  mkdir -p /tmp/smol
  for part in .smol/a/part-aa .smol/b/part-ab; do [ -f $part ] && cp $part /tmp/smol/; done
  if [ ! -f /tmp/smol/part-aa ] || [ ! -f /tmp/smol/part-ab ]; then
    echo "SmolLM2 GGUF incomplete here (carry .smol/a, then .smol/b, in two calls in a row)"
    return 0
  fi
  if [ ! -f /tmp/smol/hf/config.json ]; then
    cat /tmp/smol/part-aa /tmp/smol/part-ab >/tmp/smol/model.gguf
    sha256sum /tmp/smol/model.gguf
    fleetlm convert-gguf /tmp/smol/model.gguf --output /tmp/smol/hf || return 1
  fi
  for dtype in bfloat16 float32; do
    python3 benchmarks/gpu_correctness.py --model /tmp/smol/hf --dtype $dtype \
      --output "$RES/smollm2_correctness_$dtype.json"
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests micro batch1 batch1eager offline offlinesync hf serve profile correctness)
for stage in "${stages[@]}"; do
  echo "=== $stage"
  started=$SECONDS
  "stage_$stage" 2>&1 | tee "$RES/$stage.log" | grep -v "^\s*$" | tail -30
  echo "=== $stage done in $((SECONDS - started)) s"
  tar czf "$OUT/gpu_results.tgz" -C "$RES" .
done
