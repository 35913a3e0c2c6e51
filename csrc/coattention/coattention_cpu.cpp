// CPU backend of pathgen::coattention and its backward.
//
// Split-KV on the CPU: each slide's keys are cut into splits of equal length (all KV heads of
// a key together, so memory is read in order); threads pull splits from a shared counter,
// largest first. Within a split, keys stream in blocks; for each KV head all R = M * H / Hkv
// query rows that share it are handled in one pass over the block (see "how a key block's two
// products are computed" below):
//   wide groups:   S^T = K_blk Q^T (key-major scores) and O += P V_blk through BLAS, float32 key
//                  rows read in place, 512-key blocks, column-wise online softmax;
//   narrow groups: float32 rows read in place, bf16 / fp16 (F16C) rows too (widened to fp32 in
//                  registers; the backward packs them, rows padded against 4 KiB set aliasing); the next
//                  block software-prefetched;
//                  S = Qs K_blk^T (register-tiled dot products: 3 rows x 4 keys reduced by
//                  vhaddps for float on AVX, else 6 x 2), row-wise online softmax,
//                  O += P V_blk (register-tiled 6x16 broadcast-FMAs), blocks sized for L2,
// so each key row is read from memory once (coattention_math.h: online softmax and merge).
// Splits are merged by their log-sum-exp. Accumulation is fp32 (fp64 for float64 inputs).
// The backward follows the same split: per block it recomputes P and forms dP, dS, dq, dk, dv
// with the same two kinds of products (key-major through BLAS for wide groups, else the tiles).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "coattention/coattention.h"

namespace pathgen {
namespace coattn {
namespace {

// ---- SIMD micro-kernels (GCC/Clang vector extensions: AVX2+FMA on x86, NEON on arm) --------

template <typename T>
struct Simd {
  static constexpr int L = 32 / sizeof(T);
  typedef T V __attribute__((vector_size(32)));
  static inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static inline void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static inline V splat(T s) { return V{} + s; }  // outside the micro-kernels only
  static inline T hsum(V v) {
    T s = 0;
    for (int i = 0; i < L; ++i) s += v[i];
    return s;
  }
};

// Loads of a key or value operand stored as Tb into vectors of T: in place for Tb == T, widened
// in registers for bf16 (zero-extend and shift, exact) and fp16 (vcvtph2ps, F16C), so the tiles
// read 16-bit rows where they lie instead of a packed fp32 copy of the block.
template <typename Tb>
constexpr bool kWidensInRegisters = std::is_same_v<Tb, c10::BFloat16>
#if defined(__F16C__)
                                    || std::is_same_v<Tb, c10::Half>
#endif
    ;

template <typename T, typename Tb>
inline typename Simd<T>::V load_as(const Tb* p) {
  using V = typename Simd<T>::V;
  if constexpr (std::is_same_v<T, Tb>) {
    return Simd<T>::load(p);
  } else if constexpr (std::is_same_v<T, float> && std::is_same_v<Tb, c10::BFloat16>) {
#if defined(__AVX2__)
    // one vpmovzxwd from memory and a shift (the generic form below compiles to two 128-bit halves)
    const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
    V v;
    std::memcpy(&v, &w, sizeof(V));
    return v;
#else
    typedef uint16_t U16 __attribute__((vector_size(16)));
    typedef uint32_t U32 __attribute__((vector_size(32)));
    U16 h;
    std::memcpy(&h, p, sizeof(U16));
    const U32 w = __builtin_convertvector(h, U32) << 16;  // bf16 is the top half of an fp32
    V v;
    std::memcpy(&v, &w, sizeof(V));
    return v;
#endif
#if defined(__F16C__)
  } else if constexpr (std::is_same_v<T, float> && std::is_same_v<Tb, c10::Half>) {
    const __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    V v;
    std::memcpy(&v, &f, sizeof(V));
    return v;
#endif
  } else {
    static_assert(std::is_same_v<T, Tb>, "load_as: no widening load for this pair of types");
  }
}

constexpr int kRowTile = 6;

// exp_fast of coattention_math.h on a vector of floats: the same clamp, rounding and
// polynomial, lane by lane.
inline Simd<float>::V exp_fast_vec(Simd<float>::V x) {
  using V = Simd<float>::V;
  typedef int32_t VI __attribute__((vector_size(32)));
  const V lo = Simd<float>::splat(-87.0f), hi = Simd<float>::splat(88.0f);
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const V r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  V p = Simd<float>::splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const V e = p * r * r + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V two_n;
  std::memcpy(&two_n, &bits, sizeof(V));
  const V res = e * two_n;
  return x < lo ? V{} : res;
}

// row[c] = exp(row[c] - sub[c or 0]) for c < n; returns the sum. kVecSub: sub is per element.
template <typename T, bool kVecSub>
inline T exp_sub_row(T* row, const T* sub, int64_t n) {
  int64_t c = 0;
  T sum = 0;
  if constexpr (std::is_same_v<T, float>) {
    using S_ = Simd<float>;
    typename S_::V acc{};
    const typename S_::V s0 = S_::splat(sub[0]);
    for (; c + S_::L <= n; c += S_::L) {
      const auto e = exp_fast_vec(S_::load(row + c) - (kVecSub ? S_::load(sub + c) : s0));
      S_::store(row + c, e);
      acc += e;
    }
    sum = S_::hsum(acc);
  }
  for (; c < n; ++c) {
    const T e = exp_fast(row[c] - sub[kVecSub ? c : 0]);
    row[c] = e;
    sum += e;
  }
  return sum;
}

template <typename T>
inline T row_max(const T* row, int64_t n) {
  int64_t c = 0;
  T mx = neg_inf<T>();
  if constexpr (std::is_same_v<T, float>) {
    using S_ = Simd<float>;
    if (n >= S_::L) {
      typename S_::V m = S_::load(row);
      for (c = S_::L; c + S_::L <= n; c += S_::L) {
        const auto x = S_::load(row + c);
        m = x > m ? x : m;
      }
      for (int i = 0; i < S_::L; ++i) mx = m[i] > mx ? m[i] : mx;
    }
  }
  for (; c < n; ++c) mx = row[c] > mx ? row[c] : mx;
  return mx;
}

// Column-wise softmax pieces for a block of scores stored key-major (st[c w + j], n keys x w rows):
// mx[j] = max_c st[c, j]; and st[c, j] = exp(st[c, j] - m[j]) with colsum[j] += sum_c of it.
// Rows stay in vector lanes (no horizontal reductions).
template <typename T>
void col_max(const T* st, int64_t n, int64_t w, T* mx) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    using S_ = Simd<float>;
    for (; j + S_::L <= w; j += S_::L) {
      typename S_::V m = S_::splat(neg_inf<float>());
      for (int64_t c = 0; c < n; ++c) {
        const auto x = S_::load(st + c * w + j);
        m = x > m ? x : m;
      }
      S_::store(mx + j, m);
    }
  }
  for (; j < w; ++j) {
    T m = neg_inf<T>();
    for (int64_t c = 0; c < n; ++c) m = st[c * w + j] > m ? st[c * w + j] : m;
    mx[j] = m;
  }
}

template <typename T>
void exp_sub_cols(T* st, int64_t n, int64_t w, const T* m, T* colsum) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    using S_ = Simd<float>;
    for (; j + S_::L <= w; j += S_::L) {
      const typename S_::V mv = S_::load(m + j);
      typename S_::V sum{};
      for (int64_t c = 0; c < n; ++c) {
        const auto e = exp_fast_vec(S_::load(st + c * w + j) - mv);
        S_::store(st + c * w + j, e);
        sum += e;
      }
      S_::store(colsum + j, S_::load(colsum + j) + sum);
    }
  }
  for (; j < w; ++j) {
    T sum = 0;
    for (int64_t c = 0; c < n; ++c) {
      const T e = exp_fast(st[c * w + j] - m[j]);
      st[c * w + j] = e;
      sum += e;
    }
    colsum[j] += sum;
  }
}

