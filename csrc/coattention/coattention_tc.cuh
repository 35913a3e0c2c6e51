#pragma once
// The tensor-core forward kernel of pathgen::coattention (step 1 of the CUDA forward), included
// by one small translation unit per dtype.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <mutex>
#include <type_traits>

#include "coattention/coattention_cuda.cuh"

namespace pathgen {
namespace coattn {

// ---- tensor-core forward --------------------------------------------------------------------
//
// One CTA of 8 warps per (key split, KV head x row tile x column tile, slide), as split_kernel.
// Per tile of 128 keys:
//   scores  S = Q K^T: warp w owns keys [16w, 16w + 16) (two 8-key n-tiles) and all NR = 16 RM
//           rows (RM m-tiles), over the whole head dim, with A = Q and B = K^T. Each lane loads
//           16 bytes of its Q rows and of its key at a time; the chunk (32 16-bit or 16 fp32
//           values across the 4 lanes of a row) is dealt to two k-steps in a fixed permutation,
//           the same for A and B, so the dot products are unchanged.
//   softmax row maxima and sums meet in shared memory; every warp then holds the same running
//           (m, l) per row; P goes to shared memory (16-bit pairs, or fp32).
//   PV      O += P V: warp w owns CW = 8 NCT output columns, A = P from shared memory, B = V
//           loaded NCT elements per lane per key (16-bit: paired across keys with byte_perm);
//           n-tile j's column n is physical column c0 + NCT n + j (a permutation again).
// Raw scores go to `probs` from the score registers (lead column tile only).
// Operands: kStaged (the default where the shared memory fits) streams each warp's K rows and V
// columns through a cp.async ring and reads Q from shared memory (see "staged operands" below);
// otherwise each lane loads them straight from global memory between the barriers.
// Float16 / bfloat16 use mma m16n8k16 with fp32 accumulation. Float32 uses m16n8k8 TF32 three
// times per product (x = hi + lo, hi lo' + lo hi' + hi hi'; "3xTF32"), which keeps float32
// accuracy on the tensor cores; float64 and odd shapes stay on split_kernel.
namespace tc {



__device__ __forceinline__ uint4 load16(const void* src, bool ok) {
  return ok ? __ldg(reinterpret_cast<const uint4*>(src)) : make_uint4(0, 0, 0, 0);
}

// NW consecutive 32-bit words (NW = 1, 2, 4, 8); zeros when !ok.
template <int NW>
__device__ __forceinline__ void load_words(uint32_t (&w)[NW], const void* src, bool ok) {
  if constexpr (NW >= 4) {
#pragma unroll
    for (int i = 0; i < NW / 4; ++i) {
      const uint4 x = load16(static_cast<const uint4*>(src) + i, ok);
      w[4 * i] = x.x, w[4 * i + 1] = x.y, w[4 * i + 2] = x.z, w[4 * i + 3] = x.w;
    }
  } else if constexpr (NW == 2) {
    const uint2 x = ok ? __ldg(reinterpret_cast<const uint2*>(src)) : make_uint2(0, 0);
    w[0] = x.x, w[1] = x.y;
  } else {
    w[0] = ok ? __ldg(reinterpret_cast<const uint32_t*>(src)) : 0u;
  }
}

// ---- staged operands (kStaged): cp.async through shared memory ----------------------------
//
// Each warp streams what it reads through its own ring of kStages slots of shared memory:
// per 128-key tile, first its 16 keys' rows of K in chunks of 128 bytes of the head dim (the
// scores), then the tile's V rows for its 128 bytes of output columns, one mma k-step of keys
// per slot (P V). Items are issued kStages - 1 ahead, so the loads of the next chunks (and of the
// next tile's K while P V runs) are in flight while the tensor cores work; the warp waits for
// its own copies only (cp.async.wait_group, then __syncwarp), never for the other warps.
// The query rows of the CTA are copied to shared memory once. 16-byte groups are placed so that
// the fragment loads of a warp hit distinct banks (K: group ^ 4 (key & 1); V: Frag::vswz; Q rows
// padded by 64 bytes).
// (kStages, kSlotBytes, kQPad and the shared-memory sizes: coattention_cuda.cuh, which the host reads too)

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {  // zeros when !ok
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
// [p, p + bytes) into L2 (bytes a multiple of 16, p 16-byte aligned)
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#else
  for (uint32_t o = 0; o < bytes; o += 128) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(static_cast<const char*>(p) + o));
#endif
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

template <typename T>
struct Frag16 {  // float16 / bfloat16: m16n8k16
  static constexpr int kElems = 8;       // elements per 16-byte load
  static constexpr int kStepKeys = 16;   // keys per PV k-step
  static constexpr int kPWords = kTileKeys / 2 + 4;  // P row in words (+4: conflict-free A loads)
  static constexpr bool kFresh = false;  // see Frag32

  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<T, at::Half>) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
          "{%0,%1,%2,%3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
  }
  // P[row][kk], P[row][kk + 1] (kk even) into the row's words
  static __device__ __forceinline__ void store_p(uint32_t* row, int kk, float p0, float p1) {
    if constexpr (std::is_same_v<T, at::Half>) {
      const __half2 h = __floats2half2_rn(p0, p1);
      row[kk / 2] = *reinterpret_cast<const uint32_t*>(&h);
    } else {
      const __nv_bfloat162 h = __floats2bfloat162_rn(p0, p1);
      row[kk / 2] = *reinterpret_cast<const uint32_t*>(&h);
    }
  }
  // B fragments of V for the 16 keys from `key0` (keys 2t4, 2t4 + 1, 2t4 + 8, 2t4 + 9 of them)
  template <int NCT>
  static __device__ __forceinline__ void load_v(uint32_t (&b0)[NCT], uint32_t (&b1)[NCT], const T* vcol,
                                                int64_t v_s0, int64_t key0, int64_t j_end, int t4) {
    constexpr int NW = NCT / 2;
    uint32_t w0[NW], w1[NW], w8[NW], w9[NW];
    const int64_t kb = key0 + 2 * t4;
    load_words<NW>(w0, vcol + kb * v_s0, kb < j_end);
    load_words<NW>(w1, vcol + (kb + 1) * v_s0, kb + 1 < j_end);
    load_words<NW>(w8, vcol + (kb + 8) * v_s0, kb + 8 < j_end);
    load_words<NW>(w9, vcol + (kb + 9) * v_s0, kb + 9 < j_end);
#pragma unroll
    for (int j = 0; j < NCT; ++j) {
      const uint32_t sel = (j & 1) ? 0x7632 : 0x5410;  // element j of each key, lower key in the low half
      b0[j] = __byte_perm(w0[j / 2], w1[j / 2], sel);
      b1[j] = __byte_perm(w8[j / 2], w9[j / 2], sel);
    }
  }
  // Staged (NCT = 8): the step's 16 keys are rows of 128 bytes in `slot`, group c of row r at
  // c ^ vswz(r); a lane reads group g4 of rows 2t4, 2t4 + 1, 2t4 + 8, 2t4 + 9, conflict-free.
  static __device__ __forceinline__ int vswz(int r) { return ((r >> 1) & 3) << 1; }
  template <int NCT>
  static __device__ __forceinline__ void load_v_smem(uint32_t (&b0)[NCT], uint32_t (&b1)[NCT], const uint8_t* slot,
                                                     int g4, int t4) {
    static_assert(NCT == 8, "staged V rows are 128 bytes: 8 columns per lane");
    auto row = [&](int r) { return *reinterpret_cast<const uint4*>(slot + r * 128 + ((g4 ^ vswz(r)) << 4)); };
    const uint4 x0 = row(2 * t4), x1 = row(2 * t4 + 1), x8 = row(2 * t4 + 8), x9 = row(2 * t4 + 9);
    const uint32_t w0[4] = {x0.x, x0.y, x0.z, x0.w}, w1[4] = {x1.x, x1.y, x1.z, x1.w};
    const uint32_t w8[4] = {x8.x, x8.y, x8.z, x8.w}, w9[4] = {x9.x, x9.y, x9.z, x9.w};
#pragma unroll
    for (int j = 0; j < NCT; ++j) {
      const uint32_t sel = (j & 1) ? 0x7632 : 0x5410;
      b0[j] = __byte_perm(w0[j / 2], w1[j / 2], sel);
      b1[j] = __byte_perm(w8[j / 2], w9[j / 2], sel);
    }
  }
};

struct Frag32 {  // float32 on TF32 tensor cores, three products per mma (3xTF32): m16n8k8
  static constexpr int kElems = 4;
  static constexpr int kStepKeys = 8;
  static constexpr int kPWords = kTileKeys + 4;
  // The tensor cores round each mma's fp32 sum toward zero, a bias that grows with the number of
  // mma accumulated into one fragment (3 per k-step here): measured 3e-5 error on D = 2048 scores,
  // 50x the float32 twin's. So every 16-element head-dim chunk of scores, and every 128-key tile
  // of P V, is summed in a fresh fragment and added to the running fp32 values with IEEE adds.
  static constexpr bool kFresh = true;

