// CPU backend of pathgen::denoise_step: one pass over [B, G], ATen's thread pool
// (OpenMP) over contiguous element ranges, vectorised inner loops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/dispatch.h"
#include "denoise_step/denoise_step.h"

namespace pathgen {
namespace denoise {

namespace {

template <typename scalar_t, bool kNoise, bool kGuided, bool kClip>
void run_rows(const StepArgs& args, const std::vector<RowCoeffs>& coeffs, int64_t G, int64_t begin,
              int64_t end, const scalar_t* x, const scalar_t* m, const scalar_t* mu,
              const scalar_t* n, scalar_t* o) {
  int64_t i = begin;
  while (i < end) {
    const int64_t row = i / G;
    const int64_t stop = std::min(end, (row + 1) * G);
    const RowCoeffs c = coeffs[row];
    const float w = args.guidance_scale, lo = args.clip_min, hi = args.clip_max;
#pragma omp simd
    for (int64_t j = i; j < stop; ++j) {
      const float xv = static_cast<float>(x[j]);
      float mv = static_cast<float>(m[j]);
      if constexpr (kGuided) mv = guide(mv, static_cast<float>(mu[j]), w);
      const float nv = kNoise ? static_cast<float>(n[j]) : 0.f;
      float r;
      if constexpr (kClip) r = step_clipped(xv, mv, nv, c, lo, hi);
      else r = step_linear(xv, mv, nv, c);
      o[j] = static_cast<scalar_t>(r);
    }
    i = stop;
  }
}

template <typename scalar_t, bool kNoise, bool kGuided, bool kClip>
void launch(const StepArgs& args, const std::vector<RowCoeffs>& coeffs, const at::Tensor& x,
            const at::Tensor& m, const at::Tensor& mu, const at::Tensor& n, at::Tensor& o) {
  const int64_t total = x.numel();
  const int64_t G = x.size(1);
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  const scalar_t* mp = m.const_data_ptr<scalar_t>();
  const scalar_t* up = kGuided ? mu.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* np = kNoise ? n.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* op = o.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, total, 1 << 15, [&](int64_t begin, int64_t end) {
    run_rows<scalar_t, kNoise, kGuided, kClip>(args, coeffs, G, begin, end, xp, mp, up, np, op);
  });
}

void denoise_step_out_cpu(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& t,
                          const at::Tensor& t_prev, const at::Tensor& alphas_cumprod,
                          c10::string_view mode, double eta, c10::string_view prediction,
                          const std::optional<at::Tensor>& noise, std::optional<double> clip_min,
                          std::optional<double> clip_max, std::optional<double> guidance_scale,
                          const std::optional<at::Tensor>& model_output_uncond, at::Tensor out) {
  const StepArgs args = check_inputs(x_t, model_output, t, t_prev, alphas_cumprod, std::string(mode), eta,
                                     std::string(prediction), noise, clip_min, clip_max, guidance_scale,
                                     model_output_uncond, out);
  TORCH_CHECK(x_t.device().is_cpu(), "denoise_step: CPU kernel got a ", x_t.device(), " tensor");
  if (x_t.numel() == 0) return;
  std::vector<double> a_t, a_p;
  gather_alphas(t, t_prev, alphas_cumprod, a_t, a_p);
  std::vector<RowCoeffs> coeffs(a_t.size());
  for (size_t i = 0; i < a_t.size(); ++i)
    coeffs[i] = row_coeffs(a_t[i], a_p[i], args.mode, args.prediction, args.eta);

  const at::Tensor x = x_t.contiguous();
  const at::Tensor m = model_output.contiguous();
  const at::Tensor mu = args.guided ? model_output_uncond->contiguous() : at::Tensor();
  const at::Tensor n = noise.has_value() ? noise->contiguous() : at::Tensor();
  const bool out_contig = out.is_contiguous();
  at::Tensor o = out_contig ? out : at::empty_like(x);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "denoise_step_cpu", [&] {
    dispatch_flags(n.defined(), args.guided, args.clip, [&](auto kNoise, auto kGuided, auto kClip) {
      launch<scalar_t, decltype(kNoise)::value, decltype(kGuided)::value, decltype(kClip)::value>(
          args, coeffs, x, m, mu, n, o);
    });
  });
  if (!out_contig) out.copy_(o);
}

at::Tensor denoise_step_cpu(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& t,
                            const at::Tensor& t_prev, const at::Tensor& alphas_cumprod,
                            c10::string_view mode, double eta, c10::string_view prediction,
                            const std::optional<at::Tensor>& noise, std::optional<double> clip_min,
                            std::optional<double> clip_max, std::optional<double> guidance_scale,
                            const std::optional<at::Tensor>& model_output_uncond) {
  at::Tensor out = at::empty_like(x_t, at::MemoryFormat::Contiguous);
  denoise_step_out_cpu(x_t, model_output, t, t_prev, alphas_cumprod, mode, eta, prediction, noise, clip_min,
                       clip_max, guidance_scale, model_output_uncond, out);
  return out;
}

}  // namespace
}  // namespace denoise
}  // namespace pathgen

TORCH_LIBRARY_IMPL(pathgen, CPU, m) {
  m.impl("denoise_step", &pathgen::denoise::denoise_step_cpu);
  m.impl("denoise_step_out", &pathgen::denoise::denoise_step_out_cpu);
}
