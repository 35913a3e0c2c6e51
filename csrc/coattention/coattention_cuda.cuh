#pragma once
// Pieces shared by the CUDA translation units of pathgen::coattention: the launch geometry
// (Dims) and the tensor-core forward's entry point, compiled once per dtype in
// coattention_tc_{half,bf16,float}_cuda.cu so the build runs them in parallel.
#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "coattention/coattention.h"

namespace pathgen {
namespace coattn {

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

struct Dims {
  int64_t B, M, H, Hkv, G, R, D, Dv, N;
  int64_t k_s0, k_s1, v_s0, v_s1;  // strides of k and v (last dim contiguous)
  int64_t n_splits, split_len, row_tiles, col_tiles;
  int64_t prefetch;  // tensor-core kernel: key tiles prefetched into L2 ahead of the one in work
  double scale;
};

// Keys [begin, end) of split `split` of slide b: splits of d.split_len keys, the last one runs
// to the end of the bag (empty when the bag is shorter than the split's start).
struct KeyRange {
  int64_t begin, end;
};
// Slide b's keys [cu[b], cu[b + 1]) clamped into [0, N]. The Python face checks cu_seqlens, but
// not inside torch.compile (no host sync there): a wrong offset must give wrong numbers for that
// slide, never reads or writes (probs) outside the tensors.
__device__ __forceinline__ KeyRange bag_keys(const int32_t* cu, int64_t b, int64_t N) {
  const int64_t begin = imin(imax(static_cast<int64_t>(cu[b]), 0), N);
  return {begin, imin(imax(static_cast<int64_t>(cu[b + 1]), begin), N)};
}
__device__ __forceinline__ KeyRange split_keys(const int32_t* cu, int64_t b, int64_t split, const Dims& d) {
  const KeyRange bag = bag_keys(cu, b, d.N);
  const int64_t n = bag.end - bag.begin;
  return {bag.begin + split * d.split_len,
          bag.begin + (split == d.n_splits - 1 ? n : imin(n, (split + 1) * d.split_len))};
}

// The forward's grid is (KV head x row tile x column tile, key split, slide). blockIdx.x runs
// fastest, so the CTAs that read the same keys (other row and column tiles of one split) are
// launched side by side and the later ones find those keys in L2.
struct CtaTile {
  int64_t g, row_tile, col_tile;
};
__device__ __forceinline__ CtaTile cta_tile(const Dims& d) {
  return {blockIdx.x / (d.col_tiles * d.row_tiles), (blockIdx.x / d.col_tiles) % d.row_tiles,
          blockIdx.x % d.col_tiles};
}
__device__ __forceinline__ int64_t cta_split() { return blockIdx.y; }

namespace tc {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kKeysPerWarp = 16;
constexpr int kTileKeys = kWarps * kKeysPerWarp;  // 128
constexpr int kMaxDevices = 64;                    // per-device launch state (shared-memory limits set)
constexpr int kMaxRM = 3;                          // up to 48 query rows per CTA
// 32 rows per CTA by default: fastest of 16/32/48 for case A bfloat16 on an H100 (1.39-1.69 ms against
// 1.72-1.83 ms for 48 rows, two runs). PATHGEN_COATTN_TC_MAXRM overrides (1..kMaxRM; float32 stops at 2).
constexpr int kDefaultRM = 2;
// The staged kernel (operands through cp.async rings in shared memory) and its rows per CTA.
constexpr int kDefaultStaged = 1;
constexpr int kDefaultStagedRM = 3;
// Key tiles whose rows are prefetched into L2 ahead of the CTA (PATHGEN_COATTN_TC_PREFETCH overrides).
constexpr int kDefaultPrefetch = 0;

// Staged operands (coattention_tc.cuh): per-warp rings of kStages slots of 16 rows x 128 bytes,
// query rows padded by kQPad bytes. Shared memory of a CTA of `rows` query rows: dynamic (query
// rows, rings) and in all (plus the kernel's static arrays: row maxima and sums per warp, P).
constexpr int kStages = 4;
constexpr int kSlotBytes = kKeysPerWarp * 128;
constexpr int kQPad = 64;
__host__ __device__ constexpr int64_t staged_q_pitch(int64_t d_bytes) { return d_bytes + kQPad; }
__host__ __device__ constexpr int64_t staged_smem_bytes(int rows, int64_t d_bytes) {
  return rows * staged_q_pitch(d_bytes) + static_cast<int64_t>(kWarps) * kStages * kSlotBytes;
}
__host__ __device__ constexpr int p_words(int64_t elem) {  // a row of P: 16-bit pairs or fp32, +4 words
  return elem == 4 ? kTileKeys + 4 : kTileKeys / 2 + 4;
}
__host__ __device__ constexpr int64_t staged_total_bytes(int rows, int64_t d_bytes, int64_t elem) {
  return staged_smem_bytes(rows, d_bytes) + 2 * kWarps * rows * 4 + rows * p_words(elem) * 4;
}

// An integer from the environment, read per call (tests and benchmarks switch launch plans).
int env_int(const char* name, int fallback);

// Columns per lane (2, 4, 8) for the tensor-core kernel, or 0 when it cannot take the problem.
int pick_nct(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Step 1 of the forward on the tensor cores (float16, bfloat16, float32; defined in coattention_tc.cuh,
// instantiated in coattention_tc_*_cuda.cu): rm m-tiles of 16 rows, nct columns per lane.
template <typename scalar_t>
void run(int rm, int nct, bool probs, bool staged, dim3 grid, cudaStream_t stream, const scalar_t* q, const scalar_t* k,
         const scalar_t* v, const int32_t* cu, void* part_o, void* part_lse, void* probs_raw, const Dims& d);

}  // namespace tc
}  // namespace coattn
}  // namespace pathgen
