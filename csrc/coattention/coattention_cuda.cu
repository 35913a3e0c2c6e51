// CUDA backend of pathgen::coattention and its backward (flash-decoding style split-KV).
//
// Forward, three launches:
//   1. split_kernel: one CTA per (key split, KV head x 16-row tile x column tile, slide). The
//      CTA streams its split's keys in tiles of kTileKeys: scores for its (up to) 16 query rows
//      (one warp per key, lanes over D, warp-reduced), the online-softmax update of
//      coattention_math.h, then O += P V with each thread owning kCols output columns of all 16
//      rows in registers (fp32/fp64 accumulation). Raw scores go to `probs` in the same pass.
//      Each split writes its normalised output and lse.
//   2. combine_kernel: one CTA per (slide, query, head) merges the splits by lse.
//   3. normalise_kernel: probs = exp(raw - lse), elementwise.
//   For float16 / bfloat16 / float32 with whole 16-byte chunks of D and Dv % 16 == 0, step 1 is
//   tc_split_kernel instead: the same split-KV plan on the tensor cores (mma.sync, fp32
//   accumulation; 3xTF32 for float32; operands staged through cp.async rings in shared memory
//   where they fit), coattention_tc.cuh.
// Backward, three launches (simple rather than fast; the CPU kernel is the tuned one):
//   1. delta_kernel: delta = <dO, o> + sum_j p_j gP_j - g_lse per row.
//   2. key_kernel: one warp per (key, KV head): p and dS for every row sharing the KV head
//      (kept in scratch), then dk_j and dv_j.
//   3. dq_kernel: dq = scale sum_j dS_j k_j per (row, key split), atomically added in fp32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <limits>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "coattention/coattention.h"
#include "coattention/coattention_cuda.cuh"