  static __device__ __forceinline__ uint32_t to_tf32(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
  }
  static __device__ __forceinline__ void split(uint32_t x, uint32_t& hi, uint32_t& lo) {
    const float f = __uint_as_float(x);
    hi = to_tf32(f);
    lo = to_tf32(f - __uint_as_float(hi));
  }
  static __device__ __forceinline__ void mma1(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    uint32_t ah[4], al[4], bh0, bl0, bh1, bl1;
#pragma unroll
    for (int i = 0; i < 4; ++i) split(a[i], ah[i], al[i]);
    split(b0, bh0, bl0);
    split(b1, bh1, bl1);
    mma1(c, al, bh0, bh1);  // small terms first
    mma1(c, ah, bl0, bl1);
    mma1(c, ah, bh0, bh1);
  }
  static __device__ __forceinline__ void store_p(uint32_t* row, int kk, float p0, float p1) {
    *reinterpret_cast<float2*>(row + kk) = make_float2(p0, p1);
  }
  // B fragments of V for the 8 keys from `key0` (keys t4 and t4 + 4 of them)
  template <int NCT>
  static __device__ __forceinline__ void load_v(uint32_t (&b0)[NCT], uint32_t (&b1)[NCT], const float* vcol,
                                                int64_t v_s0, int64_t key0, int64_t j_end, int t4) {
    const int64_t kb = key0 + t4;
    load_words<NCT>(b0, vcol + kb * v_s0, kb < j_end);
    load_words<NCT>(b1, vcol + (kb + 4) * v_s0, kb + 4 < j_end);
  }
  // Staged (NCT = 4): 8 rows of 128 bytes; a lane reads group g4 of rows t4 and t4 + 4.
  static __device__ __forceinline__ int vswz(int r) { return (r & 3) << 1; }
  template <int NCT>
  static __device__ __forceinline__ void load_v_smem(uint32_t (&b0)[NCT], uint32_t (&b1)[NCT], const uint8_t* slot,
                                                     int g4, int t4) {
    static_assert(NCT == 4, "staged V rows are 128 bytes: 4 columns per lane");
    const uint4 x0 = *reinterpret_cast<const uint4*>(slot + t4 * 128 + ((g4 ^ vswz(t4)) << 4));
    const uint4 x4 = *reinterpret_cast<const uint4*>(slot + (t4 + 4) * 128 + ((g4 ^ vswz(t4 + 4)) << 4));
    b0[0] = x0.x, b0[1] = x0.y, b0[2] = x0.z, b0[3] = x0.w;
    b1[0] = x4.x, b1[1] = x4.y, b1[2] = x4.z, b1[3] = x4.w;
  }
};

template <typename T>
struct FragOf {
  using type = Frag16<T>;
};
template <>
struct FragOf<float> {
  using type = Frag32;
};

// One warp's ring (see "staged operands"). Items, per tile of kTileKeys keys: nc K chunks, then
// the tile's V steps; an issue cursor (tile start, part, slot) runs kStages - 1 items ahead of
// the consumer, past the split's end with empty groups.
template <typename F>
struct WarpStream {
  uint8_t* ring;         // kStages slots of kSlotBytes
  const uint8_t* kbase;  // k + g k_s1, in bytes
  const uint8_t* vbase;  // v + g v_s1 + c0
  int64_t k_row, v_row;  // row strides in bytes
  int64_t j_end;
  int64_t it_t0;         // issue cursor: tile start, part of the tile, slot
  int it_part, it_slot, slot;  // slot: the consumer's next
  int nc, ipt, warp, lane;
  bool has_cols;

