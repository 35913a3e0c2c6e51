#pragma once
// Host-side pieces shared by the CPU and CUDA backends of pathgen::coattention.
//
// Layout (flash-attention's varlen convention, queries batched per slide):
//   q           [B, M, H, D]      M queries per slide, H heads
//   k           [total_n, Hkv, D] keys of all slides, packed slide after slide
//   v           [total_n, Hkv, Dv]
//   cu_seqlens  int32 [B + 1]     slide b owns keys [cu[b], cu[b+1])
//   out         [B, M, H, Dv]     q.dtype
//   lse         [B, M, H]         float32 (float64 for float64 inputs)
//   probs       [total_n, H, M]   float32 (float64 for float64 inputs); [0, H, M] when not asked
// Query head h reads KV head h / G with G = H / Hkv. The R = M * G query rows sharing a KV
// head are processed together, row r = m * G + i standing for (query m, head g * G + i).
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <vector>

#include "coattention/coattention_math.h"

namespace pathgen {
namespace coattn {

struct Problem {
  int64_t B, M, H, Hkv, G, R, D, Dv, N;
  double scale;
  bool return_probs;
  bool k_is_v;  // k and v are one tensor (folded form): read it once
};

// Checks shapes, dtypes and devices (second guard behind the Python face).
Problem check_forward(const at::Tensor& q,           // [B, M, H, D]
                      const at::Tensor& k,           // [total_n, Hkv, D]
                      const at::Tensor& v,           // [total_n, Hkv, Dv]
                      const at::Tensor& cu_seqlens,  // int32 [B + 1]
                      double scale, bool return_probs);

// Checks the backward op's extra tensors against the forward problem.
void check_backward(const Problem& p, const at::Tensor& q,
                    const std::optional<at::Tensor>& grad_out,    // [B, M, H, Dv]
                    const std::optional<at::Tensor>& grad_lse,    // [B, M, H]
                    const std::optional<at::Tensor>& grad_probs,  // [total_n, H, M]
                    const at::Tensor& out,                        // [B, M, H, Dv]
                    const at::Tensor& lse,                        // [B, M, H]
                    const std::optional<at::Tensor>& probs);      // [total_n, H, M]

// cu_seqlens copied to the host as int64 and value-checked: cu[0] = 0, non-decreasing,
// cu[B] = total_n. (The CPU kernel relies on it; the CUDA path trusts the Python face.)
std::vector<int64_t> host_offsets(const at::Tensor& cu_seqlens, int64_t total_n);

// Dtype of lse and probs: float32, or float64 for float64 inputs.
at::ScalarType stats_dtype(at::ScalarType input);

// A tensor whose last dimension is contiguous (a copy only when it is not).
at::Tensor last_dim_contiguous(const at::Tensor& t);

}  // namespace coattn
}  // namespace pathgen
