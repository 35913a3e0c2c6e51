#pragma once
// The tensor-core forward kernel of pathgen::coattention (step 1 of the CUDA forward), included
// by one small translation unit per dtype.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

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
};

template <typename T>
struct FragOf {
  using type = Frag16<T>;
};
template <>
struct FragOf<float> {
  using type = Frag32;
};

template <typename scalar_t, int RM, int NCT, bool kProbs>
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

  const int64_t split = blockIdx.x;
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
      qoff[i][hh] = row_ok[i][hh] ? ((b * d.M + m) * d.H + h) * d.D + kE * t4 : 0;
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

  for (int64_t t0 = j_begin; t0 < j_end; t0 += kTileKeys) {
    // ---- scores of this warp's 16 keys
    const int64_t kw0 = t0 + warp * kKeysPerWarp;
    float s[RM][2][4];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][nt][e] = 0.f;
    const bool key_ok0 = kw0 + g4 < j_end, key_ok1 = kw0 + 8 + g4 < j_end;
    const scalar_t* krow0 = kbase + (kw0 + g4) * d.k_s0;
    const scalar_t* krow1 = kbase + (kw0 + 8 + g4) * d.k_s0;
#pragma unroll 2
    for (int64_t d0 = 0; d0 < d.D; d0 += 4 * kE) {
      const uint4 kb0 = load16(krow0 + d0, key_ok0);
      const uint4 kb1 = load16(krow1 + d0, key_ok1);
#pragma unroll
      for (int i = 0; i < RM; ++i) {
        const uint4 qa = load16(q + qoff[i][0] + d0, row_ok[i][0]);
        const uint4 qb = load16(q + qoff[i][1] + d0, row_ok[i][1]);
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
    if (has_cols) {
      const int nsteps = static_cast<int>((imin(kTileKeys, j_end - t0) + F::kStepKeys - 1) / F::kStepKeys);
      auto pv = [&](float (&dst)[RM][NCT][4]) {
        for (int ks = 0; ks < nsteps; ++ks) {
          uint32_t b0[NCT], b1[NCT];
          F::template load_v<NCT>(b0, b1, vcol, d.v_s0, t0 + ks * F::kStepKeys, j_end, t4);
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

  // this split's normalised output (and lse, once per row)
#pragma unroll
  for (int i = 0; i < RM; ++i)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      if (!row_ok[i][hh]) continue;
      const int64_t rr = r0 + 16 * i + 8 * hh + g4;
      const int64_t row = ((b * d.Hkv + g) * d.R + rr) * d.n_splits + split;
      const float inv = state_inv_sum(l_run[i][hh]);
      if (has_cols)
#pragma unroll
        for (int j = 0; j < NCT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e)
            part_o[row * d.Dv + c0 + NCT * (2 * t4 + e) + j] = acc[i][j][2 * hh + e] * inv;
      if (lead && warp == 0 && t4 == 0) part_lse[row] = state_lse(m_run[i][hh], l_run[i][hh]);
    }
}

template <typename scalar_t, int RM, int NCT>
void launch(bool probs, dim3 grid, cudaStream_t stream, const scalar_t* q, const scalar_t* k, const scalar_t* v,
            const int32_t* cu, float* po, float* pl, float* pr, const Dims& d) {
  if (probs) tc_split_kernel<scalar_t, RM, NCT, true><<<grid, kThreads, 0, stream>>>(q, k, v, cu, po, pl, pr, d);
  else tc_split_kernel<scalar_t, RM, NCT, false><<<grid, kThreads, 0, stream>>>(q, k, v, cu, po, pl, pr, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int RM>
void launch_rm(int nct, bool probs, dim3 grid, cudaStream_t stream, const scalar_t* q, const scalar_t* k,
               const scalar_t* v, const int32_t* cu, float* po, float* pl, float* pr, const Dims& d) {
  if (nct == 8) launch<scalar_t, RM, 8>(probs, grid, stream, q, k, v, cu, po, pl, pr, d);
  else if (nct == 4) launch<scalar_t, RM, 4>(probs, grid, stream, q, k, v, cu, po, pl, pr, d);
  else launch<scalar_t, RM, 2>(probs, grid, stream, q, k, v, cu, po, pl, pr, d);
}

// Entry from the dtype dispatch (float64 never gets here: pick_nct returns 0 for it).
template <typename scalar_t>
void run(int rm, int nct, bool probs, dim3 grid, cudaStream_t stream, const scalar_t* q, const scalar_t* k,
         const scalar_t* v, const int32_t* cu, void* po, void* pl, void* pr, const Dims& d) {
  if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16> ||
                std::is_same_v<scalar_t, float>) {
    float* o = static_cast<float*>(po);
    float* l = static_cast<float*>(pl);
    float* r = static_cast<float*>(pr);
    if constexpr (std::is_same_v<scalar_t, float>) {  // the host caps float32 at 2 m-tiles, 4 columns
      TORCH_CHECK(rm <= 2 && nct <= 4, "coattention: float32 tensor-core plan out of range");
      auto go = [&](auto RMc) {
        constexpr int RMv = decltype(RMc)::value;
        if (nct == 4) launch<scalar_t, RMv, 4>(probs, grid, stream, q, k, v, cu, o, l, r, d);
        else launch<scalar_t, RMv, 2>(probs, grid, stream, q, k, v, cu, o, l, r, d);
      };
      if (rm == 1) go(std::integral_constant<int, 1>{});
      else go(std::integral_constant<int, 2>{});
    } else {
      if (rm == 1) launch_rm<scalar_t, 1>(nct, probs, grid, stream, q, k, v, cu, o, l, r, d);
      else if (rm == 2) launch_rm<scalar_t, 2>(nct, probs, grid, stream, q, k, v, cu, o, l, r, d);
      else launch_rm<scalar_t, 3>(nct, probs, grid, stream, q, k, v, cu, o, l, r, d);
    }
  } else {
    TORCH_CHECK(false, "coattention: tensor-core kernel needs float16, bfloat16 or float32");
  }
}

}  // namespace tc

}  // namespace coattn
}  // namespace pathgen