  __device__ __forceinline__ void issue() {
    if (it_t0 < j_end) {
      uint8_t* dst = ring + it_slot * kSlotBytes;
      const int r0 = lane >> 3, c = lane & 7;  // rows r0 + 4i, 16-byte group c
      if (it_part < nc) {  // 16 keys x 128 bytes: 4 groups of 16 bytes per lane
        const int64_t key0 = it_t0 + warp * kKeysPerWarp + r0;
        const uint8_t* src = kbase + key0 * k_row + it_part * 128 + c * 16;
        const int grp = (c ^ ((r0 & 1) << 2)) << 4;  // r0 + 4i has r0's parity
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const bool ok = key0 + 4 * i < j_end;
          cp_async16(dst + (r0 + 4 * i) * 128 + grp, ok ? src + 4 * i * k_row : kbase, ok);
        }
      } else if (has_cols) {  // kStepKeys keys x 128 bytes
        const int64_t key0 = it_t0 + static_cast<int64_t>(it_part - nc) * F::kStepKeys + r0;
        const uint8_t* src = vbase + key0 * v_row + c * 16;
#pragma unroll
        for (int i = 0; i < F::kStepKeys / 4; ++i) {
          const int r = r0 + 4 * i;
          const bool ok = key0 + 4 * i < j_end;
          cp_async16(dst + r * 128 + ((c ^ F::vswz(r)) << 4), ok ? src + 4 * i * v_row : vbase, ok);
        }
      }
    }
    cp_async_commit();  // empty past the end: the group count stays uniform
    it_slot = it_slot + 1 == kStages ? 0 : it_slot + 1;
    if (++it_part == ipt) it_part = 0, it_t0 += kTileKeys;
  }
  __device__ __forceinline__ void prologue() {
#pragma unroll
    for (int i = 0; i < kStages - 1; ++i) issue();
  }
  // the next item's slot, once this warp's copies of it have landed; the item kStages - 1 ahead
  // goes to the slot every lane finished reading at the previous call
  __device__ __forceinline__ const uint8_t* next() {
    cp_async_wait<kStages - 2>();
    __syncwarp();
    issue();
    const uint8_t* s = ring + slot * kSlotBytes;
    slot = slot + 1 == kStages ? 0 : slot + 1;
    return s;
  }
};

