#!/usr/bin/env bash
# One-call GPU check: build pathgen with CUDA against the machine's torch, check every CUDA kernel
# against its twin (the CUDA-parametrised op tests), then time the kernel benchmarks on the GPU
# and write the same JSON as the CPU suite (so GPU baselines can be saved and compared).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (OUT_DIR defaults to $OUT, else ./gpu_check_out)
#
# PATHGEN_GPU_STAGES picks stages (default: all): build smoke tests plans bench backward generator cohort.
# Each stage runs under `timeout` (PATHGEN_GPU_STAGE_S, default 300 s) so one slow stage cannot eat a lease.
# Only a handful of files are written to OUT_DIR (a device lease returns at most 8); work dirs go to /tmp.
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
STAGES=${PATHGEN_GPU_STAGES:-build smoke tests plans bench backward generator cohort}
STAGE_S=${PATHGEN_GPU_STAGE_S:-300}
want() { [[ " $STAGES " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt" || true

if want build; then
  echo "== build (archs $TORCH_CUDA_ARCH_LIST)"
  start=$(date +%s)
  timeout "$STAGE_S" "$PY" -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -30
  echo "build: $(( $(date +%s) - start )) s"
fi
"$PY" -m pathgen info 2>&1 | tee "$OUT_DIR/info.txt" | tail -5

if want smoke; then
  # seconds, not minutes: the default co-attention plan once on a folded bfloat16 batch, under a short
  # timeout, so a kernel that hangs or is wrong shows before the long stages (which then skip it)
  echo "== smoke: default co-attention plan against the twin"
  if ! timeout 90 "$PY" - <<'PY' 2>&1 | tee "$OUT_DIR/smoke.txt"; then
import torch
from pathgen.ops import coattention, cu_seqlens_from_lengths
from pathgen.ops.reference import coattention_ref
torch.manual_seed(0)
for dtype in (torch.bfloat16, torch.float32):
    cu = cu_seqlens_from_lengths([1, 0, 130, 3001, 517], device="cuda")
    x = torch.randn(int(cu[-1]), 1, 1024, device="cuda", dtype=dtype)
    q = torch.randn(5, 6, 8, 1024, device="cuda", dtype=dtype) / 32
    got = coattention(q, x, x, cu, return_probs=True)
    torch.cuda.synchronize()
    want = coattention_ref(q.double(), x.double(), x.double(), cu, return_probs=True)
    errs = [(g.double() - w).abs().nan_to_num(0.0, 0.0, 0.0).max().item() for g, w in zip(got, want)]
    print(f"smoke {dtype}: max error out {errs[0]:.2e} lse {errs[1]:.2e} probs {errs[2]:.2e}")
    assert max(errs) < (3e-2 if dtype == torch.bfloat16 else 1e-4), errs
PY
    echo "smoke FAILED: the later stages run with PATHGEN_COATTN_TC_STAGED=0, skip the staged tests and the plans" \
      | tee -a "$OUT_DIR/smoke.txt"
    export PATHGEN_COATTN_TC_STAGED=0 PATHGEN_GPU_TEST_K="cuda and not staged"
    STAGES=${STAGES/plans/}
  fi
fi

if want tests; then
  echo "== CUDA kernels vs their twins"
  timeout "$STAGE_S" "$PY" -m pytest -q -p no:cacheprovider tests/ops tests/nn -k "${PATHGEN_GPU_TEST_K:-cuda}" 2>&1 \
    | tee "$OUT_DIR/tests.txt" | grep -E "passed|failed|Error|error:|assert" | tail -25 || true
fi

if want plans; then
  echo "== co-attention launch plans (realistic sizes)"
  timeout "$STAGE_S" "$PY" benchmarks/gpu_coattention_plans.py --json "$OUT_DIR/plans.json" ${PATHGEN_GPU_PLANS_ARGS:-} 2>&1 | tee "$OUT_DIR/plans.txt" || true
fi

if want bench; then
  echo "== timings"
  bench=(benchmarks/bench_denoise_step.py benchmarks/bench_coattention.py)
  want generator && bench+=(benchmarks/bench_generator.py)
  # the training-step (backward) benchmarks are their own stage, so a slow one cannot cost these timings
  timeout "$STAGE_S" "$PY" -m pytest -q -p no:cacheprovider "${bench[@]}" -k "not backward" \
    --bench-device cuda --bench-size "${PATHGEN_GPU_BENCH_SIZE:-all}" --benchmark-json "$OUT_DIR/benchmarks-gpu.json" 2>&1 \
    | tee "$OUT_DIR/bench.txt" | grep -A60 "pathgen benchmark figures" || true
fi
if want backward; then
  echo "== timings: co-attention forward + backward (a training step)"
  timeout "$STAGE_S" "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_coattention.py -k backward \
    --bench-device cuda --bench-size "${PATHGEN_GPU_BENCH_SIZE:-all}" \
    --benchmark-json "$OUT_DIR/benchmarks-gpu-backward.json" 2>&1 \
    | tee "$OUT_DIR/backward.txt" | grep -A20 "pathgen benchmark figures" || true
fi
echo "JSON: $OUT_DIR/benchmarks-gpu.json"
echo "  save it as a baseline:  python benchmarks/compare.py save gpu-h100 --from-json $OUT_DIR/benchmarks-gpu.json"
echo "  compare it:             python benchmarks/compare.py BASELINE $OUT_DIR/benchmarks-gpu.json"

if want cohort; then
  echo "== synthesize-cohort throughput on one GPU (tiny bags, 10/100/1000)"
  timeout "$STAGE_S" "$PY" benchmarks/bench_synthesize_cohort.py --device cuda --procs 1 --work /tmp/synth-cohort \
    --json "$OUT_DIR/synthesize-cohort-gpu.json" 2>&1 | tee "$OUT_DIR/synthesize-cohort.txt" | tail -5 || true
fi

# Regression check against a saved GPU baseline, here, so regressed benchmarks are re-run on the GPU
# (PATHGEN_GPU_BASELINE=gpu-h100 or a path; exit status 1 = confirmed regression, recorded in compare.txt).
if [ -n "${PATHGEN_GPU_BASELINE:-}" ]; then
  echo "== compare against $PATHGEN_GPU_BASELINE"
  set +e
  "$PY" benchmarks/compare.py compare "$PATHGEN_GPU_BASELINE" "$OUT_DIR/benchmarks-gpu.json" --quiet \
    --markdown "$OUT_DIR/compare.md" 2>&1 | tee "$OUT_DIR/compare.txt"
  echo "compare exit status: ${PIPESTATUS[0]}" | tee -a "$OUT_DIR/compare.txt"
  set -e
fi
jsons=()
for j in "$OUT_DIR/benchmarks-gpu.json" "$OUT_DIR/benchmarks-gpu-backward.json"; do if [ -f "$j" ]; then jsons+=("$j"); fi; done
[ ${#jsons[@]} -gt 0 ] && "$PY" benchmarks/compare.py report "${jsons[@]}" \
  --out /tmp/gpu-report > /dev/null 2>&1 && cp /tmp/gpu-report/speedups.md "$OUT_DIR/" \
  && echo "speedup table: $OUT_DIR/speedups.md" || echo "(no report)"