namespace pathgen {
namespace coattn {
namespace {

constexpr int kThreads = 128;   // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRows = 16;       // query rows per CTA (a 16-row tile, not padded to 64-128)
constexpr int kTileKeys = 32;   // keys per shared-memory tile


template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// slide owning packed key j: the last b with cu[b] <= j (cu has B + 1 entries)
__device__ __forceinline__ int64_t slide_of(const int32_t* cu, int64_t B, int64_t j) {
  int64_t lo = 0, hi = B;  // answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<int64_t>(cu[mid]) <= j) lo = mid;
    else hi = mid;
  }
  return lo;
}


// ---- forward ------------------------------------------------------------------------------

template <typename scalar_t, typename acc_t, int kCols, bool kProbs>
__global__ void __launch_bounds__(kThreads)
split_kernel(const scalar_t* __restrict__ q,    // [B, M, H, D] contiguous
             const scalar_t* __restrict__ k,    // [N, Hkv, D]
             const scalar_t* __restrict__ v,    // [N, Hkv, Dv]
             const int32_t* __restrict__ cu,    // [B + 1]
             acc_t* __restrict__ part_o,        // [B, Hkv, R, n_splits, Dv]
             acc_t* __restrict__ part_lse,      // [B, Hkv, R, n_splits]
             acc_t* __restrict__ probs,         // [N, H, M] raw scores (kProbs)
             Dims d) {
  const int64_t split = cta_split();
  const int64_t b = blockIdx.z;
  const CtaTile tile = cta_tile(d);
  const int64_t g = tile.g, row_tile = tile.row_tile, col_tile = tile.col_tile;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t r0 = row_tile * kRows;
  const int nrows = static_cast<int>(imin(kRows, d.R - r0));
  const int64_t c0 = col_tile * kThreads * kCols;
  const bool lead_tile = col_tile == 0;  // writes lse and raw probs once per row

  const KeyRange keys = split_keys(cu, b, split, d);
  const int64_t j_begin = keys.begin, j_end = keys.end;

  __shared__ acc_t s_tile[kRows][kTileKeys];  // scores, then probabilities
  __shared__ acc_t s_alpha[kRows];
  __shared__ acc_t s_m[kRows], s_l[kRows];
  __shared__ int64_t s_qoff[kRows];  // offset of each row's query in q (-1: no such row)
  __shared__ int64_t s_poff[kRows];  // offset of the row's (h, m) within a probs row

  if (tid < kRows) {
    s_m[tid] = neg_inf<acc_t>();
    s_l[tid] = acc_t(0);
    if (tid < nrows) {
      const int64_t rr = r0 + tid, m = rr / d.G, h = g * d.G + rr % d.G;
      s_qoff[tid] = ((b * d.M + m) * d.H + h) * d.D;
      s_poff[tid] = h * d.M + m;
    } else {
      s_qoff[tid] = -1;
      s_poff[tid] = 0;
    }
  }
  acc_t acc[kRows][kCols];
#pragma unroll
  for (int r = 0; r < kRows; ++r)
#pragma unroll
    for (int i = 0; i < kCols; ++i) acc[r][i] = acc_t(0);
  __syncthreads();

  for (int64_t t0 = j_begin; t0 < j_end; t0 += kTileKeys) {
    const int nk = static_cast<int>(imin(kTileKeys, j_end - t0));
    // scores: warp w takes keys w, w + 4, ...; lanes split the head dim
    for (int kk = warp; kk < kTileKeys; kk += kWarps) {
      acc_t dot[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) dot[r] = acc_t(0);
      if (kk < nk) {
        const scalar_t* krow = k + (t0 + kk) * d.k_s0 + g * d.k_s1;
        for (int64_t e = lane; e < d.D; e += 32) {
          const acc_t kv = static_cast<acc_t>(krow[e]);
#pragma unroll
          for (int r = 0; r < kRows; ++r)
            if (r < nrows) dot[r] += static_cast<acc_t>(q[s_qoff[r] + e]) * kv;
        }
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const acc_t s = warp_sum(dot[r]) * static_cast<acc_t>(d.scale);
        if (lane == 0) {
          const bool valid = kk < nk && r < nrows;
          s_tile[r][kk] = valid ? s : neg_inf<acc_t>();
          if (kProbs && valid && lead_tile) probs[(t0 + kk) * d.H * d.M + s_poff[r]] = s;
        }
      }
    }
    __syncthreads();
    // (1) online softmax, one thread per row
    if (tid < kRows) {
      acc_t bmax = neg_inf<acc_t>();
      for (int kk = 0; kk < nk; ++kk) bmax = s_tile[tid][kk] > bmax ? s_tile[tid][kk] : bmax;
      acc_t m = s_m[tid], l = s_l[tid];
      const acc_t alpha = online_rescale(m, l, bmax);
      acc_t sum = 0;
      for (int kk = 0; kk < kTileKeys; ++kk) {
        const acc_t p = (kk < nk && m != neg_inf<acc_t>()) ? exp_fast(s_tile[tid][kk] - m) : acc_t(0);
        s_tile[tid][kk] = p;
        sum += p;
      }
      s_m[tid] = m;
      s_l[tid] = l + sum;
      s_alpha[tid] = alpha;
    }
    __syncthreads();
    // O = alpha O + P V on this thread's columns
#pragma unroll
    for (int i = 0; i < kCols; ++i) {
      const int64_t c = c0 + tid + static_cast<int64_t>(i) * kThreads;
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[r][i] *= s_alpha[r];
      if (c < d.Dv) {
        for (int kk = 0; kk < nk; ++kk) {
          const acc_t vv = static_cast<acc_t>(v[(t0 + kk) * d.v_s0 + g * d.v_s1 + c]);
#pragma unroll
          for (int r = 0; r < kRows; ++r) acc[r][i] += s_tile[r][kk] * vv;
        }
      }
    }
    __syncthreads();  // s_tile is rewritten by the next tile
  }

  // this split's normalised output and lse
  for (int r = 0; r < nrows; ++r) {
    const int64_t row = ((b * d.Hkv + g) * d.R + r0 + r) * d.n_splits + split;
    const acc_t inv = state_inv_sum(s_l[r]);
#pragma unroll
    for (int i = 0; i < kCols; ++i) {
      const int64_t c = c0 + tid + static_cast<int64_t>(i) * kThreads;
      if (c < d.Dv) part_o[row * d.Dv + c] = acc[r][i] * inv;
    }
    if (lead_tile && tid == 0) part_lse[row] = state_lse(s_m[r], s_l[r]);
  }
}

// (2) merge the splits of one (slide, query, head) row: thread 0 lists the splits that saw keys
// (lse > -inf; the others may have left part_o unwritten) with their weights, then the threads
// sum those rows of part_o over the columns, four at a time where Dv allows.
constexpr int kMaxSplits = 256;  // the forward's plans stay under this
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
combine_kernel(const acc_t* __restrict__ part_o, const acc_t* __restrict__ part_lse, scalar_t* __restrict__ out,
               acc_t* __restrict__ lse, Dims d) {
  __shared__ acc_t s_w[kMaxSplits];
  __shared__ int s_live[kMaxSplits];
  __shared__ int s_n;
  const int64_t x = blockIdx.x;  // (b, m, h) in lse's layout
  const int64_t b = x / (d.M * d.H), m = (x / d.H) % d.M, h = x % d.H;
  const int64_t g = h / d.G, r = m * d.G + h % d.G;
  const int64_t row = ((b * d.Hkv + g) * d.R + r) * d.n_splits;
  if (threadIdx.x == 0) {
    const acc_t total = merge_lse(part_lse + row, d.n_splits, 1);
    int n = 0;
    for (int s = 0; s < d.n_splits; ++s) {
      const acc_t ls = part_lse[row + s];
      if (ls != -std::numeric_limits<acc_t>::infinity()) s_live[n] = s, s_w[n] = merge_weight(ls, total), ++n;
    }
    s_n = n;
    lse[x] = total;
  }
  __syncthreads();
  const int n = s_n;
  scalar_t* o_row = out + x * d.Dv;
  const acc_t* p_row = part_o + row * d.Dv;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (d.Dv % 4 == 0) {
      for (int64_t c = 4 * static_cast<int64_t>(threadIdx.x); c < d.Dv; c += 4 * static_cast<int64_t>(blockDim.x)) {
        float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
        for (int i = 0; i < n; ++i) {
          const float4 v = *reinterpret_cast<const float4*>(p_row + s_live[i] * d.Dv + c);
          const float w = s_w[i];
          o.x += w * v.x, o.y += w * v.y, o.z += w * v.z, o.w += w * v.w;
        }
        o_row[c] = static_cast<scalar_t>(o.x), o_row[c + 1] = static_cast<scalar_t>(o.y);
        o_row[c + 2] = static_cast<scalar_t>(o.z), o_row[c + 3] = static_cast<scalar_t>(o.w);
      }
      return;
    }
  }
  for (int64_t c = threadIdx.x; c < d.Dv; c += blockDim.x) {
    acc_t o = 0;
    for (int i = 0; i < n; ++i) o += s_w[i] * p_row[s_live[i] * d.Dv + c];
    o_row[c] = static_cast<scalar_t>(o);
  }
}

// (3) probs [N, H, M]: raw score -> exp(score - lse). Grid (chunks, slides): slide b's probs are
// one contiguous range, so no search for the slide; its H M lse values sit in shared memory
// (read from lse directly past kMaxLse), the (h, m) index advances by a fixed step.
constexpr int kMaxLse = 4096;
template <typename acc_t>
__global__ void normalise_kernel(acc_t* __restrict__ probs, const acc_t* __restrict__ lse,
                                 const int32_t* __restrict__ cu, Dims d) {
  __shared__ acc_t s_lse[kMaxLse];
  const int64_t b = blockIdx.y, HM = d.H * d.M;
  const bool in_smem = HM <= kMaxLse;
  if (in_smem)
    for (int64_t i = threadIdx.x; i < HM; i += blockDim.x) s_lse[i] = lse[(b * d.M + i % d.M) * d.H + i / d.M];
  __syncthreads();
  const KeyRange bag = bag_keys(cu, b, d.N);
  const int64_t begin = bag.begin * HM, end = bag.end * HM;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x, step = stride % HM;
  int64_t x = begin + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t hm = (x - begin) % HM;
  for (; x < end; x += stride) {
    const acc_t l = in_smem ? s_lse[hm] : lse[(b * d.M + hm % d.M) * d.H + hm / d.M];
    probs[x] = prob_of(probs[x], l);
    hm += step;
    if (hm >= HM) hm -= HM;
  }
}

}  // namespace