template <typename scalar_t, int RM, int NCT, bool kProbs, bool kStaged>
__global__ void __launch_bounds__(kThreads, 1)
tc_split_kernel(const scalar_t* __restrict__ q,   // [B, M, H, D] contiguous
                const scalar_t* __restrict__ k,   // [N, Hkv, D]
                const scalar_t* __restrict__ v,   // [N, Hkv, Dv]
                const int32_t* __restrict__ cu,   // [B + 1]
                float* __restrict__ part_o,       // [B, Hkv, R, n_splits, Dv]
                float* __restrict__ part_lse,     // [B, Hkv, R, n_splits]
                float* __restrict__ probs,        // [N, H, M] raw scores (kProbs)
                Dims d) {
  using F = typename FragOf<scalar_t>::type;
  constexpr int NR = 16 * RM;
  constexpr int CW = 8 * NCT;      // output columns per warp
  constexpr int CT = kWarps * CW;  // per CTA
  constexpr int kE = F::kElems;    // elements per 16-byte load; a head-dim chunk is 4 kE

  const int64_t split = cta_split();
  const int64_t b = blockIdx.z;
  const CtaTile tile = cta_tile(d);
  const int64_t g = tile.g, row_tile = tile.row_tile, col_tile = tile.col_tile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g4 = lane / 4, t4 = lane % 4;
  const int64_t r0 = row_tile * NR;
  const int64_t c0 = col_tile * CT + warp * CW;  // this warp's first output column
  const bool lead = col_tile == 0;
  const bool has_cols = c0 < d.Dv;

  const KeyRange keys = split_keys(cu, b, split, d);
  const int64_t j_begin = keys.begin, j_end = keys.end;

  __shared__ float s_max[kWarps][NR];
  __shared__ float s_sum[kWarps][NR];
  __shared__ __align__(16) uint32_t s_p[NR][F::kPWords];
  static_assert(F::kPWords == p_words(sizeof(scalar_t)), "staged_total_bytes must count s_p as declared");

  // offset in q of this KV head's query row rr (query rr / G, head g G + rr % G)
  auto q_row = [&](int64_t rr) { return ((b * d.M + rr / d.G) * d.H + g * d.G + rr % d.G) * d.D; };
  // this lane's rows: (m-tile i, half hh) -> row r0 + 16 i + 8 hh + g4
  int64_t qoff[RM][2];
  int32_t poff[RM][2];
  bool row_ok[RM][2];
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int64_t rr = r0 + 16 * i + 8 * hh + g4;
      row_ok[i][hh] = rr < d.R;
      const int64_t m = rr / d.G, h = g * d.G + rr % d.G;
      qoff[i][hh] = row_ok[i][hh] ? q_row(rr) + kE * t4 : 0;
      poff[i][hh] = static_cast<int32_t>(h * d.M + m);
    }

  float acc[RM][NCT][4];
  float m_run[RM][2], l_run[RM][2];