// 64-byte aligned scratch, so vector loops over rows start aligned (no scalar peeling).
template <typename T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <typename U>
  AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const AlignedAlloc<U>&) const { return true; }
};
template <typename T>
using Scratch = std::vector<T, AlignedAlloc<T>>;

// dst[0, n) = src[0, n) with non-temporal stores where the type and alignment allow (the output
// is not read again before a later pass, so it need not be read for ownership nor held in cache);
// callers fence (_mm_sfence) before other threads read dst.
template <typename T>
inline void stream_copy(T* dst, const T* src, int64_t n) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    int64_t i = 0;
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
    for (; i < n; ++i) dst[i] = src[i];
    return;
  }
#endif
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
}

// dst[0, n) = src[0, n) rounded to T (round to nearest even, as Tensor.to): streamed where T is acc_t.
template <typename T, typename acc_t>
inline void store_rows(T* dst, const acc_t* src, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t>) {
    stream_copy(dst, src, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  }
}

inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

// Software prefetch of the next key block, so the DRAM reads of block i + 1 overlap the
// arithmetic of block i (the hardware prefetchers do not follow the tiles' reads: one head's rows
// lie a key's whole row apart). The block's lines are spread evenly over the micro-kernels' inner
// loop iterations (`rate` lines per iteration, 16.16 fixed point), about one at a time: a core has
// few outstanding L1 misses, and the bursts of ~20 prefetches per tile of the scheme before held
// them all for a DRAM round trip, stalling the tiles' own reads from L2. Case B, 16 x 13,000 keys,
// 2 threads, the two schemes alternated in one process (fastest of 10-15 rounds, thread-ns per key
// and head): fp32 136-141 against 182-191, bf16 86 against 105; R 6, D 1024, k = v, fp32: 672
// against 852; 0.7x or 2x the even rate was slower. The backward (it packs its blocks) ran no faster.
struct Prefetch {
  // addresses as integers: a strided view's last row ends before `end`, and prefetching past an
  // allocation is harmless where pointer arithmetic past it is not
  uintptr_t p[2] = {0, 0};
  uintptr_t end[2] = {0, 0};
  uint32_t rate = 0, credit = 0;
  void set(int i, const void* begin, int64_t bytes) {
    p[i] = reinterpret_cast<uintptr_t>(begin);
    end[i] = p[i] + static_cast<uintptr_t>(bytes);
  }
  int64_t lines() const { return static_cast<int64_t>((end[0] - p[0]) + (end[1] - p[1])) / 64 + 2; }
};

// A micro-kernel's copy of the prefetcher, in registers for its loop (stepping the cursors in
// memory made every prefetch wait on the previous one's store); step() once per iteration.
struct PrefetchCursor {
  uintptr_t a, ae, b, be;
  uint32_t rate, credit;
  explicit PrefetchCursor(const Prefetch& pf)
      : a(pf.p[0]), ae(pf.end[0]), b(pf.p[1]), be(pf.end[1]), rate(pf.rate), credit(pf.credit) {}
  void store(Prefetch& pf) const { pf.p[0] = a, pf.p[1] = b, pf.rate = rate, pf.credit = credit; }
  inline void step() {
    credit += rate;
    while (credit >= 65536u) {
      credit -= 65536u;
      if (a < ae) {
        __builtin_prefetch(reinterpret_cast<const void*>(a), 0, 2);
        a += 64;
      } else if (b < be) {
        __builtin_prefetch(reinterpret_cast<const void*>(b), 0, 2);
        b += 64;
      } else {
        rate = credit = 0;  // the whole next block is requested
      }
    }
  }
};

// S[r, c] = sum_d A[r, d] B[c, d] for an RT x CT tile.
template <typename T, typename Tb, int RT, int CT>
inline void nt_tile(int64_t D, const T* A, int64_t lda, const Tb* B, int64_t ldb, T* S, int64_t lds, Prefetch& pf) {
  PrefetchCursor pc(pf);
  using S_ = Simd<T>;
  using V = typename S_::V;
  constexpr int L = S_::L;
  V acc[RT][CT];
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < CT; ++c) acc[r][c] = V{};
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    V b[CT];
    for (int c = 0; c < CT; ++c) b[c] = load_as<T>(B + c * ldb + d);
    for (int r = 0; r < RT; ++r) {
      const V a = S_::load(A + r * lda + d);
      for (int c = 0; c < CT; ++c) acc[r][c] += a * b[c];
    }
    pc.step();
  }
  pc.store(pf);
  for (int r = 0; r < RT; ++r) {
    for (int c = 0; c < CT; ++c) {
      T s = S_::hsum(acc[r][c]);
      for (int64_t e = d; e < D; ++e) s += A[r * lda + e] * static_cast<T>(B[c * ldb + e]);
      S[r * lds + c] = s;
    }
  }
}

// fn(std::integral_constant<int, rt>{}) for a tile height rt in 1 .. kRowTile, so each height is its
// own unrolled kernel; fn is forced inline so the dispatch compiles as the switch it is.
template <typename Fn>
__attribute__((always_inline)) inline void with_rows(int rt, Fn&& fn) {
  switch (rt) {
    case 6: fn(std::integral_constant<int, 6>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    default: fn(std::integral_constant<int, 1>{}); break;
  }
}

template <typename T, int CT, typename Tb>
inline void nt_rows(int rt, int64_t D, const T* A, int64_t lda, const Tb* B, int64_t ldb, T* S, int64_t lds,
                    Prefetch& pf) {
  with_rows(rt, [&](auto RT) __attribute__((always_inline)) { nt_tile<T, Tb, RT(), CT>(D, A, lda, B, ldb, S, lds, pf); });
}

#if defined(__AVX__) && defined(__FMA__)
#define PATHGEN_NT_QUADS 1
// float on AVX: S[r, c .. c + 3] for RT rows x 4 keys. A row's four dot products leave the loop
// as four vectors and are reduced together (three vhaddps and one add, one 16-byte store) rather
// than one horizontal sum each: 33 against 14 GFMA/s for the 6 x 2 tiles on R = 6, D = 128, 16
// keys in L1, one AVX2 core (a standalone microbenchmark).
inline __m128 hsum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

template <int RT, typename Tb>
inline void nt_quad(int64_t D, const float* A, int64_t lda, const Tb* B, int64_t ldb, float* S, int64_t lds,
                    Prefetch& pf) {
  PrefetchCursor pc(pf);
  __m256 acc[RT][4];
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    if constexpr (std::is_same_v<Tb, float>) {  // 12 accumulators: 4 keys loaded, each row against them
      __m256 b[4];
      for (int c = 0; c < 4; ++c) b[c] = _mm256_loadu_ps(B + c * ldb + d);
      for (int r = 0; r < RT; ++r) {
        const __m256 a = _mm256_loadu_ps(A + r * lda + d);
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm256_fmadd_ps(a, b[c], acc[r][c]);
      }
    } else {  // 16-bit keys are widened into a register first: rows held, keys one at a time (16 registers)
      __m256 a[RT];
      for (int r = 0; r < RT; ++r) a[r] = _mm256_loadu_ps(A + r * lda + d);
      for (int c = 0; c < 4; ++c) {
        const Simd<float>::V w = load_as<float>(B + c * ldb + d);
        const __m256 b = reinterpret_cast<const __m256&>(w);
        for (int r = 0; r < RT; ++r) acc[r][c] = _mm256_fmadd_ps(a[r], b, acc[r][c]);
      }
    }
    pc.step();
  }
  pc.store(pf);
  for (int r = 0; r < RT; ++r) {
    __m128 sum = hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
    if (d < D) {  // head dims that are not a multiple of 8
      alignas(16) float tail[4] = {0.f, 0.f, 0.f, 0.f};
      for (int c = 0; c < 4; ++c)
        for (int64_t e = d; e < D; ++e) tail[c] += A[r * lda + e] * static_cast<float>(B[c * ldb + e]);
      sum = _mm_add_ps(sum, _mm_load_ps(tail));
    }
    _mm_storeu_ps(S + r * lds, sum);
  }
}

