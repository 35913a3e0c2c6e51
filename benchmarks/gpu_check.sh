#!/usr/bin/env bash
# One-call GPU check: build pathgen with CUDA against the machine's torch, check every CUDA kernel
# against its twin (the CUDA-parametrised op tests), then time the kernel benchmarks on the GPU
# and write the same JSON as the CPU suite (so GPU baselines can be saved and compared).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (OUT_DIR defaults to $OUT, else ./gpu_check_out)
#
# Needs: python3 with a CUDA torch (2.11+), nvcc, cmake>=3.28, ninja, scikit-build-core,
# pytest, pytest-benchmark. Missing pure-Python deps of pathgen are not needed by these checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PATHGEN_CUDA=on
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; p=torch.cuda.get_device_capability(); print(f"{p[0]}.{p[1]}")')}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt" || true

echo "== build (archs $TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
"$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -20
echo "build: $(( $(date +%s) - start )) s"
"$PY" -m pathgen info | tee "$OUT_DIR/info.txt"

echo "== CUDA kernels vs their twins"
"$PY" -m pytest -q -p no:cacheprovider tests/ops tests/nn -k "cuda" 2>&1 | tee "$OUT_DIR/tests.txt" | tail -15

echo "== timings"
"$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_denoise_step.py benchmarks/bench_coattention.py \
  --bench-device cuda --bench-size all --benchmark-json "$OUT_DIR/benchmarks-gpu.json" 2>&1 \
  | tee "$OUT_DIR/bench.txt" | grep -A40 "pathgen benchmark figures" || true
echo "JSON: $OUT_DIR/benchmarks-gpu.json (compare with: python benchmarks/compare.py BASELINE $OUT_DIR/benchmarks-gpu.json)"
