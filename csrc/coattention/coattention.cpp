// Argument checks shared by the CPU and CUDA backends of pathgen::coattention.
#include "coattention/coattention.h"

namespace pathgen {
namespace coattn {

Problem check_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& cu_seqlens, double scale, bool return_probs) {
  TORCH_CHECK(q.dim() == 4, "coattention: q must be [B, M, H, D], got ", q.sizes());
  TORCH_CHECK(k.dim() == 3, "coattention: k must be [total_n, Hkv, D], got ", k.sizes());
  TORCH_CHECK(v.dim() == 3, "coattention: v must be [total_n, Hkv, Dv], got ", v.sizes());
  TORCH_CHECK(cu_seqlens.dim() == 1, "coattention: cu_seqlens must be 1-D [B + 1], got ", cu_seqlens.sizes());
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
              "coattention: q dtype must be float32/float16/bfloat16/float64, got ", dt);
  TORCH_CHECK(k.scalar_type() == dt && v.scalar_type() == dt, "coattention: q, k, v dtypes differ (",
              dt, ", ", k.scalar_type(), ", ", v.scalar_type(), ")");
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt, "coattention: cu_seqlens must be int32, got ",
              cu_seqlens.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device() && cu_seqlens.device() == q.device(),
              "coattention: q, k, v, cu_seqlens must be on one device (", q.device(), ", ", k.device(), ", ",
              v.device(), ", ", cu_seqlens.device(), ")");
  Problem p{};
  p.B = q.size(0);
  p.M = q.size(1);
  p.H = q.size(2);
  p.D = q.size(3);
  p.N = k.size(0);
  p.Hkv = k.size(1);
  p.Dv = v.size(2);
  TORCH_CHECK(cu_seqlens.size(0) == p.B + 1, "coattention: cu_seqlens has ", cu_seqlens.size(0),
              " entries, expected B + 1 = ", p.B + 1);
  TORCH_CHECK(k.size(2) == p.D, "coattention: k head dim ", k.size(2), " != q head dim ", p.D);
  TORCH_CHECK(v.size(0) == p.N && v.size(1) == p.Hkv, "coattention: v must be [", p.N, ", ", p.Hkv,
              ", Dv], got ", v.sizes());
  TORCH_CHECK(p.Hkv > 0 && p.H % p.Hkv == 0, "coattention: H = ", p.H, " must be a multiple of Hkv = ", p.Hkv);
  TORCH_CHECK(p.D > 0 && p.Dv > 0, "coattention: head dims must be positive");
  p.G = p.H / p.Hkv;
  p.R = p.M * p.G;
  p.scale = scale;
  p.return_probs = return_probs;
  p.k_is_v = k.is_same(v) || (k.data_ptr() == v.data_ptr() && k.sizes() == v.sizes() &&
                              k.strides() == v.strides());
  return p;
}

void check_backward(const Problem& p, const at::Tensor& q, const std::optional<at::Tensor>& grad_out,
                    const std::optional<at::Tensor>& grad_lse, const std::optional<at::Tensor>& grad_probs,
                    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& probs) {
  auto shape = [](const at::Tensor& t, std::initializer_list<int64_t> want, const char* name) {
    TORCH_CHECK(t.sizes() == at::IntArrayRef(want), "coattention backward: ", name, " must be ",
                at::IntArrayRef(want), ", got ", t.sizes());
  };
  shape(out, {p.B, p.M, p.H, p.Dv}, "out");
  shape(lse, {p.B, p.M, p.H}, "lse");
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), "coattention backward: out dtype != q dtype");
  const auto st = stats_dtype(q.scalar_type());
  TORCH_CHECK(lse.scalar_type() == st, "coattention backward: lse must be ", st);
  if (grad_out.has_value()) {
    shape(*grad_out, {p.B, p.M, p.H, p.Dv}, "grad_out");
    TORCH_CHECK(grad_out->scalar_type() == q.scalar_type(), "coattention backward: grad_out dtype != q dtype");
  }
  if (grad_lse.has_value()) {
    shape(*grad_lse, {p.B, p.M, p.H}, "grad_lse");
    TORCH_CHECK(grad_lse->scalar_type() == st, "coattention backward: grad_lse must be ", st);
  }
  if (grad_probs.has_value()) {
    TORCH_CHECK(probs.has_value(), "coattention backward: grad_probs needs the forward probs");
    shape(*grad_probs, {p.N, p.H, p.M}, "grad_probs");
    shape(*probs, {p.N, p.H, p.M}, "probs");
    TORCH_CHECK(grad_probs->scalar_type() == st && probs->scalar_type() == st,
                "coattention backward: probs and grad_probs must be ", st);
  }
  for (const auto* t : {&out, &lse}) {
    TORCH_CHECK(t->device() == q.device(), "coattention backward: tensors on different devices");
  }
  // a direct call (not through autograd) could pass a host tensor beside device ones
  for (const auto* t : {&grad_out, &grad_lse, &grad_probs, &probs}) {
    TORCH_CHECK(!t->has_value() || (*t)->device() == q.device(), "coattention backward: gradient and probs ",
                "tensors must be on q's device ", q.device());
  }
}

std::vector<int64_t> host_offsets(const at::Tensor& cu_seqlens, int64_t total_n) {
  const at::Tensor c = cu_seqlens.to(at::kCPU, at::kLong).contiguous();
  const int64_t* cp = c.const_data_ptr<int64_t>();
  const int64_t n = c.size(0);
  std::vector<int64_t> offs(cp, cp + n);
  TORCH_CHECK(n >= 1 && offs[0] == 0, "coattention: cu_seqlens[0] must be 0");
  for (int64_t b = 0; b + 1 < n; ++b) {
    TORCH_CHECK(offs[b + 1] >= offs[b], "coattention: cu_seqlens must be non-decreasing, but cu_seqlens[",
                b + 1, "] = ", offs[b + 1], " < cu_seqlens[", b, "] = ", offs[b]);
  }
  TORCH_CHECK(offs[n - 1] == total_n, "coattention: cu_seqlens[-1] = ", offs[n - 1],
              " must equal the number of packed keys ", total_n);
  return offs;
}

at::ScalarType stats_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return (t.size(-1) <= 1 || t.stride(-1) == 1) ? t : t.contiguous();
}

}  // namespace coattn
}  // namespace pathgen