namespace tc {

// An integer from the environment (read per call, so tests and benchmarks can switch paths).
int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return (e != nullptr && *e != '\0') ? std::atoi(e) : fallback;
}

// Columns per lane (NCT) for tc_split_kernel, or 0 when it cannot take the problem: float16,
// bfloat16 or float32; the head dim in whole 16-byte chunks per lane (D % 32 or D % 16), Dv in
// whole warps' columns; aligned pointers and strides. PATHGEN_COATTN_TC=0 turns it off.
int pick_nct(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (env_int("PATHGEN_COATTN_TC", 1) == 0) return 0;
  const auto dt = q.scalar_type();
  int elems16 = 0;  // elements per 16 bytes
  if (dt == at::kHalf || dt == at::kBFloat16) elems16 = 8;
  else if (dt == at::kFloat) elems16 = 4;
  else return 0;
  if (p.D % (4 * elems16) != 0) return 0;
  int nct = (p.Dv >= 512 && p.Dv % 64 == 0) ? 8 : (p.Dv >= 256 && p.Dv % 32 == 0) ? 4 : (p.Dv % 16 == 0 ? 2 : 0);
  if (nct == 0) return 0;
  if (dt == at::kFloat) nct = std::min(nct, 4);  // float32 keeps fresh fragments too (register budget)
  nct = std::min(nct, env_int("PATHGEN_COATTN_TC_MAXNCT", 8));  // tuning knob (benchmarks)
  if (nct < 2) return 0;
  const int64_t esize = q.element_size();
  auto aligned = [&](const at::Tensor& t, int64_t bytes) {
    const int64_t elems = bytes / esize;
    return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes == 0 && t.stride(0) % elems == 0 &&
           t.stride(1) % elems == 0;
  };
  const int64_t vbytes = std::min<int64_t>(16, nct * esize);  // the widest load of V
  if (!aligned(k, 16) || !aligned(v, vbytes) || reinterpret_cast<uintptr_t>(q.const_data_ptr()) % 16 != 0) return 0;
  return nct;
}

}  // namespace tc

