#pragma once
// Per-row and per-element arithmetic of one reverse diffusion step, shared by the CPU
// loop and the CUDA kernel (PATHGEN_HOST_DEVICE_INLINE), so both backends differ only
// in reduction-free elementwise scheduling.
//
// Notation (DDPM, Ho et al. 2020; DDIM, Song et al. 2021):
//   a_t = alphas_cumprod[t], a_p = alphas_cumprod[t_prev] (1 when t_prev = -1)
//   x0  = predicted clean sample, eps = predicted noise, m = model output
//
// Every branch of the step is *affine* in (x_t, m, noise) once x0 is known:
//   x0   = x0_x * x_t + x0_m * m                       (from the prediction type)
//   x0   = clamp(x0, lo, hi)                           (optional; eps is re-derived from x0)
//   eps  = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)
//   out  = P_x0 * x0 + P_eps * eps + P_x * x_t + sigma * noise
// so with eps eliminated:
//   out  = K0 * x0 + Kx * x_t + sigma * noise,   K0 = P_x0 - P_eps sqrt(a_t)/sqrt(1-a_t),
//                                                  Kx = P_x  + P_eps / sqrt(1-a_t)
// and, without clipping, one fused multiply-add chain per element:
//   out  = A * x_t + B * m + sigma * noise,       A = K0 x0_x + Kx,  B = K0 x0_m.
// Coefficients are derived per row in double precision; the element loop is fp32.
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace pathgen {
namespace denoise {

enum class Mode : int32_t { DDPM = 0, DDIM = 1 };
enum class Prediction : int32_t { Epsilon = 0, Sample = 1, VPrediction = 2 };

struct RowCoeffs {
  float x0_x, x0_m;  // x0 = x0_x * x_t + x0_m * m
  float k0, kx;      // out = k0 * x0 + kx * x_t + sigma * noise
  float a, b;        // out = a * x_t + b * m + sigma * noise   (no clipping)
  float sigma;       // noise scale (posterior std for DDPM, eta-sigma for DDIM)
};

PATHGEN_HOST_DEVICE_INLINE RowCoeffs row_coeffs(double a_t, double a_p, Mode mode,
                                                Prediction pred, double eta) {
  const double sqrt_a = sqrt(a_t);
  const double sqrt_1ma = sqrt(1.0 - a_t);

  // (1) prediction -> x0 (DDIM eq. 12's "predicted x0"; v-prediction: Salimans & Ho 2022)
  double x0_x, x0_m;
  if (pred == Prediction::Epsilon) {
    x0_x = 1.0 / sqrt_a;
    x0_m = -sqrt_1ma / sqrt_a;
  } else if (pred == Prediction::Sample) {
    x0_x = 0.0;
    x0_m = 1.0;
  } else {  // v = sqrt(a) eps - sqrt(1-a) x0  =>  x0 = sqrt(a) x_t - sqrt(1-a) v
    x0_x = sqrt_a;
    x0_m = -sqrt_1ma;
  }

  // (2) the step itself
  double k0, kx, sigma;
  if (mode == Mode::DDPM) {
    // posterior q(x_{t'} | x_t, x0), DDPM eq. 6-7 generalised to a stride t -> t_prev:
    //   beta' = 1 - a_t / a_p
    //   mean  = sqrt(a_p) beta' / (1 - a_t) * x0 + sqrt(a_t / a_p) (1 - a_p) / (1 - a_t) * x_t
    //   std   = sqrt((1 - a_p) / (1 - a_t) * beta')          (the STANDARD DEVIATION)
    const double ratio = a_t / a_p;
    const double beta = 1.0 - ratio;
    k0 = sqrt(a_p) * beta / (1.0 - a_t);
    kx = sqrt(ratio) * (1.0 - a_p) / (1.0 - a_t);
    const double var = (1.0 - a_p) / (1.0 - a_t) * beta;
    sigma = var > 0.0 ? sqrt(var) : 0.0;
  } else {
    // DDIM eq. 12 and 16:
    //   sigma = eta sqrt((1 - a_p) / (1 - a_t)) sqrt(1 - a_t / a_p)
    //   out   = sqrt(a_p) x0 + sqrt(1 - a_p - sigma^2) eps + sigma noise
    const double s2 = (1.0 - a_p) / (1.0 - a_t) * (1.0 - a_t / a_p);
    sigma = eta * (s2 > 0.0 ? sqrt(s2) : 0.0);
    const double dir2 = 1.0 - a_p - sigma * sigma;
    const double p_eps = dir2 > 0.0 ? sqrt(dir2) : 0.0;
    k0 = sqrt(a_p) - p_eps * sqrt_a / sqrt_1ma;
    kx = p_eps / sqrt_1ma;
  }

  RowCoeffs c;
  c.x0_x = static_cast<float>(x0_x);
  c.x0_m = static_cast<float>(x0_m);
  c.k0 = static_cast<float>(k0);
  c.kx = static_cast<float>(kx);
  c.a = static_cast<float>(k0 * x0_x + kx);
  c.b = static_cast<float>(k0 * x0_m);
  c.sigma = static_cast<float>(sigma);
  return c;
}

// classifier-free guidance: m = m_u + w (m_c - m_u)
PATHGEN_HOST_DEVICE_INLINE float guide(float m_c, float m_u, float w) {
  return m_u + w * (m_c - m_u);
}

PATHGEN_HOST_DEVICE_INLINE float step_linear(float x, float m, float n, const RowCoeffs& c) {
  return c.a * x + c.b * m + c.sigma * n;
}

PATHGEN_HOST_DEVICE_INLINE float step_clipped(float x, float m, float n, const RowCoeffs& c,
                                              float lo, float hi) {
  float x0 = c.x0_x * x + c.x0_m * m;
  x0 = x0 < lo ? lo : (x0 > hi ? hi : x0);
  return c.k0 * x0 + c.kx * x + c.sigma * n;
}

}  // namespace denoise
}  // namespace pathgen