#pragma unroll
  for (int i = 0; i < RM; ++i) {
#pragma unroll
    for (int j = 0; j < NCT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
    m_run[i][0] = m_run[i][1] = -INFINITY;
    l_run[i][0] = l_run[i][1] = 0.f;
  }
  const float scale = static_cast<float>(d.scale);
  const scalar_t* kbase = k + g * d.k_s1 + kE * t4;
  const scalar_t* vcol = v + g * d.v_s1 + c0 + NCT * g4;

  // staged: the CTA's query rows to shared memory (zeros past R), each warp's ring primed
  extern __shared__ __align__(128) uint8_t tc_smem[];
  const int64_t q_pitch = staged_q_pitch(d.D * static_cast<int64_t>(sizeof(scalar_t)));
  const uint8_t* sq = tc_smem;
  WarpStream<F> st{};
  if constexpr (kStaged) {
    const int pieces = static_cast<int>(d.D * static_cast<int64_t>(sizeof(scalar_t)) / 16);  // per row
    for (int idx = threadIdx.x; idx < NR * pieces; idx += kThreads) {
      const int r = idx / pieces, c = idx % pieces;
      const int64_t rr = r0 + r;
      const bool ok = rr < d.R;
      const scalar_t* src = ok ? q + q_row(rr) : q;
      cp_async16(tc_smem + r * q_pitch + c * 16, reinterpret_cast<const uint8_t*>(src) + (ok ? c * 16 : 0), ok);
    }
    cp_async_commit();
    st.ring = tc_smem + NR * q_pitch + static_cast<int64_t>(warp) * kStages * kSlotBytes;
    st.kbase = reinterpret_cast<const uint8_t*>(k + g * d.k_s1);
    st.vbase = reinterpret_cast<const uint8_t*>(v + g * d.v_s1 + c0);
    st.k_row = d.k_s0 * static_cast<int64_t>(sizeof(scalar_t));
    st.v_row = d.v_s0 * static_cast<int64_t>(sizeof(scalar_t));
    st.j_end = j_end, st.it_t0 = j_begin, st.it_part = 0, st.it_slot = 0, st.slot = 0;
    st.nc = static_cast<int>(d.D * static_cast<int64_t>(sizeof(scalar_t)) / 128);
    st.ipt = st.nc + kTileKeys / F::kStepKeys;
    st.warp = warp, st.lane = lane, st.has_cols = has_cols;
    st.prologue();
    cp_async_wait<kStages - 1>();  // the query rows (the oldest group)
    __syncthreads();
  }

  // Whole rows of the keys of a tile into L2, one prefetch per row (threads 0-127: K; 128-255: this
  // column tile's part of V, unless V lies inside K's rows), d.prefetch tiles ahead. Both ways of
  // loading operands read a tile as 128-byte pieces of 128 rows 2 KB apart (D 1024, 16-bit), which
  // DRAM serves poorly; the prefetch reads it in address order.
  const bool v_in_k = static_cast<const void*>(v) == static_cast<const void*>(k) && d.v_s0 == d.k_s0 &&
                      d.v_s1 == d.k_s1;
  const int64_t v_cols = imin(CT, d.Dv - col_tile * CT);
  auto prefetch_tile = [&](int64_t t) {
    const int64_t key = t + threadIdx.x % kTileKeys;
    if (key >= j_end) return;
    if (threadIdx.x < kTileKeys) {
      prefetch_l2(k + key * d.k_s0 + g * d.k_s1, static_cast<uint32_t>(d.D * sizeof(scalar_t)));
    } else if (!v_in_k && v_cols > 0) {
      const scalar_t* row = v + key * d.v_s0 + g * d.v_s1 + col_tile * CT;
      const uint32_t bytes = static_cast<uint32_t>(v_cols * sizeof(scalar_t));
      if ((reinterpret_cast<uintptr_t>(row) & 15) == 0 && (bytes & 15) == 0) prefetch_l2(row, bytes);
    }
  };
  for (int64_t p = 0; p < d.prefetch; ++p) prefetch_tile(j_begin + p * kTileKeys);

  for (int64_t t0 = j_begin; t0 < j_end; t0 += kTileKeys) {
    if (d.prefetch > 0) prefetch_tile(t0 + d.prefetch * kTileKeys);
    // ---- scores of this warp's 16 keys
    const int64_t kw0 = t0 + warp * kKeysPerWarp;
    float s[RM][2][4];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][nt][e] = 0.f;
    // one head-dim chunk of 4 kE (64 bytes): this lane's 16 bytes of keys g4, g4 + 8 and of its Q rows
    auto score_chunk = [&](const uint4& kb0, const uint4& kb1, auto&& q_rows) {
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        uint4 qa, qb;
        q_rows(i, qa, qb);
        const uint32_t a0[4] = {qa.x, qb.x, qa.y, qb.y};
        const uint32_t a1[4] = {qa.z, qb.z, qa.w, qb.w};
        if constexpr (F::kFresh) {
          float t[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
          F::mma(t[0], a0, kb0.x, kb0.y);
          F::mma(t[0], a1, kb0.z, kb0.w);
          F::mma(t[1], a0, kb1.x, kb1.y);
          F::mma(t[1], a1, kb1.z, kb1.w);
#pragma unroll
          for (int e = 0; e < 4; ++e) s[i][0][e] += t[0][e], s[i][1][e] += t[1][e];
        } else {
          F::mma(s[i][0], a0, kb0.x, kb0.y);
          F::mma(s[i][0], a1, kb0.z, kb0.w);
          F::mma(s[i][1], a0, kb1.x, kb1.y);
          F::mma(s[i][1], a1, kb1.z, kb1.w);
        }
      }
    };
    if constexpr (kStaged) {
      const int swz = (g4 & 1) << 2;  // keys g4 and g4 + 8 share the parity
      for (int ch = 0; ch < st.nc; ++ch) {
        const uint8_t* slot = st.next();
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int grp = (4 * half + t4) ^ swz;
          const uint4 kb0 = *reinterpret_cast<const uint4*>(slot + g4 * 128 + (grp << 4));
          const uint4 kb1 = *reinterpret_cast<const uint4*>(slot + (g4 + 8) * 128 + (grp << 4));
          const int64_t qb_off = ch * 128 + half * 64 + 16 * t4;
          score_chunk(kb0, kb1, [&](int i, uint4& qa, uint4& qb) {
            qa = *reinterpret_cast<const uint4*>(sq + (16 * i + g4) * q_pitch + qb_off);
            qb = *reinterpret_cast<const uint4*>(sq + (16 * i + 8 + g4) * q_pitch + qb_off);
          });
        }
      }
    } else {
      const bool key_ok0 = kw0 + g4 < j_end, key_ok1 = kw0 + 8 + g4 < j_end;
      const scalar_t* krow0 = kbase + (kw0 + g4) * d.k_s0;
      const scalar_t* krow1 = kbase + (kw0 + 8 + g4) * d.k_s0;
#pragma unroll 2
      for (int64_t d0 = 0; d0 < d.D; d0 += 4 * kE) {
        score_chunk(load16(krow0 + d0, key_ok0), load16(krow1 + d0, key_ok1), [&](int i, uint4& qa, uint4& qb) {
          qa = load16(q + qoff[i][0] + d0, row_ok[i][0]);
          qb = load16(q + qoff[i][1] + d0, row_ok[i][1]);
        });
      }
    }
    // scale, mask, raw scores to probs, this warp's row maxima
    float wmax[RM][2];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      wmax[i][0] = wmax[i][1] = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hh = e / 2;
          const int64_t key = kw0 + 8 * nt + 2 * t4 + (e & 1);
          const bool ok = key < j_end;
          const float val = ok ? s[i][nt][e] * scale : -INFINITY;
          s[i][nt][e] = val;
          if (kProbs && lead && ok && row_ok[i][hh]) probs[key * d.H * d.M + poff[i][hh]] = val;
          wmax[i][hh] = fmaxf(wmax[i][hh], val);
        }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        wmax[i][hh] = fmaxf(wmax[i][hh], __shfl_xor_sync(0xffffffffu, wmax[i][hh], 1));
        wmax[i][hh] = fmaxf(wmax[i][hh], __shfl_xor_sync(0xffffffffu, wmax[i][hh], 2));
        if (t4 == 0) s_max[warp][16 * i + 8 * hh + g4] = wmax[i][hh];
      }
    }
    __syncthreads();
    // running max over the whole tile (identical in every warp), P, partial sums
    float alpha[RM][2];