template <typename Tb>
inline void nt_quads(int64_t R, int64_t D, const float* A, int64_t lda, const Tb* B, int64_t ldb, float* S,
                     int64_t lds, Prefetch& pf) {
  int64_t r0 = 0;
  for (; r0 + 3 <= R; r0 += 3) nt_quad<3>(D, A + r0 * lda, lda, B, ldb, S + r0 * lds, lds, pf);
  if (R - r0 == 2) nt_quad<2>(D, A + r0 * lda, lda, B, ldb, S + r0 * lds, lds, pf);
  else if (R - r0 == 1) nt_quad<1>(D, A + r0 * lda, lda, B, ldb, S + r0 * lds, lds, pf);
}
#endif

// S[r, c] = sum_d A[r, d] B[c, d]   (R x C, both operands row-major in d)
template <typename T, typename Tb>
void gemm_nt(int64_t R, int64_t C, int64_t D, const T* A, int64_t lda, const Tb* B, int64_t ldb, T* S,
             int64_t lds, Prefetch& pf) {
#ifdef PATHGEN_NT_QUADS
  if constexpr (std::is_same_v<T, float>) {  // 4 keys x all rows at a time, then the 6 x 2 tiles' tail
    int64_t c0 = 0;
    for (; c0 + 4 <= C; c0 += 4) {
      nt_quads(R, D, A, lda, B + c0 * ldb, ldb, S + c0, lds, pf);
    }
    for (int64_t r0 = 0; r0 < R && c0 < C; r0 += kRowTile) {
      const int rt = static_cast<int>(std::min<int64_t>(kRowTile, R - r0));
      for (int64_t c = c0; c < C; ++c)
        nt_rows<T, 1>(rt, D, A + r0 * lda, lda, B + c * ldb, ldb, S + r0 * lds + c, lds, pf);
    }
    return;
  }
#endif
  for (int64_t r0 = 0; r0 < R; r0 += kRowTile) {
    const int rt = static_cast<int>(std::min<int64_t>(kRowTile, R - r0));
    int64_t c0 = 0;
    for (; c0 + 2 <= C; c0 += 2) {
      nt_rows<T, 2>(rt, D, A + r0 * lda, lda, B + c0 * ldb, ldb, S + r0 * lds + c0, lds, pf);
    }
    if (c0 < C) nt_rows<T, 1>(rt, D, A + r0 * lda, lda, B + c0 * ldb, ldb, S + r0 * lds + c0, lds, pf);
  }
}

// Inner-loop steps of gemm_nt (R x C scores over D), as its micro-kernels count them.
template <typename T>
inline int64_t nt_steps(int64_t R, int64_t C, int64_t D) {
  const int64_t row_tiles = (R + kRowTile - 1) / kRowTile, d_steps = D / Simd<T>::L;
#ifdef PATHGEN_NT_QUADS
  if constexpr (std::is_same_v<T, float>) return (C / 4) * (R / 3 + (R % 3 != 0)) * (D / 8) + row_tiles * (C % 4) * d_steps;
#endif
  return row_tiles * (C / 2 + C % 2) * d_steps;
}

// C[r, n] += sum_k A[r, k] B[k, n] for an RT x (NV vectors) tile.
template <typename T, typename Tb, int RT, int NV>
inline void nn_tile(int64_t K, const T* A, int64_t lda, const Tb* B, int64_t ldb, T* C, int64_t ldc, Prefetch& pf) {
  PrefetchCursor pc(pf);
  using S_ = Simd<T>;
  using V = typename S_::V;
  constexpr int L = S_::L;
  V acc[RT][NV];
  for (int r = 0; r < RT; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = S_::load(C + r * ldc + v * L);
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load_as<T>(B + k * ldb + v * L);
    for (int r = 0; r < RT; ++r) {
      const T a = A[r * lda + k];  // vector * scalar: one vbroadcastss per row
      for (int v = 0; v < NV; ++v) acc[r][v] += b[v] * a;
    }
    pc.step();
  }
  pc.store(pf);
  for (int r = 0; r < RT; ++r)
    for (int v = 0; v < NV; ++v) S_::store(C + r * ldc + v * L, acc[r][v]);
}

template <typename T, int NV, typename Tb>
inline void nn_rows(int rt, int64_t K, const T* A, int64_t lda, const Tb* B, int64_t ldb, T* C, int64_t ldc,
                    Prefetch& pf) {
  with_rows(rt, [&](auto RT) __attribute__((always_inline)) { nn_tile<T, Tb, RT(), NV>(K, A, lda, B, ldb, C, ldc, pf); });
}

// C[r, n] += sum_k A[r, k] B[k, n]   (R x Ncol; A row-major in k, B row-major in n)
template <typename T, typename Tb>
void gemm_nn_acc(int64_t R, int64_t Ncol, int64_t K, const T* A, int64_t lda, const Tb* B, int64_t ldb, T* C,
                 int64_t ldc, Prefetch& pf) {
  constexpr int L = Simd<T>::L;
  int64_t n0 = 0;
  for (; n0 + 2 * L <= Ncol; n0 += 2 * L) {
    for (int64_t r0 = 0; r0 < R; r0 += kRowTile)
      nn_rows<T, 2>(static_cast<int>(std::min<int64_t>(kRowTile, R - r0)), K, A + r0 * lda, lda, B + n0, ldb,
                    C + r0 * ldc + n0, ldc, pf);
  }
  for (; n0 + L <= Ncol; n0 += L)
    for (int64_t r0 = 0; r0 < R; r0 += kRowTile)
      nn_rows<T, 1>(static_cast<int>(std::min<int64_t>(kRowTile, R - r0)), K, A + r0 * lda, lda, B + n0, ldb,
                    C + r0 * ldc + n0, ldc, pf);
  if (n0 < Ncol) {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < K; ++k) {
        const T a = A[r * lda + k];
        for (int64_t n = n0; n < Ncol; ++n) C[r * ldc + n] += a * static_cast<T>(B[k * ldb + n]);
      }
  }
}

// Inner-loop steps of gemm_nn_acc (R x Ncol over K).
template <typename T>
inline int64_t nn_steps(int64_t R, int64_t Ncol, int64_t K) {
  constexpr int L = Simd<T>::L;
  return (Ncol / (2 * L) + (Ncol % (2 * L) >= L)) * ((R + kRowTile - 1) / kRowTile) * K;
}

// ---- how a key block's two products are computed ----------------------------------------
//   blas   wide groups (R query rows per KV head, R min(D, Dv) >= 48 x 256, the folded form): the
//          scores key-major, S^T = K_blk Q^T against the group's queries packed once per split as
//          a [D, R] panel, then O += (S^T)^T V_blk, both through the BLAS torch was built with
//          (MKL or OpenBLAS, single-threaded inside our workers), float32 key rows read in place.
//          Key-major scores make a key's R scores adjacent, as `probs` stores them (one memcpy
//          per key), and the softmax runs down columns with the rows in vector lanes.
//   tiles  narrow groups: S = Q K_blk^T as 3 x 4 (float, AVX) or 6 x 2 dot-product tiles, O += P V_blk
//          as 6 x 16 broadcast-FMA tiles (a GEMM call costs microseconds).
// Case A (16 slides, 207,839 patches, D = 1024, R = 48, fp32, 2 threads, best of 4): blas 474-504 ms,
// row-major BLAS products (S = Q K^T, the previous layout) 523-572 ms, own 6 x 16 kernels in the
// key-major layout 666-700 ms, tiles 741-807 ms. PATHGEN_CPU_PATH=blas|tiles forces either
// (read per call; the tests run both).
enum class Path { kBlas, kTiles };

