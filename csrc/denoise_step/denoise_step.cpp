// Argument checks shared by the CPU and CUDA backends of pathgen::denoise_step.
#include <cmath>

#include "denoise_step/denoise_step.h"

namespace pathgen {
namespace denoise {

StepArgs check_inputs(const at::Tensor& x_t, const at::Tensor& model_output, const at::Tensor& t,
                      const at::Tensor& t_prev, const at::Tensor& alphas_cumprod,
                      const std::string& mode, double eta, const std::string& prediction,
                      const std::optional<at::Tensor>& noise, std::optional<double> clip_min,
                      std::optional<double> clip_max, std::optional<double> guidance_scale,
                      const std::optional<at::Tensor>& model_output_uncond,
                      const at::Tensor& out) {
  StepArgs a{};
  TORCH_CHECK(mode == "ddpm" || mode == "ddim", "denoise_step: mode must be 'ddpm' or 'ddim', got '", mode, "'");
  a.mode = mode == "ddpm" ? Mode::DDPM : Mode::DDIM;
  if (prediction == "epsilon") a.prediction = Prediction::Epsilon;
  else if (prediction == "sample") a.prediction = Prediction::Sample;
  else if (prediction == "v_prediction") a.prediction = Prediction::VPrediction;
  else TORCH_CHECK(false, "denoise_step: prediction must be epsilon|sample|v_prediction, got '", prediction, "'");
  TORCH_CHECK(eta >= 0.0 && eta <= 1.0, "denoise_step: eta must lie in [0, 1], got ", eta);
  a.eta = eta;
  TORCH_CHECK(x_t.dim() == 2, "denoise_step: x_t must be [B, G], got ", x_t.sizes());
  const auto B = x_t.size(0);
  auto same = [&](const at::Tensor& y, const char* name) {
    TORCH_CHECK(y.sizes() == x_t.sizes(), "denoise_step: ", name, " must have x_t's shape ", x_t.sizes(), ", got ", y.sizes());
    TORCH_CHECK(y.scalar_type() == x_t.scalar_type(), "denoise_step: ", name, " dtype ", y.scalar_type(), " != x_t dtype ", x_t.scalar_type());
    TORCH_CHECK(y.device() == x_t.device(), "denoise_step: ", name, " is on ", y.device(), ", x_t on ", x_t.device());
  };
  same(model_output, "model_output");
  same(out, "out");
  if (noise.has_value()) same(*noise, "noise");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B && t_prev.dim() == 1 && t_prev.size(0) == B,
              "denoise_step: t and t_prev must be [B] with B = ", B);
  TORCH_CHECK(!at::isFloatingType(t.scalar_type()) && !at::isFloatingType(t_prev.scalar_type()),
              "denoise_step: t and t_prev must be integer tensors");
  TORCH_CHECK(alphas_cumprod.dim() == 1, "denoise_step: alphas_cumprod must be [T]");
  TORCH_CHECK(at::isFloatingType(alphas_cumprod.scalar_type()), "denoise_step: alphas_cumprod must be floating");
  a.clip = clip_min.has_value() || clip_max.has_value();
  a.clip_min = clip_min.has_value() ? static_cast<float>(*clip_min) : -INFINITY;
  a.clip_max = clip_max.has_value() ? static_cast<float>(*clip_max) : INFINITY;
  TORCH_CHECK(a.clip_min <= a.clip_max, "denoise_step: clip_min > clip_max");
  a.guided = model_output_uncond.has_value();
  if (a.guided) {
    same(*model_output_uncond, "model_output_uncond");
    TORCH_CHECK(guidance_scale.has_value(), "denoise_step: model_output_uncond needs guidance_scale");
    a.guidance_scale = static_cast<float>(*guidance_scale);
  }
  return a;
}

// Gather the per-row alphas on the host (B values): a_t and a_prev, range-checked.
void gather_alphas(const at::Tensor& t, const at::Tensor& t_prev, const at::Tensor& alphas_cumprod,
                   std::vector<double>& a_t, std::vector<double>& a_p) {
  auto tc = t.to(at::kCPU, at::kLong).contiguous();
  auto pc = t_prev.to(at::kCPU, at::kLong).contiguous();
  auto ac = alphas_cumprod.to(at::kCPU, at::kDouble).contiguous();
  const int64_t T = ac.size(0);
  const int64_t* tp = tc.data_ptr<int64_t>();
  const int64_t* pp = pc.data_ptr<int64_t>();
  const double* ap = ac.data_ptr<double>();
  const int64_t B = tc.size(0);
  a_t.resize(B);
  a_p.resize(B);
  for (int64_t i = 0; i < B; ++i) {
    TORCH_CHECK(tp[i] >= 0 && tp[i] < T, "denoise_step: t[", i, "] = ", tp[i], " outside [0, ", T, ")");
    TORCH_CHECK(pp[i] >= -1 && pp[i] < tp[i], "denoise_step: t_prev[", i, "] = ", pp[i],
                " must lie in [-1, t) with t = ", tp[i]);
    a_t[i] = ap[tp[i]];
    a_p[i] = pp[i] < 0 ? 1.0 : ap[pp[i]];
  }
}

}  // namespace denoise
}  // namespace pathgen
