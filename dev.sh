#!/usr/bin/env bash
# pathgen's two commands (README):
#   bash dev.sh demo    set everything up on a fresh machine (venv, torch, build) and run the main job
#   bash dev.sh test    set up if needed, then run the test suite (what .ci/run calls)
# Other verbs: setup (environment + build only), bench (benchmarks), cuda-check (compile every .cu).
#
# Environment knobs: PATHGEN_VENV (default .venv), PATHGEN_TORCH (pip spec, default torch==2.13.0),
# PATHGEN_CUDA=auto|on|off, TORCH_CUDA_ARCH_LIST, PYTHON (interpreter used to create the venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$(pwd)
VENV=${PATHGEN_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${PATHGEN_TORCH:-torch==2.13.0}
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '\033[1m[dev.sh]\033[0m %s\n' "$*"; }

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
  fi
  local vpy="$VENV/bin/python"
  if ! "$vpy" -c "import torch" 2>/dev/null; then
    log "installing $TORCH_SPEC"
    "$vpy" -m pip install -q "$TORCH_SPEC"
  fi
  log "installing build tools and runtime dependencies"
  "$vpy" -m pip install -q "scikit-build-core>=0.10" "cmake>=3.28" ninja pybind11 numpy
  # build the extension against the torch just installed (never a second torch in an isolated env)
  log "building pathgen (extension pathgen._C) -- PATHGEN_CUDA=${PATHGEN_CUDA:-auto}"
  "$vpy" -m pip install -q --no-build-isolation -e ".[test]"
}

case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    shift
    log "running the main job: pathgen demo $*"
    "$VENV/bin/pathgen" demo "$@"
    ;;
  test)
    setup
    shift
    log "running tests"
    "$VENV/bin/python" -m pytest -q -m "not slow" "$@"
    ;;
  bench)
    setup
    shift
    "$VENV/bin/python" -m pytest benchmarks -q "$@"
    ;;
  cuda-check)
    shift
    bash "$ROOT/.ci/cuda_check.sh" "$@"
    ;;
  *)
    echo "usage: bash dev.sh {demo|test|setup|bench|cuda-check} [args...]" >&2
    exit 1
    ;;
esac