namespace {

Dims make_dims(const Problem& p, const at::Tensor& k, const at::Tensor& v) {
  Dims d{};
  d.B = p.B, d.M = p.M, d.H = p.H, d.Hkv = p.Hkv, d.G = p.G, d.R = p.R, d.D = p.D, d.Dv = p.Dv, d.N = p.N;
  d.k_s0 = k.stride(0), d.k_s1 = k.stride(1), d.v_s0 = v.stride(0), d.v_s1 = v.stride(1);
  d.scale = p.scale;
  return d;
}

int64_t longest_bag(const at::Tensor& cu_seqlens, int64_t max_seqlen) {
  if (max_seqlen > 0) return max_seqlen;
  if (cu_seqlens.size(0) <= 1) return 0;
  const at::Tensor n = cu_seqlens.slice(0, 1) - cu_seqlens.slice(0, 0, -1);
  return n.max().item<int64_t>();  // one device -> host copy when the caller did not say
}

// the device's properties, queried once per device by ATen and cached (no driver call per launch)
const cudaDeviceProp& device_props(const at::Device& dev) {
  return *at::cuda::getDeviceProperties(dev.index());
}

template <typename scalar_t, int kCols>
void launch_split(bool probs, dim3 grid, cudaStream_t stream, const scalar_t* q, const scalar_t* k,
                  const scalar_t* v, const int32_t* cu, at::opmath_type<scalar_t>* po,
                  at::opmath_type<scalar_t>* pl, at::opmath_type<scalar_t>* pr, const Dims& d) {
  using acc_t = at::opmath_type<scalar_t>;
  if (probs) split_kernel<scalar_t, acc_t, kCols, true><<<grid, kThreads, 0, stream>>>(q, k, v, cu, po, pl, pr, d);
  else split_kernel<scalar_t, acc_t, kCols, false><<<grid, kThreads, 0, stream>>>(q, k, v, cu, po, pl, pr, d);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coattention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                const at::Tensor& v_in, const at::Tensor& cu_seqlens,
                                                                int64_t max_seqlen, double scale, bool return_probs) {
  const Problem p = check_forward(q_in, k_in, v_in, cu_seqlens, scale, return_probs);
  TORCH_CHECK(q_in.is_cuda(), "coattention: CUDA kernel got a ", q_in.device(), " tensor");
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor q = q_in.contiguous();
  const at::Tensor k = last_dim_contiguous(k_in);
  const at::Tensor v = p.k_is_v ? k : last_dim_contiguous(v_in);
  const at::Tensor cu = cu_seqlens.contiguous();
  const auto st = stats_dtype(q.scalar_type());
  at::Tensor out = at::empty({p.B, p.M, p.H, p.Dv}, q.options());
  at::Tensor lse = at::empty({p.B, p.M, p.H}, q.options().dtype(st));
  at::Tensor probs = at::empty({return_probs ? p.N : 0, p.H, p.M}, q.options().dtype(st));
  if (p.B == 0 || p.R == 0) return {out, lse, probs};  // no slides, or no query rows (M or H = 0): empty outputs

  Dims d = make_dims(p, k, v);
  const int64_t longest = std::max<int64_t>(longest_bag(cu, max_seqlen), 1);
  const cudaDeviceProp& props = device_props(q.device());
  const int64_t sms = std::max(props.multiProcessorCount, 1);
  const int nct = tc::pick_nct(p, q, k, v);
  const int kCols = p.Dv > 2 * kThreads ? 4 : (p.Dv > kThreads ? 2 : 1);
  int rm = 0;
  // staged operands (cp.async rings in shared memory; coattention_tc.cuh) where the plan allows
  // them, else the kernel falls back to direct loads. PATHGEN_COATTN_TC_STAGED=0/1 overrides.
  bool staged = tc::env_int("PATHGEN_COATTN_TC_STAGED", tc::kDefaultStaged) != 0;
  d.prefetch = std::clamp(tc::env_int("PATHGEN_COATTN_TC_PREFETCH", tc::kDefaultPrefetch), 0, 4);
  if (nct > 0) {  // tensor cores: up to 48 rows per CTA, 8 warps x 8 nct columns
    const int cap = q.scalar_type() == at::kFloat ? 2 : tc::kMaxRM;
    const int64_t es = q.element_size(), d_bytes = p.D * es;
    auto rows_for = [&](bool st) {
      const int max_rm = std::clamp(tc::env_int("PATHGEN_COATTN_TC_MAXRM", st ? tc::kDefaultStagedRM : tc::kDefaultRM), 1, cap);
      return static_cast<int>(std::min<int64_t>(max_rm, (p.R + 15) / 16));
    };
    // staged where the kernel takes it (128 bytes of output columns per warp, the head dim in whole
    // 128-byte chunks), with as many rows per CTA as the device's shared memory holds (D = 2048 in
    // 16-bit: 32 rows on an H100); else the direct kernel at its own default rows
    staged = staged && nct * 8 * es == 128 && d_bytes % 128 == 0;
    rm = rows_for(staged);
    if (staged) {
      const int64_t optin = static_cast<int64_t>(props.sharedMemPerBlockOptin);
      while (rm > 0 && tc::staged_total_bytes(16 * rm, d_bytes, es) > optin) --rm;
      if (rm == 0) staged = false, rm = rows_for(false);
    }
    d.row_tiles = (p.R + 16 * rm - 1) / (16 * rm);
    d.col_tiles = (p.Dv + tc::kWarps * 8 * nct - 1) / (tc::kWarps * 8 * nct);
  } else {
    d.row_tiles = (p.R + kRows - 1) / kRows;
    d.col_tiles = (p.Dv + kThreads * kCols - 1) / (kThreads * kCols);
  }
  const int64_t ctas = p.Hkv * d.row_tiles * d.col_tiles;
  TORCH_CHECK(p.B <= 65535, "coattention: more than 65535 slides in one launch");
  if (nct > 0) {
    // splits sized by the total work, not the longest bag: about 4 CTAs per SM (1-2 fit at once),
    // whole 128-key tiles, so short bags do not leave the machine idle while long ones finish
    const int64_t target = std::max<int64_t>(sms * tc::env_int("PATHGEN_COATTN_TC_CTAS_PER_SM", 4), 1);
    int64_t len = (std::max<int64_t>(p.N, 1) * ctas + target - 1) / target;
    len = std::max<int64_t>(len, std::max(tc::env_int("PATHGEN_COATTN_TC_MIN_SPLIT", 1), tc::kTileKeys));
    len = (len + tc::kTileKeys - 1) / tc::kTileKeys * tc::kTileKeys;
    d.n_splits = std::clamp<int64_t>((longest + len - 1) / len, 1, 256);
    d.split_len = (longest + d.n_splits - 1) / d.n_splits;
  } else {
    // flash-decoding's rule of thumb, generous: several waves of CTAs, splits of at least 64 keys
    const int64_t want = (8 * sms + p.B * ctas - 1) / (p.B * ctas);
    d.n_splits = std::clamp<int64_t>(want, 1, std::min<int64_t>(64, (longest + 63) / 64));
    d.split_len = (longest + d.n_splits - 1) / d.n_splits;
  }

  TORCH_CHECK(d.n_splits <= kMaxSplits, "coattention: too many key splits");
  const auto acc_opts = q.options().dtype(st);
  at::Tensor part_o = at::empty({p.B * p.Hkv * p.R * d.n_splits, p.Dv}, acc_opts);
  at::Tensor part_lse = at::empty({p.B * p.Hkv * p.R * d.n_splits}, acc_opts);
  const dim3 grid(static_cast<unsigned>(ctas), static_cast<unsigned>(d.n_splits), static_cast<unsigned>(p.B));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "coattention_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* kp = k.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const int32_t* cp = cu.const_data_ptr<int32_t>();
    acc_t* po = part_o.mutable_data_ptr<acc_t>();
    acc_t* pl = part_lse.mutable_data_ptr<acc_t>();
    acc_t* pr = return_probs ? probs.mutable_data_ptr<acc_t>() : nullptr;
    if (nct > 0) {
      tc::run<scalar_t>(rm, nct, return_probs, staged, grid, stream, qp, kp, vp, cp, po, pl, pr, d);
    } else {
      if (kCols == 4) launch_split<scalar_t, 4>(return_probs, grid, stream, qp, kp, vp, cp, po, pl, pr, d);
      else if (kCols == 2) launch_split<scalar_t, 2>(return_probs, grid, stream, qp, kp, vp, cp, po, pl, pr, d);
      else launch_split<scalar_t, 1>(return_probs, grid, stream, qp, kp, vp, cp, po, pl, pr, d);
    }

    combine_kernel<scalar_t, acc_t><<<static_cast<unsigned>(p.B * p.M * p.H), kThreads, 0, stream>>>(
        po, pl, out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (return_probs && p.N > 0) {
      // (blocks per slide, slides): about 4 elements per thread over the longest bag's range
      const int64_t per_slide = (longest * p.H * p.M + 1023) / 1024;
      const dim3 blocks(static_cast<unsigned>(std::clamp<int64_t>(per_slide, 1, 65535)), static_cast<unsigned>(p.B));
      normalise_kernel<acc_t><<<blocks, 256, 0, stream>>>(pr, lse.const_data_ptr<acc_t>(), cp, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, lse, probs};
}

// ---- backward -----------------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared /* [kWarps] */) {
  v = warp_sum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kWarps; ++w) total += shared[w];
  return total;
}

// (3) delta = <dO, o> + sum_j p_j gP_j - g_lse, one CTA per (b, m, h)
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
delta_kernel(const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ out,
             const acc_t* __restrict__ grad_lse, const acc_t* __restrict__ probs,
             const acc_t* __restrict__ grad_probs, const int32_t* __restrict__ cu, acc_t* __restrict__ delta,
             Dims d) {
  __shared__ acc_t red[kWarps];
  const int64_t x = blockIdx.x;
  const int64_t b = x / (d.M * d.H), m = (x / d.H) % d.M, h = x % d.H;
  acc_t part = 0;
  if (grad_out != nullptr)
    for (int64_t c = threadIdx.x; c < d.Dv; c += blockDim.x)
      part += static_cast<acc_t>(grad_out[x * d.Dv + c]) * static_cast<acc_t>(out[x * d.Dv + c]);
  if (grad_probs != nullptr)
    for (int64_t j = bag_keys(cu, b, d.N).begin + threadIdx.x; j < bag_keys(cu, b, d.N).end; j += blockDim.x) {
      const int64_t at = (j * d.H + h) * d.M + m;
      part += probs[at] * grad_probs[at];
    }
  const acc_t total = block_sum(part, red);
  if (threadIdx.x == 0) delta[x] = total - (grad_lse != nullptr ? grad_lse[x] : acc_t(0));
}

// (3) one warp per (key j, KV head g): p and dS of every row sharing g (into scratch [N, H, M]),
// then dk_j = sum_r dS_rj (scale q_r) and dv_j = sum_r p_rj dO_r, accumulated in acc_t and rounded
// once into the inputs' dtype (each (j, g) is owned by one warp, so no fp32 copy and cast is needed).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
key_kernel(const scalar_t* __restrict__ q, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
           const scalar_t* __restrict__ grad_out, const acc_t* __restrict__ grad_probs,
           const acc_t* __restrict__ lse, const acc_t* __restrict__ delta, const int32_t* __restrict__ cu,
           acc_t* __restrict__ p_scratch, acc_t* __restrict__ ds_scratch, scalar_t* __restrict__ grad_k,
           scalar_t* __restrict__ grad_v, Dims d) {
  const int64_t item = blockIdx.x * static_cast<int64_t>(kWarps) + threadIdx.x / 32;
  if (item >= d.N * d.Hkv) return;
  const int lane = threadIdx.x % 32;
  const int64_t j = item / d.Hkv, g = item % d.Hkv;
  const int64_t b = slide_of(cu, d.B, j);
  const scalar_t* krow = k + j * d.k_s0 + g * d.k_s1;
  const scalar_t* vrow = v + j * d.v_s0 + g * d.v_s1;
  const acc_t scale = static_cast<acc_t>(d.scale);
  for (int64_t r = 0; r < d.R; ++r) {
    const int64_t m = r / d.G, h = g * d.G + r % d.G, x = (b * d.M + m) * d.H + h;
    acc_t s = 0, dp = 0;
    for (int64_t e = lane; e < d.D; e += 32) s += static_cast<acc_t>(q[x * d.D + e]) * static_cast<acc_t>(krow[e]);
    if (grad_out != nullptr)
      for (int64_t e = lane; e < d.Dv; e += 32)
        dp += static_cast<acc_t>(grad_out[x * d.Dv + e]) * static_cast<acc_t>(vrow[e]);
    s = warp_sum(s) * scale;
    dp = warp_sum(dp);
    const int64_t at = (j * d.H + h) * d.M + m;
    if (grad_probs != nullptr) dp += grad_probs[at];
    const acc_t pj = prob_of(s, lse[x]);
    if (lane == 0) {
      p_scratch[at] = pj;
      ds_scratch[at] = grad_score(pj, dp, delta[x]);
    }
  }
  __syncwarp();
  if (grad_k != nullptr) {
    for (int64_t e = lane; e < d.D; e += 32) {
      acc_t a = 0;
      for (int64_t r = 0; r < d.R; ++r) {
        const int64_t m = r / d.G, h = g * d.G + r % d.G, x = (b * d.M + m) * d.H + h;
        a += ds_scratch[(j * d.H + h) * d.M + m] * static_cast<acc_t>(q[x * d.D + e]);
      }
      grad_k[(j * d.Hkv + g) * d.D + e] = static_cast<scalar_t>(a * scale);
    }
  }
  if (grad_v != nullptr && grad_out != nullptr) {
    for (int64_t e = lane; e < d.Dv; e += 32) {
      acc_t a = 0;
      for (int64_t r = 0; r < d.R; ++r) {
        const int64_t m = r / d.G, h = g * d.G + r % d.G, x = (b * d.M + m) * d.H + h;
        a += p_scratch[(j * d.H + h) * d.M + m] * static_cast<acc_t>(grad_out[x * d.Dv + e]);
      }
      grad_v[(j * d.Hkv + g) * d.Dv + e] = static_cast<scalar_t>(a);
    }
  }
}

// (3) dq_row += scale sum_{j in split} dS_j k_j, one CTA per (row, split), atomics into fp32/fp64
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
dq_kernel(const scalar_t* __restrict__ k, const acc_t* __restrict__ ds_scratch, const int32_t* __restrict__ cu,
          acc_t* __restrict__ grad_q, Dims d) {
  const int64_t x = blockIdx.x, split = blockIdx.y;
  const int64_t b = x / (d.M * d.H), m = (x / d.H) % d.M, h = x % d.H, g = h / d.G;
  const KeyRange keys = split_keys(cu, b, split, d);
  const int64_t j0 = keys.begin, j1 = keys.end;
  if (j0 >= j1) return;
  const acc_t scale = static_cast<acc_t>(d.scale);
  for (int64_t e = threadIdx.x; e < d.D; e += blockDim.x) {
    acc_t a = 0;
    for (int64_t j = j0; j < j1; ++j)
      a += ds_scratch[(j * d.H + h) * d.M + m] * static_cast<acc_t>(k[j * d.k_s0 + g * d.k_s1 + e]);
    atomicAdd(grad_q + x * d.D + e, a * scale);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coattention_backward_cuda(
    const std::optional<at::Tensor>& grad_out, const std::optional<at::Tensor>& grad_lse,
    const std::optional<at::Tensor>& grad_probs, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& cu_seqlens, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& probs, int64_t max_seqlen, double scale, std::array<bool, 3> mask) {
  const Problem p = check_forward(q_in, k_in, v_in, cu_seqlens, scale, false);
  check_backward(p, q_in, grad_out, grad_lse, grad_probs, out, lse, probs);
  TORCH_CHECK(q_in.is_cuda(), "coattention backward: CUDA kernel got a ", q_in.device(), " tensor");
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor q = q_in.contiguous();
  const at::Tensor k = last_dim_contiguous(k_in);
  const at::Tensor v = p.k_is_v ? k : last_dim_contiguous(v_in);
  const at::Tensor cu = cu_seqlens.contiguous();
  const auto st = stats_dtype(q.scalar_type());
  const auto acc_opts = q.options().dtype(st);
  at::Tensor gq = mask[0] ? at::zeros({p.B, p.M, p.H, p.D}, acc_opts) : at::empty({0}, q.options());
  // dK and dV in the inputs' dtype, written once by key_kernel (dV stays zero without grad_out)
  at::Tensor gk = mask[1] ? at::empty({p.N, p.Hkv, p.D}, q.options()) : at::empty({0}, q.options());
  at::Tensor gv = mask[2] ? at::zeros({p.N, p.Hkv, p.Dv}, q.options()) : at::empty({0}, q.options());
  if (p.R == 0 && mask[1]) gk.zero_();  // no query rows (M or H = 0): no gradient reaches the keys
  if (p.B == 0 || p.R == 0 || !(mask[0] || mask[1] || mask[2])) return {gq, gk, gv};

  const at::Tensor go = grad_out.has_value() ? grad_out->contiguous() : at::Tensor();
  const at::Tensor gl = grad_lse.has_value() ? grad_lse->contiguous() : at::Tensor();
  const at::Tensor gp = grad_probs.has_value() ? grad_probs->contiguous() : at::Tensor();
  const at::Tensor pr = grad_probs.has_value() ? probs->contiguous() : at::Tensor();
  const at::Tensor o = out.contiguous();
  const at::Tensor l = lse.contiguous();
  at::Tensor delta = at::empty({p.B, p.M, p.H}, acc_opts);
  at::Tensor p_scratch = at::empty({p.N, p.H, p.M}, acc_opts);
  at::Tensor ds_scratch = at::empty({p.N, p.H, p.M}, acc_opts);

  Dims d = make_dims(p, k, v);
  const int64_t longest = std::max<int64_t>(longest_bag(cu, max_seqlen), 1);
  d.n_splits = std::clamp<int64_t>((longest + 1023) / 1024, 1, 64);
  d.split_len = (longest + d.n_splits - 1) / d.n_splits;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "coattention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go_p = go.defined() ? go.const_data_ptr<scalar_t>() : nullptr;
    const acc_t* gl_p = gl.defined() ? gl.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gp_p = gp.defined() ? gp.const_data_ptr<acc_t>() : nullptr;
    const acc_t* pr_p = pr.defined() ? pr.const_data_ptr<acc_t>() : nullptr;
    const int32_t* cp = cu.const_data_ptr<int32_t>();
    delta_kernel<scalar_t, acc_t><<<static_cast<unsigned>(p.B * p.M * p.H), kThreads, 0, stream>>>(
        go_p, o.const_data_ptr<scalar_t>(), gl_p, pr_p, gp_p, cp, delta.mutable_data_ptr<acc_t>(), d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (p.N > 0) {
      const int64_t warps = p.N * p.Hkv;
      key_kernel<scalar_t, acc_t><<<static_cast<unsigned>((warps + kWarps - 1) / kWarps), kThreads, 0, stream>>>(
          q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(), go_p, gp_p,
          l.const_data_ptr<acc_t>(), delta.const_data_ptr<acc_t>(), cp, p_scratch.mutable_data_ptr<acc_t>(),
          ds_scratch.mutable_data_ptr<acc_t>(), mask[1] ? gk.mutable_data_ptr<scalar_t>() : nullptr,
          mask[2] ? gv.mutable_data_ptr<scalar_t>() : nullptr, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (mask[0]) {
        const dim3 grid(static_cast<unsigned>(p.B * p.M * p.H), static_cast<unsigned>(d.n_splits));
        dq_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
            k.const_data_ptr<scalar_t>(), ds_scratch.const_data_ptr<acc_t>(), cp, gq.mutable_data_ptr<acc_t>(), d);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
  if (mask[0]) gq = gq.to(q.scalar_type());  // dq sums over splits by atomics, so in acc_t until here
  return {gq, gk, gv};
}

}  // namespace
}  // namespace coattn
}  // namespace pathgen

TORCH_LIBRARY_IMPL(pathgen, CUDA, m) {
  m.impl("coattention", &pathgen::coattn::coattention_cuda);
  m.impl("_coattention_backward", &pathgen::coattn::coattention_backward_cuda);
}
