#!/usr/bin/env bash
# Quickstart, command 1: set everything up, then run the engine on the bundled model (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/fleetlm chat "${1:-What is the capital of France? Answer in one sentence.}"