Path cpu_path(const Problem& p) {
  if (const char* e = std::getenv("PATHGEN_CPU_PATH")) {
    const std::string v(e);
    if (v == "blas") return Path::kBlas;
    if (v == "tiles") return Path::kTiles;
    TORCH_CHECK(v.empty(), "PATHGEN_CPU_PATH must be blas or tiles, got '", v, "'");
  }
  return p.R * std::min(p.D, p.Dv) >= 48 * 256 ? Path::kBlas : Path::kTiles;
}

// [rows, cols] view of row-major memory with leading dimension ld (no copy)
template <typename T>
at::Tensor rows_view(const T* ptr, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(ptr), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// C[R, N] = A[R, K] B[K, N]
template <typename T>
void blas_nn(int64_t R, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  at::Tensor c = rows_view(C, R, N, ldc);
  at::mm_out(c, rows_view(A, R, K, lda), rows_view(B, K, N, ldb));
}

// C[R, N] += A[R, K] B[K, N]
template <typename T>
void blas_nn_acc(int64_t R, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc) {
  rows_view(C, R, N, ldc).addmm_(rows_view(A, R, K, lda), rows_view(B, K, N, ldb));
}

// C[R, N] += A[K, R]^T B[K, N]
template <typename T>
void blas_tn_acc(int64_t R, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C,
                 int64_t ldc) {
  rows_view(C, R, N, ldc).addmm_(rows_view(A, K, R, lda).t(), rows_view(B, K, N, ldb));
}

// ---- shared pieces ----------------------------------------------------------------------

// Keys per cache block: the block's K and V rows of every KV head (about 192 KiB as acc_t)
// stay in L2 between S = Q K^T and O += P V, next to the queries, the output accumulators and
// the next block being prefetched (a 1 MiB L2 holds all four for D = 1024, M H = 48).
int64_t block_keys(const Problem& p, int64_t elem) {
  const int64_t per_key = p.Hkv * (p.D + (p.k_is_v ? 0 : p.Dv)) * elem;
  return std::clamp<int64_t>((192 * 1024) / per_key / 16 * 16, 16, 512);  // rows stay 64-byte aligned
}

struct Item {
  int64_t b, j0, j1;  // slide, key range (all KV heads)
};

// Cuts every slide into splits of equal length; the items of slide b are
// first[b] .. first[b + 1] - 1, and `order` lists them largest first for dynamic scheduling.
struct Work {
  std::vector<Item> items;
  std::vector<int64_t> first;
  std::vector<int64_t> order;
};

Work make_work(const Problem& p, const std::vector<int64_t>& offs, int64_t block) {
  Work w;
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t split = 1;
  for (int64_t b = 0; b < p.B; ++b) split = std::max(split, offs[b + 1] - offs[b]);
  if (threads > 1) {  // about 8 splits per thread over the batch, at least two blocks each
    const int64_t target = (p.N + threads * 8 - 1) / (threads * 8);
    split = std::max<int64_t>(2 * block, (target + block - 1) / block * block);
  }
  w.first.assign(p.B + 1, 0);
  for (int64_t b = 0; b < p.B; ++b) {
    w.first[b] = static_cast<int64_t>(w.items.size());
    for (int64_t j0 = offs[b]; j0 < offs[b + 1]; j0 += split) w.items.push_back({b, j0, std::min(j0 + split, offs[b + 1])});
  }
  w.first[p.B] = static_cast<int64_t>(w.items.size());
  w.order.resize(w.items.size());
  std::iota(w.order.begin(), w.order.end(), int64_t{0});
  std::stable_sort(w.order.begin(), w.order.end(), [&](int64_t a, int64_t c) {
    return w.items[a].j1 - w.items[a].j0 > w.items[c].j1 - w.items[c].j0;
  });
  return w;
}

// Runs fn(item_index, thread_buffers) over all items; threads pull items from a counter.
template <typename Buffers, typename Fn>
void run_items(const Work& w, const Buffers& proto, Fn&& fn) {
  const int64_t n = static_cast<int64_t>(w.items.size());
  if (n == 0) return;
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(std::max<int64_t>(1, at::get_num_threads()), n);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    Buffers buf = proto;
    for (;;) {
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n) break;
      fn(w.order[t], buf);
    }
  });
}

// Strided view of a [*, Hkv, width] tensor whose last dim is contiguous.
template <typename scalar_t>
struct Rows {
  const scalar_t* ptr;
  int64_t s0, s1;
  int64_t heads, width;  // the [heads, width] part of a key's row the op reads
  const scalar_t* row(int64_t j, int64_t g) const { return ptr + j * s0 + g * s1; }
  // The prefetcher requests a block's whole address span [row(j0, 0), row(j0 + n, 0)). Only worth it
  // when the rows the op reads fill most of it: for a narrow slice of a wide tensor (k = wide[..., :D],
  // or a head-major view with s1 > s0) the span holds mostly other data, and fetching it cost up to
  // 2.5x the BLAS path's time (review, N 10,000 x D 64 out of 32,768: 30.6 ms against 12.0).
  bool dense() const {
    const int64_t used = heads * width;
    return s0 > 0 && s1 >= 0 && (heads <= 1 || s1 < s0) && s0 <= 2 * std::max<int64_t>(used, 1);
  }
};

// Leading dimension of packed rows: width rounded up to 16 plus 16 elements, so rows of
// 1024 floats (4 KiB apart) do not all fall into one L1 set.
inline int64_t padded_ld(int64_t width) {
  return (width + 15) / 16 * 16 + 16;
}

// Keys [j0, j0 + n) of every KV head into buf as acc_t, head-major (buf[(g n + c) ld + d]).
// Reads the block in memory order, one sequential stream (per-head strided reads would defeat
// the hardware prefetchers); bf16/fp16 are converted to fp32 on the way.
template <typename scalar_t, typename acc_t>
void pack_block(const Rows<scalar_t>& t, int64_t j0, int64_t n, int64_t Hkv, int64_t width, int64_t ld,
                acc_t* buf) {
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t g = 0; g < Hkv; ++g) {
      const scalar_t* src = t.row(j0 + c, g);
      acc_t* dst = buf + (g * n + c) * ld;
#pragma omp simd
      for (int64_t d = 0; d < width; ++d) dst[d] = static_cast<acc_t>(src[d]);
    }
  }
}

// Prefetcher over the next block's keys [j0, j0 + n) (K, and V unless it is K), paced over the
// `steps` inner-loop iterations of this block's micro-kernels.
template <typename scalar_t>
Prefetch next_block(const Rows<scalar_t>& kr, const Rows<scalar_t>& vr, bool k_is_v, int64_t j0, int64_t n,
                    int64_t steps) {
  Prefetch pf;
  if (n <= 0) return pf;
  if (kr.dense()) pf.set(0, kr.row(j0, 0), n * kr.s0 * static_cast<int64_t>(sizeof(scalar_t)));
  if (!k_is_v && vr.dense()) pf.set(1, vr.row(j0, 0), n * vr.s0 * static_cast<int64_t>(sizeof(scalar_t)));
  if (pf.end[0] == pf.p[0] && pf.end[1] == pf.p[1]) return Prefetch{};  // nothing worth requesting
  const int64_t rate = (pf.lines() * 65536 + steps - 1) / std::max<int64_t>(steps, 1);
  pf.rate = static_cast<uint32_t>(std::min<int64_t>(rate, int64_t(1) << 30));
  return pf;
}

// Row of query (m, h) in the per-slide row order: KV head g = h / G owns rows g R .. g R + R - 1,
// and row g R + i M + m is (query m, head g G + i): the order of `probs` ([N, H, M]), so a key's
// scores of one KV head are R adjacent floats there.
inline int64_t row_of(const Problem& p, int64_t m, int64_t h) {
  return h * p.M + m;  // = (h / G) R + (h % G) M + m
}

