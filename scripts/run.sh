#!/usr/bin/env bash
# Quickstart, command 1: set everything up, then serve the bundled model (SmolLM2-135M-Instruct)
# on CPU through the OpenAI-compatible API at http://127.0.0.1:8000/v1 (Ctrl-C drains and stops).
# Extra arguments go to `fleetlm serve` (e.g. --port 9000, --host 0.0.0.0, --api-key KEY).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/fleetlm serve "$@"
