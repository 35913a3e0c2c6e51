#!/usr/bin/env bash
# Compile every CUDA source so CUDA code never rots, even on machines without a GPU:
# a full CUDA build of the extension (torch glue included) against a CUDA build of torch.
#   CUDA_VENV     venv holding a CUDA torch (created if missing; default .venv-cuda)
#   CUDA_TORCH    pip spec of that torch (default torch==2.14.1, a local CUDA 13 wheel here)
#   TORCH_CUDA_ARCH_LIST (default 9.0)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
CUDA_VENV=${CUDA_VENV:-$ROOT/.venv-cuda}
CUDA_TORCH=${CUDA_TORCH:-torch==2.14.1}
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "[cuda-check] nvcc not found: cannot compile the CUDA sources" >&2
  exit 1
fi
if [ ! -x "$CUDA_VENV/bin/python" ]; then
  python3 -m venv "$CUDA_VENV"
fi
if ! "$CUDA_VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then
  echo "[cuda-check] installing $CUDA_TORCH into $CUDA_VENV"
  "$CUDA_VENV/bin/python" -m pip install -q "$CUDA_TORCH"
fi
"$CUDA_VENV/bin/python" -m pip install -q "scikit-build-core>=0.10" "cmake>=3.28" ninja numpy
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PATHGEN_CUDA=on
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
out=$(mktemp -d)
echo "[cuda-check] building pathgen with CUDA (archs $TORCH_CUDA_ARCH_LIST) against $("$CUDA_VENV/bin/python" -c 'import torch; print(torch.__version__)')"
start=$(date +%s)
# the CPU sources are compiled here without F16C, so the fp16 fallback of the CPU tiles (packing where
# vcvtph2ps is missing) compiles in CI too; the default build has F16C (CMakeLists.txt)
"$CUDA_VENV/bin/python" -m pip wheel -q --no-build-isolation --no-deps -w "$out" \
  -Cbuild-dir="$ROOT/build/cuda-check" -Ccmake.define.PATHGEN_CPU_FLAGS="-mavx2;-mfma" .
whl=$(ls "$out"/pathgen-*.whl)
python3 - "$whl" <<'PY'
import json, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
info = json.loads(z.read("pathgen/_build_info.json"))
so = [n for n in z.namelist() if n.startswith("pathgen/_C")]
assert info["with_cuda"], info
print(f"[cuda-check] ok: {so[0]} with CUDA kernels for {info['cuda_archs']} (nvcc {info['nvcc_version']}, torch {info['torch_version']})")
PY
echo "[cuda-check] took $(( $(date +%s) - start )) s"
rm -rf "$out"
