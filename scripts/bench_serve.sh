#!/usr/bin/env bash
# Serving benchmark on this machine: starts `fleetlm serve` (bundled model, CPU), runs
# benchmarks/serve.py at concurrency 1, 8 and 32, writes benchmarks/results/cpu_smollm2_serve_c*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8321}
.venv/bin/fleetlm serve --port "$PORT" --log-level warning &
server=$!
trap 'kill -TERM $server; wait $server' EXIT
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do sleep 1; done
for spec in "1 8" "8 32" "32 64"; do
  set -- $spec
  .venv/bin/python benchmarks/serve.py --base-url "http://127.0.0.1:$PORT" --max-concurrency "$1" \
    --num-prompts "$2" --input-len 128 --output-len 128 --label "cpu-c$1" \
    --output "benchmarks/results/cpu_smollm2_serve_c$1.json"
done
