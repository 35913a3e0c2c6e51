#pragma once
// Per-row arithmetic of co-attention, shared by the CPU loops and the CUDA kernels
// (PATHGEN_HOST_DEVICE_INLINE), so the two backends differ only in reduction order.
//
// Notation for one query row r (a (slide, query, head) triple) over its slide's keys j:
//   s_j = scale * <q_r, k_j>                       scaled score (what `probs` holds before normalising)
//   lse = log sum_j exp(s_j)                       log-sum-exp, -inf for an empty bag
//   p_j = exp(s_j - lse)                           attention probability
//   o   = sum_j p_j v_j                            output (0 for an empty bag)
//
// (1) Online softmax (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022). A running
//     state (m, l) with m = max s seen so far and l = sum exp(s - m); the unnormalised output
//     accumulator acc = sum exp(s - m) v. Seeing a block of scores with maximum b:
//       m' = max(m, b),  alpha = exp(m - m'),  l' = alpha l + sum_block exp(s - m'),
//       acc' = alpha acc + sum_block exp(s - m') v.
//     At the end: o = acc / l, lse = m + log l.
// (2) Split-KV merge (Flash-Decoding, Dao et al. 2023). Splits s of the same row give
//     (o_s, lse_s); then lse = log sum_s exp(lse_s), o = sum_s exp(lse_s - lse) o_s.
// (3) Backward (FlashAttention-2, Alg. 2), with optional upstream grads of lse and probs:
//       dP_j = <dO, v_j> + gP_j,   delta = <dO, o> + sum_j p_j gP_j - g_lse,
//       dS_j = p_j (dP_j - delta),
//       dq = scale sum_j dS_j k_j,  dk_j = scale dS_j q,  dv_j = p_j dO.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace pathgen {
namespace coattn {

template <typename T>
PATHGEN_HOST_DEVICE_INLINE T neg_inf() {
  return -INFINITY;
}

// exp / log by precision (the C names exist on host and device alike).
PATHGEN_HOST_DEVICE_INLINE float math_exp(float x) { return expf(x); }
PATHGEN_HOST_DEVICE_INLINE double math_exp(double x) { return exp(x); }
PATHGEN_HOST_DEVICE_INLINE float math_log(float x) { return logf(x); }
PATHGEN_HOST_DEVICE_INLINE double math_log(double x) { return log(x); }

// exp of a value known to be <= 0 (a score minus a running max) in the inner loops.
// Device: the hardware approximation; host: Cephes' expf polynomial (relative error ~1e-7),
// branch-free; the CPU kernel runs the same steps on 8 lanes at once. exp(-inf) = 0.
PATHGEN_HOST_DEVICE_INLINE float exp_fast(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2): 1.5 * 2^23 trick
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;  // x - n ln 2, in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(float));
  return x < -87.0f ? 0.0f : e * two_n;
#endif
}

PATHGEN_HOST_DEVICE_INLINE double exp_fast(double x) {
  return exp(x);  // float64 runs (gradcheck) stay exact
}

// (1) fold a block whose largest score is `block_max` into the running state (m, l).
// Returns alpha, the factor that rescales the previous sum and output accumulator; the
// caller then adds sum_block exp(s - m) (with the updated m) to l.
template <typename T>
PATHGEN_HOST_DEVICE_INLINE T online_rescale(T& m, T& l, T block_max) {
  const T m_new = block_max > m ? block_max : m;
  const T alpha = m == neg_inf<T>() ? T(0) : exp_fast(m - m_new);
  m = m_new;
  l *= alpha;
  return alpha;
}

// (1) end of a run: log-sum-exp of the scores seen (-inf when none were).
template <typename T>
PATHGEN_HOST_DEVICE_INLINE T state_lse(T m, T l) {
  return l > T(0) ? m + math_log(l) : neg_inf<T>();
}

// (1) end of a run: 1 / l, the factor normalising the accumulator (0 when empty).
template <typename T>
PATHGEN_HOST_DEVICE_INLINE T state_inv_sum(T l) {
  return l > T(0) ? T(1) / l : T(0);
}

// (2) merge the log-sum-exps of n splits (stride apart): lse = log sum_s exp(lse_s).
template <typename T>
PATHGEN_HOST_DEVICE_INLINE T merge_lse(const T* lse_s, int64_t n, int64_t stride) {
  T mx = neg_inf<T>();
  for (int64_t s = 0; s < n; ++s) mx = lse_s[s * stride] > mx ? lse_s[s * stride] : mx;
  if (mx == neg_inf<T>()) return mx;
  T sum = 0;
  for (int64_t s = 0; s < n; ++s) sum += math_exp(lse_s[s * stride] - mx);
  return mx + math_log(sum);
}

// (2) weight of a split's normalised output in the merged output.
template <typename T>
PATHGEN_HOST_DEVICE_INLINE T merge_weight(T lse_s, T lse) {
  return lse_s == neg_inf<T>() ? T(0) : math_exp(lse_s - lse);
}

// probability of a key from its scaled score and the row's final lse.
template <typename T>
PATHGEN_HOST_DEVICE_INLINE T prob_of(T score, T lse) {
  return lse == neg_inf<T>() ? T(0) : math_exp(score - lse);
}

// (3) dS for one (row, key): p (dP - delta).
template <typename T>
PATHGEN_HOST_DEVICE_INLINE T grad_score(T p, T dp, T delta) {
  return p * (dp - delta);
}

}  // namespace coattn
}  // namespace pathgen