#pragma unroll
    for (int i = 0; i < RM; ++i) {
      float rsum[2] = {0.f, 0.f};
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float tmax = -INFINITY;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) tmax = fmaxf(tmax, s_max[w][16 * i + 8 * hh + g4]);
        const float m_new = fmaxf(m_run[i][hh], tmax);  // finite: every tile has a valid key
        alpha[i][hh] = m_run[i][hh] == -INFINITY ? 0.f : __expf(m_run[i][hh] - m_new);
        m_run[i][hh] = m_new;
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          p[e] = __expf(s[i][nt][e] - m_run[i][e / 2]);  // exp(-inf) = 0 for masked keys
          rsum[e / 2] += p[e];
        }
        const int kk = warp * kKeysPerWarp + 8 * nt + 2 * t4;  // key within the tile
        F::store_p(s_p[16 * i + g4], kk, p[0], p[1]);
        F::store_p(s_p[16 * i + 8 + g4], kk, p[2], p[3]);
      }
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        rsum[hh] += __shfl_xor_sync(0xffffffffu, rsum[hh], 1);
        rsum[hh] += __shfl_xor_sync(0xffffffffu, rsum[hh], 2);
        if (t4 == 0) s_sum[warp][16 * i + 8 * hh + g4] = rsum[hh];
      }
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float tsum = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) tsum += s_sum[w][16 * i + 8 * hh + g4];
        l_run[i][hh] = alpha[i][hh] * l_run[i][hh] + tsum;
      }
    // ---- O = alpha O + P V on this warp's columns (keys past the split's end load as zeros;
    // a rolled loop: unrolling all k-steps measured slower on an H100, 1.11 against 0.71 ms, case B)
    // (staged: every warp takes all of the tile's V items from its ring, with columns or not)
    if (kStaged || has_cols) {
      const int nsteps = static_cast<int>((imin(kTileKeys, j_end - t0) + F::kStepKeys - 1) / F::kStepKeys);
      auto pv = [&](float (&dst)[RM][NCT][4]) {
        for (int ks = 0; ks < (kStaged ? kTileKeys / F::kStepKeys : nsteps); ++ks) {
          uint32_t b0[NCT], b1[NCT];
          if constexpr (kStaged) {
            const uint8_t* slot = st.next();
            if (!has_cols || ks >= nsteps) continue;
            F::template load_v_smem<NCT>(b0, b1, slot, g4, t4);
          } else {
            F::template load_v<NCT>(b0, b1, vcol, d.v_s0, t0 + ks * F::kStepKeys, j_end, t4);
          }
          uint32_t a[RM][4];
#pragma unroll
          for (int i = 0; i < RM; ++i) {
            a[i][0] = s_p[16 * i + g4][8 * ks + t4];
            a[i][1] = s_p[16 * i + 8 + g4][8 * ks + t4];
            a[i][2] = s_p[16 * i + g4][8 * ks + 4 + t4];
            a[i][3] = s_p[16 * i + 8 + g4][8 * ks + 4 + t4];
          }
#pragma unroll
          for (int j = 0; j < NCT; ++j)
#pragma unroll
            for (int i = 0; i < RM; ++i) F::mma(dst[i][j], a[i], b0[j], b1[j]);
        }
      };
      if constexpr (F::kFresh) {
        float t[RM][NCT][4];
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
          for (int j = 0; j < NCT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) t[i][j][e] = 0.f;
        pv(t);
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
          for (int j = 0; j < NCT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = acc[i][j][e] * alpha[i][e / 2] + t[i][j][e];
      } else {
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
          for (int j = 0; j < NCT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] *= alpha[i][e / 2];
        pv(acc);
      }
    }
    __syncthreads();  // s_max, s_sum, s_p are rewritten by the next tile
  }
  if constexpr (kStaged) cp_async_wait<0>();  // only empty groups are left

  // this split's normalised output (and lse, once per row)
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      if (!row_ok[i][hh]) continue;
      const int64_t rr = r0 + 16 * i + 8 * hh + g4;
      const int64_t row = ((b * d.Hkv + g) * d.R + rr) * d.n_splits + split;
      const float inv = state_inv_sum(l_run[i][hh]);
      if (has_cols && j_end > j_begin)  // an empty split only writes lse = -inf (combine skips it)