// x[b] ([M, H, width], any strides) times `mult` into dst [M H, ld] in row order.
template <typename scalar_t, typename acc_t>
void gather_rows(const Problem& p, const at::Tensor& x, int64_t b, int64_t width, int64_t ld, acc_t mult,
                 acc_t* dst) {
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2), s3 = x.stride(3);
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t h = 0; h < p.H; ++h) {
      const scalar_t* src = xp + b * s0 + m * s1 + h * s2;
      acc_t* d = dst + row_of(p, m, h) * ld;
      for (int64_t e = 0; e < width; ++e) d[e] = static_cast<acc_t>(src[e * s3]) * mult;
    }
  }
}

// ---- forward ------------------------------------------------------------------------------

// (1) one row's state (m, l) takes a block whose largest score is block_max; its output
// accumulator o[0, width) is rescaled by alpha when the running max moved.
template <typename acc_t>
inline void fold_block_max(acc_t& m, acc_t& l, acc_t block_max, acc_t* o, int64_t width) {
  const acc_t alpha = online_rescale(m, l, block_max);
  if (alpha == acc_t(1)) return;
#pragma omp simd
  for (int64_t d = 0; d < width; ++d) o[d] *= alpha;
}

template <typename acc_t>
struct FwdBuffers {
  Scratch<acc_t> q, s, o, kb, vb, m, l, bmax, pb;
};

// x[b] ([M, H, D], any strides) times `mult` into per-KV-head panels dst[g][d][r] ([Hkv, D, R]),
// rows in row_of order: the B operand of the keys-as-rows score product.
template <typename scalar_t, typename acc_t>
void gather_panels(const Problem& p, const at::Tensor& x, int64_t b, int64_t width, acc_t mult, acc_t* dst) {
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const int64_t s0 = x.stride(0), s1 = x.stride(1), s2 = x.stride(2), s3 = x.stride(3);
  for (int64_t m = 0; m < p.M; ++m) {
    for (int64_t h = 0; h < p.H; ++h) {
      const scalar_t* src = xp + b * s0 + m * s1 + h * s2;
      const int64_t g = h / p.G, r = row_of(p, m, h) - g * p.R;
      acc_t* d = dst + g * width * p.R + r;
      for (int64_t e = 0; e < width; ++e) d[e * p.R] = static_cast<acc_t>(src[e * s3]) * mult;
    }
  }
}

