#pragma once
// Host-side pieces shared by the CPU and CUDA backends of denoise_step.
#include <ATen/ATen.h>
#include <optional>
#include <string>
#include <vector>

#include "denoise_step/denoise_step_math.h"

namespace pathgen {
namespace denoise {

struct StepArgs {
  Mode mode;
  Prediction prediction;
  double eta;
  bool clip;
  float clip_min, clip_max;
  bool guided;
  float guidance_scale;
};

// Parses and checks everything the kernels rely on (second guard behind the Python face).
StepArgs check_inputs(const at::Tensor& x_t,                 // [B, G]
                      const at::Tensor& model_output,        // [B, G]
                      const at::Tensor& t,                   // [B] int
                      const at::Tensor& t_prev,              // [B] int
                      const at::Tensor& alphas_cumprod,      // [T]
                      const std::string& mode, double eta, const std::string& prediction,
                      const std::optional<at::Tensor>& noise,                 // [B, G]
                      std::optional<double> clip_min, std::optional<double> clip_max,
                      std::optional<double> guidance_scale,
                      const std::optional<at::Tensor>& model_output_uncond,   // [B, G]
                      const at::Tensor& out);                                 // [B, G]

// Per-row a_t = alphas_cumprod[t] and a_prev (1 where t_prev = -1), gathered on the host
// and range-checked (B values; a device copy is made by the caller when needed).
void gather_alphas(const at::Tensor& t, const at::Tensor& t_prev, const at::Tensor& alphas_cumprod,
                   std::vector<double>& a_t, std::vector<double>& a_p);

}  // namespace denoise
}  // namespace pathgen
