// CUDA backend of pathgen::denoise_step: a tiny kernel derives the per-row coefficients
// on the device (no host sync), then one coalesced pass over [B, G] applies them.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/dispatch.h"
#include "denoise_step/denoise_step.h"

namespace pathgen {
namespace denoise {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // elements per thread per row chunk

template <typename acc_t>
__global__ void coeffs_kernel(const int64_t* __restrict__ t, const int64_t* __restrict__ t_prev,
                              const acc_t* __restrict__ alphas, int64_t T, int64_t B, Mode mode,
                              Prediction pred, double eta, RowCoeffs* __restrict__ out) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= B) return;
  const int64_t ti = t[i], pi = t_prev[i];
  if (ti < 0 || ti >= T || pi < -1 || pi >= ti) {  // the Python face raises first; poison the row
    const float nan = __int_as_float(0x7fc00000);
    out[i] = RowCoeffs{nan, nan, nan, nan, nan, nan, nan};
    return;
  }
  const double a_t = static_cast<double>(alphas[ti]);
  const double a_p = pi < 0 ? 1.0 : static_cast<double>(alphas[pi]);
  out[i] = row_coeffs(a_t, a_p, mode, pred, eta);
}

template <typename scalar_t, bool kNoise, bool kGuided, bool kClip>
__global__ void __launch_bounds__(kThreads)
step_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ m, const scalar_t* __restrict__ mu,
            const scalar_t* __restrict__ n, scalar_t* o, const RowCoeffs* __restrict__ coeffs, int64_t B,
            int64_t G, float w, float lo, float hi) {
  for (int64_t row = blockIdx.y; row < B; row += gridDim.y) {
    const RowCoeffs c = coeffs[row];
    const int64_t base = row * G;
    const int64_t col0 = (int64_t)blockIdx.x * kThreads * kItems + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t col = col0 + (int64_t)k * kThreads;
      if (col < G) {
        const int64_t j = base + col;
        const float xv = static_cast<float>(x[j]);
        float mv = static_cast<float>(m[j]);
        if constexpr (kGuided) mv = guide(mv, static_cast<float>(mu[j]), w);
        const float nv = kNoise ? static_cast<float>(n[j]) : 0.f;
        float r;
        if constexpr (kClip) r = step_clipped(xv, mv, nv, c, lo, hi);
        else r = step_linear(xv, mv, nv, c);
        o[j] = static_cast<scalar_t>(r);
      }
    }
  }
}

void denoise_step_out_cuda(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& t,
                           const at::Tensor& t_prev, const at::Tensor& alphas_cumprod,
                           c10::string_view mode, double eta, c10::string_view prediction,
                           const std::optional<at::Tensor>& noise, std::optional<double> clip_min,
                           std::optional<double> clip_max, std::optional<double> guidance_scale,
                           const std::optional<at::Tensor>& model_output_uncond, at::Tensor out) {
  const StepArgs args = check_inputs(x_t, model_output, t, t_prev, alphas_cumprod, std::string(mode), eta,
                                     std::string(prediction), noise, clip_min, clip_max, guidance_scale,
                                     model_output_uncond, out);
  TORCH_CHECK(x_t.is_cuda(), "denoise_step: CUDA kernel got a ", x_t.device(), " tensor");
  const c10::cuda::CUDAGuard guard(x_t.device());
  const int64_t B = x_t.size(0), G = x_t.size(1);
  if (x_t.numel() == 0) return;
  auto stream = c10::cuda::getCurrentCUDAStream();

  const auto dev = x_t.device();
  at::Tensor tt = t.to(dev, at::kLong).contiguous();
  at::Tensor tp = t_prev.to(dev, at::kLong).contiguous();
  at::Tensor ac = alphas_cumprod.to(dev, at::kFloat).contiguous();
  static_assert(sizeof(RowCoeffs) % sizeof(float) == 0, "RowCoeffs must be float-packed");
  at::Tensor coeffs = at::empty({B, (int64_t)(sizeof(RowCoeffs) / sizeof(float))}, x_t.options().dtype(at::kFloat));
  auto* cp = reinterpret_cast<RowCoeffs*>(coeffs.data_ptr<float>());
  coeffs_kernel<float><<<(B + 127) / 128, 128, 0, stream>>>(tt.data_ptr<int64_t>(), tp.data_ptr<int64_t>(),
                                                             ac.data_ptr<float>(), ac.size(0), B, args.mode,
                                                             args.prediction, args.eta, cp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor x = x_t.contiguous();
  const at::Tensor m = model_output.contiguous();
  const at::Tensor mu = args.guided ? model_output_uncond->contiguous() : at::Tensor();
  const at::Tensor n = noise.has_value() ? noise->contiguous() : at::Tensor();
  const bool out_contig = out.is_contiguous();
  at::Tensor o = out_contig ? out : at::empty_like(x);

  const dim3 block(kThreads);
  const dim3 grid((unsigned)((G + kThreads * kItems - 1) / (kThreads * kItems)), (unsigned)std::min<int64_t>(B, 65535));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "denoise_step_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* up = args.guided ? mu.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* np = n.defined() ? n.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = o.mutable_data_ptr<scalar_t>();
    dispatch_flags(n.defined(), args.guided, args.clip, [&](auto kNoise, auto kGuided, auto kClip) {
      step_kernel<scalar_t, decltype(kNoise)::value, decltype(kGuided)::value, decltype(kClip)::value>
          <<<grid, block, 0, stream>>>(xp, mp, up, np, op, cp, B, G, args.guidance_scale, args.clip_min,
                                       args.clip_max);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!out_contig) out.copy_(o);
}

at::Tensor denoise_step_cuda(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& t,
                             const at::Tensor& t_prev, const at::Tensor& alphas_cumprod,
                             c10::string_view mode, double eta, c10::string_view prediction,
                             const std::optional<at::Tensor>& noise, std::optional<double> clip_min,
                             std::optional<double> clip_max, std::optional<double> guidance_scale,
                             const std::optional<at::Tensor>& model_output_uncond) {
  at::Tensor out = at::empty_like(x_t, at::MemoryFormat::Contiguous);
  denoise_step_out_cuda(x_t, model_output, t, t_prev, alphas_cumprod, mode, eta, prediction, noise, clip_min,
                        clip_max, guidance_scale, model_output_uncond, out);
  return out;
}

}  // namespace
}  // namespace denoise
}  // namespace pathgen

TORCH_LIBRARY_IMPL(pathgen, CUDA, m) {
  m.impl("denoise_step", &pathgen::denoise::denoise_step_cuda);
  m.impl("denoise_step_out", &pathgen::denoise::denoise_step_out_cuda);
}
