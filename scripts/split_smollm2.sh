#!/usr/bin/env bash
# Splits the bundled SmolLM2 GGUF (larger than the 64 MiB a GPU-machine call carries) into two
# halves, .smol/a/part-aa and .smol/b/part-ab, for scripts/gpu_check.sh's correctness stage.
set -euo pipefail
cd "$(dirname "$0")/.."
gguf=$(.venv/bin/python -c \
  "from fleetlm.engine.model_loader.default_model import bundled_gguf_path; print(bundled_gguf_path())")
grep -qx '/.smol/' .git/info/exclude || echo /.smol/ >>.git/info/exclude
rm -rf .smol && mkdir -p .smol/a .smol/b
(cd .smol && split -n 2 "$gguf" part- && mv part-aa a/ && mv part-ab b/)
sha256sum "$gguf"