#pragma unroll
        for (int j = 0; j < NCT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            part_o[row * d.Dv + c0 + NCT * (2 * t4 + e) + j] = acc[i][j][2 * hh + e] * inv;
      if (lead && warp == 0 && t4 == 0) part_lse[row] = state_lse(m_run[i][hh], l_run[i][hh]);
    }
}

template <typename scalar_t, int RM, int NCT, bool kProbs>
void launch_probs(bool staged, dim3 grid, cudaStream_t stream, const scalar_t* q, const scalar_t* k,
                  const scalar_t* v, const int32_t* cu, float* po, float* pl, float* pr, const Dims& d) {
  // staged (128 bytes of output columns per warp): the host decided it, the head dim in whole 128-byte
  // chunks and the shared memory (staged_total_bytes, the kernel's arrays as declared) within the device's
  if constexpr (NCT * 8 * sizeof(scalar_t) == 128) {
    if (staged) {
      auto kernel = tc_split_kernel<scalar_t, RM, NCT, kProbs, true>;
      const int64_t dyn = staged_smem_bytes(16 * RM, d.D * static_cast<int64_t>(sizeof(scalar_t)));
      // the kernel's dynamic shared-memory limit, per device, raised only when a launch needs more than
      // was set before (not a runtime call per launch: a sampler makes thousands), and only ever raised,
      // under a lock, so no launch sees it lowered by another thread
      static std::atomic<int> limit_set[kMaxDevices] = {};
      static std::mutex raise;
      const int dev = c10::cuda::current_device();
      TORCH_CHECK(dev >= 0 && dev < kMaxDevices, "coattention: device index ", dev, " out of range");
      if (limit_set[dev].load(std::memory_order_acquire) < dyn) {
        const std::lock_guard<std::mutex> lock(raise);
        if (limit_set[dev].load(std::memory_order_relaxed) < dyn) {
          C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn)));
          limit_set[dev].store(static_cast<int>(dyn), std::memory_order_release);
        }
      }
      kernel<<<grid, kThreads, static_cast<size_t>(dyn), stream>>>(q, k, v, cu, po, pl, pr, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  tc_split_kernel<scalar_t, RM, NCT, kProbs, false><<<grid, kThreads, 0, stream>>>(q, k, v, cu, po, pl, pr, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int RM, int NCT>
void launch(bool probs, bool staged, dim3 grid, cudaStream_t stream, const scalar_t* q, const scalar_t* k,
            const scalar_t* v, const int32_t* cu, float* po, float* pl, float* pr, const Dims& d) {
  if (probs) launch_probs<scalar_t, RM, NCT, true>(staged, grid, stream, q, k, v, cu, po, pl, pr, d);
  else launch_probs<scalar_t, RM, NCT, false>(staged, grid, stream, q, k, v, cu, po, pl, pr, d);
}

template <typename scalar_t, int RM>
void launch_rm(int nct, bool probs, bool staged, dim3 grid, cudaStream_t stream, const scalar_t* q,
               const scalar_t* k, const scalar_t* v, const int32_t* cu, float* po, float* pl, float* pr,
               const Dims& d) {
  if (nct == 8) launch<scalar_t, RM, 8>(probs, staged, grid, stream, q, k, v, cu, po, pl, pr, d);
  else if (nct == 4) launch<scalar_t, RM, 4>(probs, staged, grid, stream, q, k, v, cu, po, pl, pr, d);
  else launch<scalar_t, RM, 2>(probs, staged, grid, stream, q, k, v, cu, po, pl, pr, d);
}

// Entry from the dtype dispatch (float64 never gets here: pick_nct returns 0 for it).
template <typename scalar_t>
void run(int rm, int nct, bool probs, bool staged, dim3 grid, cudaStream_t stream, const scalar_t* q,
         const scalar_t* k, const scalar_t* v, const int32_t* cu, void* po, void* pl, void* pr, const Dims& d) {
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16> ||
                std::is_same_v<scalar_t, float>) {
    float* o = static_cast<float*>(po);
    float* l = static_cast<float*>(pl);
    float* r = static_cast<float*>(pr);
    if constexpr (std::is_same_v<scalar_t, float>) {  // the host caps float32 at 2 m-tiles, 4 columns
      TORCH_CHECK(rm <= 2 && nct <= 4, "coattention: float32 tensor-core plan out of range");
      auto go = [&](auto RMc) {
        constexpr int RMv = decltype(RMc)::value;
        if (nct == 4) launch<scalar_t, RMv, 4>(probs, staged, grid, stream, q, k, v, cu, o, l, r, d);
        else launch<scalar_t, RMv, 2>(probs, staged, grid, stream, q, k, v, cu, o, l, r, d);
      };
      if (rm == 1) go(std::integral_constant<int, 1>{});
      else go(std::integral_constant<int, 2>{});
    } else {
      if (rm == 1) launch_rm<scalar_t, 1>(nct, probs, staged, grid, stream, q, k, v, cu, o, l, r, d);
      else if (rm == 2) launch_rm<scalar_t, 2>(nct, probs, staged, grid, stream, q, k, v, cu, o, l, r, d);
      else launch_rm<scalar_t, 3>(nct, probs, staged, grid, stream, q, k, v, cu, o, l, r, d);
    }
  } else {
    TORCH_CHECK(false, "coattention: tensor-core kernel needs float16, bfloat16 or float32");
  }
}

}  // namespace tc

}  // namespace coattn
}  // namespace pathgen