template <typename scalar_t>
void forward_impl(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const std::vector<int64_t>& offs, at::Tensor& out, at::Tensor& lse, at::Tensor& probs) {
  using acc_t = at::opmath_type<scalar_t>;
  const Path path = cpu_path(p);
  const bool use_blas = path == Path::kBlas;
  // float32 / float64 key rows are read in place, 16-bit ones packed for BLAS (converted to acc_t).
  // The tiles read in place too: case B (D 128, H = Hkv = 8, fp32, 2 threads, 370,989 keys, alternating
  // processes) 566-582 ms against 649-739 ms packed; three narrow shapes (R 6 D 1024 k = v,
  // R 6 D 256, R 12 D 64) within this VM's noise of each other.
  // The tiles read bf16 / fp16 rows in place too, widened to fp32 in registers (load_as): case B
  // bf16 (16 x 13,000 keys, 2 threads, settings alternated in one process, 15 rounds) 121-135
  // against 151-160 thread-ns per key and head packed; in L3, 1 thread: 84-88 against 106-115;
  // fp16 in L3: 107 against 255; R 6, D 1024, k = v, bf16: 630 against 710. BLAS needs fp32 rows.
  constexpr bool same = std::is_same_v<scalar_t, acc_t>;
  constexpr bool can_widen = kWidensInRegisters<scalar_t> && std::is_same_v<acc_t, float>;
  const bool widen = can_widen && !use_blas;
  const bool direct = same || widen;
  // keys per block (sized by fp32 rows, also for widened 16-bit ones: twice the keys was within noise
  // on case B bf16, fastest and median 109 and 120 against 106 and 122 thread-ns per key and head):
  // BLAS wants large GEMMs (48, 128, 256, 512 keys measured 673, 643, 623, 567 ms
  // median on case A in the row-major layout; bf16 packed: 256 and 512 keys within 1 %); the
  // tiles keep a block's rows in L2 between its two products
  const int64_t C = use_blas ? 512 : block_keys(p, sizeof(acc_t));
  const Work w = make_work(p, offs, C);
  const int64_t n_items = static_cast<int64_t>(w.items.size());
  const int64_t R = p.R, RH = p.Hkv * p.R, D = p.D, Dv = p.Dv, HM = p.H * p.M;
  const int64_t LD = padded_ld(D), LV = padded_ld(Dv);

  const Rows<scalar_t> kr{k.const_data_ptr<scalar_t>(), k.stride(0), k.stride(1), k.size(1), k.size(2)};
  const Rows<scalar_t> vr{v.const_data_ptr<scalar_t>(), v.stride(0), v.stride(1), v.size(1), v.size(2)};
  acc_t* probs_p = p.return_probs ? probs.mutable_data_ptr<acc_t>() : nullptr;

  // per split: normalised output and lse of each of its RH = M H rows
  std::vector<acc_t> part_out(static_cast<size_t>(n_items * RH * Dv));
  std::vector<acc_t> part_lse(static_cast<size_t>(n_items * RH));

  FwdBuffers<acc_t> proto;
  proto.q.resize(use_blas ? p.Hkv * D * R : RH * LD);  // panels [Hkv, D, R] | rows [RH, LD]
  proto.s.resize(R * C);                               // scores [C, R] key-major | [R, C]
  proto.o.resize(RH * LV);
  proto.kb.resize(direct ? 0 : p.Hkv * C * LD);
  proto.vb.resize(direct || p.k_is_v ? 0 : p.Hkv * C * LV);
  proto.m.resize(RH);
  proto.l.resize(RH);
  proto.bmax.resize(R);
  // a block's raw scores [cn, H M] (probs' layout) gathered head by head, then streamed out at once;
  // not needed where the scores already lie that way (BLAS's key-major S with one KV head); blocks
  // whose scores would not fit L2 are written in place, head by head
  const bool probs_direct = use_blas && p.Hkv == 1;
  const bool probs_buffered = p.return_probs && !probs_direct && C * HM * int64_t(sizeof(acc_t)) <= 256 * 1024;
  proto.pb.resize(probs_buffered ? C * HM : 0);

  run_items(w, proto, [&](int64_t idx, FwdBuffers<acc_t>& bf) {
    const Item it = w.items[idx];
    if (use_blas) gather_panels<scalar_t, acc_t>(p, q, it.b, D, static_cast<acc_t>(p.scale), bf.q.data());
    else gather_rows<scalar_t, acc_t>(p, q, it.b, D, LD, static_cast<acc_t>(p.scale), bf.q.data());
    std::fill(bf.o.begin(), bf.o.end(), acc_t(0));
    std::fill(bf.m.begin(), bf.m.end(), neg_inf<acc_t>());
    std::fill(bf.l.begin(), bf.l.end(), acc_t(0));
    acc_t* S = bf.s.data();
    for (int64_t c0 = it.j0; c0 < it.j1; c0 += C) {
      const int64_t cn = std::min(C, it.j1 - c0), c_next = std::min(C, it.j1 - c0 - cn);
      // this block's K and V rows: in place (direct), else packed; head g at base + g * head, rows ld apart
      const acc_t *kbase = bf.kb.data(), *vbase = bf.kb.data();
      int64_t khead = cn * LD, kld = LD, vhead = cn * LV, vld = LV;
      if (same) {
        kbase = reinterpret_cast<const acc_t*>(kr.row(c0, 0)), khead = kr.s1, kld = kr.s0;
        vbase = reinterpret_cast<const acc_t*>(vr.row(c0, 0)), vhead = vr.s1, vld = vr.s0;
      } else if (!direct) {
        pack_block<scalar_t, acc_t>(kr, c0, cn, p.Hkv, D, LD, bf.kb.data());
        if (!p.k_is_v) {
          pack_block<scalar_t, acc_t>(vr, c0, cn, p.Hkv, Dv, LV, bf.vb.data());
          vbase = bf.vb.data();
        }
      }
      // the tiles stream the next block in during this one's arithmetic
      // where this block's raw scores go, [cn, H M] rows H M apart (head g at + g R)
      acc_t* scores_out = probs_p == nullptr ? nullptr : probs_buffered ? bf.pb.data() : probs_p + c0 * HM;
      Prefetch pf = use_blas ? Prefetch{}
                             : next_block(kr, vr, p.k_is_v, c0 + cn, c_next,
                                          p.Hkv * (nt_steps<acc_t>(R, cn, D) + nn_steps<acc_t>(R, Dv, cn)));
      for (int64_t g = 0; g < p.Hkv; ++g) {
        acc_t* Og = bf.o.data() + g * R * LV;
        acc_t* mg = bf.m.data() + g * R;
        acc_t* lg = bf.l.data() + g * R;
        if (use_blas) {
          const acc_t *Kg = kbase + g * khead, *Vg = vbase + g * vhead;
          blas_nn(cn, R, D, Kg, kld, bf.q.data() + g * D * R, R, S, R);  // S^T [cn, R] = K_blk Q^T, scaled
          if (scores_out != nullptr && probs_direct) {  // raw scores, normalised with the final lse afterwards
            stream_copy(scores_out, S, cn * R);
          } else if (scores_out != nullptr) {
            for (int64_t c = 0; c < cn; ++c) std::memcpy(scores_out + c * HM + g * R, S + c * R, R * sizeof(acc_t));
          }
          col_max(S, cn, R, bf.bmax.data());  // (1) online softmax, all rows at once
          for (int64_t r = 0; r < R; ++r) fold_block_max(mg[r], lg[r], bf.bmax[r], Og + r * LV, Dv);
          exp_sub_cols(S, cn, R, mg, lg);
          blas_tn_acc(R, Dv, cn, S, R, Vg, vld, Og, LV);  // O += P V
          continue;
        }
        const acc_t* Qg = bf.q.data() + g * R * LD;
        // K and V rows of head g, as acc_t (in place or packed) or as 16-bit rows widened in registers
        auto tiles = [&](const auto* Kb, int64_t kstride, const auto* Vb, int64_t vstride) {
          gemm_nt<acc_t>(R, cn, D, Qg, LD, Kb, kstride, S, C, pf);  // scores
          if (scores_out != nullptr) {  // raw scores now, normalised with the final lse afterwards
            acc_t* dst = scores_out + g * R;
            for (int64_t c = 0; c < cn; ++c)
              for (int64_t r = 0; r < R; ++r) dst[c * HM + r] = S[r * C + c];
          }
          for (int64_t r = 0; r < R; ++r) {  // (1) online softmax, row by row
            acc_t* row = S + r * C;
            fold_block_max(mg[r], lg[r], row_max(row, cn), Og + r * LV, Dv);
            lg[r] += exp_sub_row<acc_t, false>(row, mg + r, cn);
          }
          gemm_nn_acc<acc_t>(R, Dv, cn, S, C, Vb, vstride, Og, LV, pf);  // O += P V
        };
        if constexpr (can_widen) {
          if (widen) {  // (kbase, vbase are empty buffers then)
            tiles(kr.row(c0, g), kr.s0, vr.row(c0, g), vr.s0);
            continue;
          }
        }
        tiles(kbase + g * khead, kld, vbase + g * vhead, vld);
      }
      // the block's raw scores out with non-temporal stores: probs is written once here and read back
      // once by the normalisation, so reading its lines for ownership first would only add traffic.
      // Realistic case B with probs, alternating processes: fp32 127-158 ms against 141-185 (4 of 4
      // pairs), bf16 93-105 against 110-151 (3 of 3).
      if (probs_buffered) stream_copy(probs_p + c0 * HM, bf.pb.data(), cn * HM);
    }
    if (probs_p != nullptr) stream_fence();  // before the merge's threads read probs
    for (int64_t r = 0; r < RH; ++r) {
      part_lse[idx * RH + r] = state_lse(bf.m[r], bf.l[r]);
      const acc_t inv = state_inv_sum(bf.l[r]);
      const acc_t* o = bf.o.data() + r * LV;
      acc_t* dst = part_out.data() + (idx * RH + r) * Dv;
#pragma omp simd
      for (int64_t d = 0; d < Dv; ++d) dst[d] = o[d] * inv;
    }
  });

  // (2) merge the splits of every slide by their log-sum-exp
  scalar_t* out_p = out.mutable_data_ptr<scalar_t>();
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(Dv);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i0 = w.first[b], ni = w.first[b + 1] - i0;
      for (int64_t m = 0; m < p.M; ++m) {
        for (int64_t h = 0; h < p.H; ++h) {
          const int64_t r = row_of(p, m, h);
          const acc_t total = ni > 0 ? merge_lse(part_lse.data() + i0 * RH + r, ni, RH) : neg_inf<acc_t>();
          std::fill(acc.begin(), acc.end(), acc_t(0));
          for (int64_t s = 0; s < ni; ++s) {
            const acc_t wgt = merge_weight(part_lse[(i0 + s) * RH + r], total);
            const acc_t* src = part_out.data() + ((i0 + s) * RH + r) * Dv;
#pragma omp simd
            for (int64_t d = 0; d < Dv; ++d) acc[d] += wgt * src[d];
          }
          scalar_t* dst = out_p + ((b * p.M + m) * p.H + h) * Dv;
          for (int64_t d = 0; d < Dv; ++d) dst[d] = static_cast<scalar_t>(acc[d]);
          lse_p[(b * p.M + m) * p.H + h] = total;
        }
      }
    }
  });

  if (probs_p != nullptr && p.N > 0) {  // raw scores -> probabilities with the final lse
    std::vector<acc_t> lse_t(p.B * HM);  // [B, H, M], the probs layout
    for (int64_t b = 0; b < p.B; ++b)
      for (int64_t h = 0; h < p.H; ++h)
        for (int64_t m = 0; m < p.M; ++m) lse_t[(b * p.H + h) * p.M + m] = lse_p[(b * p.M + m) * p.H + h];
    at::parallel_for(0, p.N, 2048, [&](int64_t begin, int64_t end) {
      int64_t b = std::upper_bound(offs.begin(), offs.end(), begin) - offs.begin() - 1;
      for (int64_t j = begin; j < end; ++j) {
        while (j >= offs[b + 1]) ++b;
        exp_sub_row<acc_t, true>(probs_p + j * HM, lse_t.data() + b * HM, HM);
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coattention_cpu(const at::Tensor& q, const at::Tensor& k_in,
                                                               const at::Tensor& v_in, const at::Tensor& cu_seqlens,
                                                               int64_t max_seqlen, double scale, bool return_probs) {
  const Problem p = check_forward(q, k_in, v_in, cu_seqlens, scale, return_probs);
  TORCH_CHECK(q.device().is_cpu(), "coattention: CPU kernel got a ", q.device(), " tensor");
  const std::vector<int64_t> offs = host_offsets(cu_seqlens, p.N);
  const at::Tensor k = last_dim_contiguous(k_in);
  const at::Tensor v = p.k_is_v ? k : last_dim_contiguous(v_in);
  const auto st = stats_dtype(q.scalar_type());
  at::Tensor out = at::empty({p.B, p.M, p.H, p.Dv}, q.options());
  at::Tensor lse = at::empty({p.B, p.M, p.H}, q.options().dtype(st));
  at::Tensor probs = at::empty({return_probs ? p.N : 0, p.H, p.M}, q.options().dtype(st));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "coattention_cpu", [&] {
    forward_impl<scalar_t>(p, q, k, v, offs, out, lse, probs);
  });
  return {out, lse, probs};
}

// ---- backward -----------------------------------------------------------------------------

template <typename acc_t>
struct BwdBuffers {
  Scratch<acc_t> q, dout, qp, dop, s, dp, t, kb, vb, gkb, gvb, lse, delta;
};

template <typename scalar_t>
void backward_impl(const Problem& p, const at::Tensor& grad_out, const at::Tensor& grad_lse,
                   const at::Tensor& grad_probs, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const std::vector<int64_t>& offs, const at::Tensor& out, const at::Tensor& lse,
                   const at::Tensor& probs, std::array<bool, 3> mask, at::Tensor& gq, at::Tensor& gk,
                   at::Tensor& gv) {
  using acc_t = at::opmath_type<scalar_t>;
  // wide groups: the forward's key-major BLAS products, on packed blocks of 256 keys
  const bool use_blas = cpu_path(p) == Path::kBlas;
  const int64_t C = use_blas ? 256 : block_keys(p, sizeof(acc_t));
  const int64_t R = p.R, RH = p.Hkv * p.R, D = p.D, Dv = p.Dv, HM = p.H * p.M;
  const int64_t LD = padded_ld(D), LV = padded_ld(Dv);
  const bool has_do = grad_out.defined(), has_gp = grad_probs.defined();
  const acc_t* lse_p = lse.const_data_ptr<acc_t>();

  // (3) delta = <dO, o> + sum_j p_j gP_j - g_lse, per (slide, query, head) in lse's layout
  std::vector<acc_t> delta(p.B * p.M * p.H, acc_t(0));
  at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> pg(HM);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t x = 0; x < p.M * p.H; ++x) {
        const int64_t row = b * p.M * p.H + x;
        acc_t d = 0;
        if (has_do) {
          const scalar_t* go = grad_out.const_data_ptr<scalar_t>() + row * Dv;
          const scalar_t* o = out.const_data_ptr<scalar_t>() + row * Dv;
          for (int64_t e = 0; e < Dv; ++e) d += static_cast<acc_t>(go[e]) * static_cast<acc_t>(o[e]);
        }
        if (grad_lse.defined()) d -= grad_lse.const_data_ptr<acc_t>()[row];
        delta[row] = d;
      }
      if (has_gp) {
        std::fill(pg.begin(), pg.end(), acc_t(0));
        const acc_t* pp = probs.const_data_ptr<acc_t>();
        const acc_t* gp = grad_probs.const_data_ptr<acc_t>();
        for (int64_t j = offs[b]; j < offs[b + 1]; ++j) {
#pragma omp simd
          for (int64_t x = 0; x < HM; ++x) pg[x] += pp[j * HM + x] * gp[j * HM + x];
        }
        for (int64_t h = 0; h < p.H; ++h)
          for (int64_t m = 0; m < p.M; ++m) delta[(b * p.M + m) * p.H + h] += pg[h * p.M + m];
      }
    }
  });

  const Work w = make_work(p, offs, C);
  const int64_t n_items = static_cast<int64_t>(w.items.size());
  const Rows<scalar_t> kr{k.const_data_ptr<scalar_t>(), k.stride(0), k.stride(1), k.size(1), k.size(2)};
  const Rows<scalar_t> vr{v.const_data_ptr<scalar_t>(), v.stride(0), v.stride(1), v.size(1), v.size(2)};
  const acc_t* gp_p = has_gp ? grad_probs.const_data_ptr<acc_t>() : nullptr;
  // [N, Hkv, D] and [N, Hkv, Dv] in the inputs' dtype: each split owns its keys' gradients whole,
  // so they are final when a block is done and go out rounded once, with no fp32 copy to cast after
  scalar_t* gk_p = mask[1] ? gk.mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gv_p = mask[2] ? gv.mutable_data_ptr<scalar_t>() : nullptr;
  std::vector<acc_t> part_dq(mask[0] ? static_cast<size_t>(n_items * RH * D) : 0, acc_t(0));

  BwdBuffers<acc_t> proto;
  proto.q.resize(RH * LD);
  proto.dout.resize(RH * LV, acc_t(0));
  proto.qp.resize(use_blas ? p.Hkv * D * R : 0);  // panels [Hkv, D, R], [Hkv, Dv, R]
  proto.dop.resize(use_blas ? p.Hkv * Dv * R : 0, acc_t(0));
  proto.s.resize(R * C);
  proto.dp.resize(R * C);
  proto.t.resize(C * R);
  proto.kb.resize(p.Hkv * C * LD);
  proto.vb.resize(p.k_is_v ? 0 : p.Hkv * C * LV);
  proto.gkb.resize(gk_p != nullptr ? C * p.Hkv * D : 0);
  proto.gvb.resize(gv_p != nullptr ? C * p.Hkv * Dv : 0);
  proto.lse.resize(RH);
  proto.delta.resize(RH);

  run_items(w, proto, [&](int64_t idx, BwdBuffers<acc_t>& bf) {
    const Item it = w.items[idx];
    gather_rows<scalar_t, acc_t>(p, q, it.b, D, LD, static_cast<acc_t>(p.scale), bf.q.data());
    if (has_do) gather_rows<scalar_t, acc_t>(p, grad_out, it.b, Dv, LV, acc_t(1), bf.dout.data());
    if (use_blas) {
      gather_panels<scalar_t, acc_t>(p, q, it.b, D, static_cast<acc_t>(p.scale), bf.qp.data());
      if (has_do) gather_panels<scalar_t, acc_t>(p, grad_out, it.b, Dv, acc_t(1), bf.dop.data());
    }
    for (int64_t m = 0; m < p.M; ++m) {
      for (int64_t h = 0; h < p.H; ++h) {
        const int64_t x = (it.b * p.M + m) * p.H + h;
        bf.lse[row_of(p, m, h)] = lse_p[x];
        bf.delta[row_of(p, m, h)] = delta[x];
      }
    }
    acc_t* S = bf.s.data();
    acc_t* dP = bf.dp.data();
    acc_t* T = bf.t.data();
    for (int64_t c0 = it.j0; c0 < it.j1; c0 += C) {
      const int64_t cn = std::min(C, it.j1 - c0);
      pack_block<scalar_t, acc_t>(kr, c0, cn, p.Hkv, D, LD, bf.kb.data());
      const acc_t* vbase = bf.kb.data();
      if (!p.k_is_v) {
        pack_block<scalar_t, acc_t>(vr, c0, cn, p.Hkv, Dv, LV, bf.vb.data());
        vbase = bf.vb.data();
      }
      Prefetch pf = next_block(kr, vr, p.k_is_v, c0 + cn, std::min(C, it.j1 - c0 - cn),
                               p.Hkv * (nt_steps<acc_t>(R, cn, D) + (has_do ? nt_steps<acc_t>(R, cn, Dv) : 0) +
                                        (gv_p != nullptr && has_do ? nn_steps<acc_t>(cn, Dv, R) : 0) +
                                        (mask[0] ? nn_steps<acc_t>(R, D, cn) : 0) +
                                        (gk_p != nullptr ? nn_steps<acc_t>(cn, D, R) : 0)));
      if (gk_p != nullptr) std::fill(bf.gkb.begin(), bf.gkb.begin() + cn * p.Hkv * D, acc_t(0));
      if (gv_p != nullptr) std::fill(bf.gvb.begin(), bf.gvb.begin() + cn * p.Hkv * Dv, acc_t(0));
      for (int64_t g = 0; g < p.Hkv; ++g) {
        const acc_t* Qg = bf.q.data() + g * R * LD;
        const acc_t* dOg = bf.dout.data() + g * R * LV;
        const acc_t* Kg = bf.kb.data() + g * cn * LD;
        const acc_t* Vg = vbase + g * cn * LV;
        const acc_t* lse_g = bf.lse.data() + g * R;
        const acc_t* delta_g = bf.delta.data() + g * R;
        acc_t* gkb_g = bf.gkb.data() + g * D;  // [cn, D] rows Hkv D apart
        acc_t* gvb_g = bf.gvb.data() + g * Dv;
        acc_t* dq_g = mask[0] ? part_dq.data() + (idx * RH + g * R) * D : nullptr;

        if (use_blas) {  // key-major: S^T, P^T, dP^T, dS^T are [cn, R]
          blas_nn(cn, R, D, Kg, LD, bf.qp.data() + g * D * R, R, S, R);  // scaled scores
          for (int64_t c = 0; c < cn; ++c) exp_sub_row<acc_t, true>(S + c * R, lse_g, R);  // P^T
          if (has_do) blas_nn(cn, R, Dv, Vg, LV, bf.dop.data() + g * Dv * R, R, dP, R);  // dP^T = V dO^T
          else std::fill(dP, dP + cn * R, acc_t(0));
          if (gp_p != nullptr)
            for (int64_t c = 0; c < cn; ++c) {
              const acc_t* src = gp_p + (c0 + c) * HM + g * R;
#pragma omp simd
              for (int64_t r = 0; r < R; ++r) dP[c * R + r] += src[r];
            }
          if (gv_p != nullptr && has_do) blas_nn_acc(cn, Dv, R, S, R, dOg, LV, gvb_g, p.Hkv * Dv);  // dv = P^T dO
          for (int64_t c = 0; c < cn; ++c) {  // dS^T = P^T (dP^T - delta), in place of dP
#pragma omp simd
            for (int64_t r = 0; r < R; ++r) dP[c * R + r] = grad_score(S[c * R + r], dP[c * R + r], delta_g[r]);
          }
          if (dq_g != nullptr) blas_tn_acc(R, D, cn, dP, R, Kg, LD, dq_g, D);  // dq += dS K
          if (gk_p != nullptr) blas_nn_acc(cn, D, R, dP, R, Qg, LD, gkb_g, p.Hkv * D);  // dk = dS^T (scale q)
          continue;
        }

        gemm_nt<acc_t>(R, cn, D, Qg, LD, Kg, LD, S, C, pf);  // scaled scores
        for (int64_t r = 0; r < R; ++r) {              // P = exp(s - lse)
          exp_sub_row<acc_t, false>(S + r * C, lse_g + r, cn);
        }
        if (has_do) {
          gemm_nt<acc_t>(R, cn, Dv, dOg, LV, Vg, LV, dP, C, pf);  // dP = dO V^T
        } else {
          for (int64_t r = 0; r < R; ++r) std::fill(dP + r * C, dP + r * C + cn, acc_t(0));
        }
        if (gp_p != nullptr) {  // + upstream grad of probs
          for (int64_t c = 0; c < cn; ++c) {
            const acc_t* src = gp_p + (c0 + c) * HM + g * R;
            for (int64_t r = 0; r < R; ++r) dP[r * C + c] += src[r];
          }
        }
        if (gv_p != nullptr && has_do) {  // dv_j = sum_r p_rj dO_r
          for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < cn; ++c) T[c * R + r] = S[r * C + c];
          gemm_nn_acc<acc_t>(cn, Dv, R, T, R, dOg, LV, gvb_g, p.Hkv * Dv, pf);
        }
        for (int64_t r = 0; r < R; ++r) {  // dS = p (dP - delta), in place of dP
          acc_t* dpr = dP + r * C;
          const acc_t* pr = S + r * C;
          const acc_t dl = delta_g[r];
#pragma omp simd
          for (int64_t c = 0; c < cn; ++c) dpr[c] = grad_score(pr[c], dpr[c], dl);
        }
        if (mask[0])  // dq_r += sum_j dS_rj k_j   (times scale at the merge)
          gemm_nn_acc<acc_t>(R, D, cn, dP, C, Kg, LD, dq_g, D, pf);
        if (gk_p != nullptr) {  // dk_j = sum_r dS_rj (scale q_r)
          for (int64_t r = 0; r < R; ++r)
            for (int64_t c = 0; c < cn; ++c) T[c * R + r] = dP[r * C + c];
          gemm_nn_acc<acc_t>(cn, D, R, T, R, Qg, LD, gkb_g, p.Hkv * D, pf);
        }
      }
      // this split owns keys [c0, c0 + cn) of every head: one contiguous copy each, non-temporal
      // (written once, not read here again: no read for ownership)
      if (gk_p != nullptr) store_rows(gk_p + c0 * p.Hkv * D, bf.gkb.data(), cn * p.Hkv * D);
      if (gv_p != nullptr) store_rows(gv_p + c0 * p.Hkv * Dv, bf.gvb.data(), cn * p.Hkv * Dv);
    }
    if (gk_p != nullptr || gv_p != nullptr) stream_fence();
  });

  if (mask[0]) {  // sum the splits' dq, times scale, into gq [B, M, H, D]
    scalar_t* gq_p = gq.mutable_data_ptr<scalar_t>();
    const acc_t sc = static_cast<acc_t>(p.scale);
    at::parallel_for(0, p.B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(D);
      for (int64_t b = begin; b < end; ++b) {
        const int64_t i0 = w.first[b], i1 = w.first[b + 1];
        for (int64_t m = 0; m < p.M; ++m) {
          for (int64_t h = 0; h < p.H; ++h) {
            const int64_t r = row_of(p, m, h);
            std::fill(acc.begin(), acc.end(), acc_t(0));
            for (int64_t s = i0; s < i1; ++s) {
              const acc_t* src = part_dq.data() + (s * RH + r) * D;
#pragma omp simd
              for (int64_t d = 0; d < D; ++d) acc[d] += src[d];
            }
            scalar_t* dst = gq_p + ((b * p.M + m) * p.H + h) * D;
            for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<scalar_t>(acc[d] * sc);
          }
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coattention_backward_cpu(
    const std::optional<at::Tensor>& grad_out, const std::optional<at::Tensor>& grad_lse,
    const std::optional<at::Tensor>& grad_probs, const at::Tensor& q, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& cu_seqlens, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& probs, int64_t max_seqlen, double scale, std::array<bool, 3> mask) {
  const Problem p = check_forward(q, k_in, v_in, cu_seqlens, scale, false);
  check_backward(p, q, grad_out, grad_lse, grad_probs, out, lse, probs);
  TORCH_CHECK(q.device().is_cpu(), "coattention backward: CPU kernel got a ", q.device(), " tensor");
  const std::vector<int64_t> offs = host_offsets(cu_seqlens, p.N);
  const at::Tensor k = last_dim_contiguous(k_in);
  const at::Tensor v = p.k_is_v ? k : last_dim_contiguous(v_in);
  at::Tensor gq = mask[0] ? at::empty(q.sizes(), q.options()) : at::empty({0}, q.options());
  at::Tensor gk = mask[1] ? at::empty({p.N, p.Hkv, p.D}, q.options()) : at::empty({0}, q.options());
  at::Tensor gv = mask[2] ? at::empty({p.N, p.Hkv, p.Dv}, q.options()) : at::empty({0}, q.options());
  const at::Tensor go = grad_out.has_value() ? grad_out->contiguous() : at::Tensor();
  const at::Tensor gl = grad_lse.has_value() ? grad_lse->contiguous() : at::Tensor();
  const at::Tensor gp = grad_probs.has_value() ? grad_probs->contiguous() : at::Tensor();
  const at::Tensor pr = grad_probs.has_value() ? probs->contiguous() : at::Tensor();
  const at::Tensor o = out.contiguous();
  const at::Tensor l = lse.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "coattention_backward_cpu", [&] {
    backward_impl<scalar_t>(p, go, gl, gp, q, k, v, offs, o, l, pr, mask, gq, gk, gv);
  });
  return {gq, gk, gv};
}

}  // namespace
}  // namespace coattn
}  // namespace pathgen

TORCH_LIBRARY_IMPL(pathgen, CPU, m) {
  m.impl("coattention", &pathgen::coattn::coattention_cpu);
  m.impl("_coattention_backward", &pathgen::coattn::coattention_backward_cpu);
}
