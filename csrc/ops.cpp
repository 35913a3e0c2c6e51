// Every pathgen operator schema, in one place. Kernels register their backends with
// TORCH_LIBRARY_IMPL(pathgen, CPU|CUDA, m) at the bottom of csrc/<op>/<op>_{cpu.cpp,cuda.cu}.
// Python faces, fake (meta) kernels and autograd live in pathgen/ops/<op>.py.
#include <Python.h>
#include <torch/library.h>

#include "common/parallel.h"

extern "C" {
// `import pathgen._C` loads this shared library, which runs the static registrations
// below; the module itself is empty (no pybind11, stable/limited Python API only).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(pathgen, m) {
  // ---- denoise_step: one fused DDPM/DDIM reverse step over [B, G] --------------------
  // mode: "ddpm" | "ddim"; prediction: "epsilon" | "sample" | "v_prediction".
  // t, t_prev: int64 [B] (t_prev = -1: final step, alpha_prev = 1).
  m.def(
      "denoise_step(Tensor x_t, Tensor model_output, Tensor t, Tensor t_prev, Tensor alphas_cumprod, "
      "str sampler, float eta, str prediction, Tensor? noise, float? clip_min, float? clip_max, "
      "float? guidance_scale, Tensor? model_output_uncond) -> Tensor");
  m.def(
      "denoise_step_out(Tensor x_t, Tensor model_output, Tensor t, Tensor t_prev, Tensor alphas_cumprod, "
      "str sampler, float eta, str prediction, Tensor? noise, float? clip_min, float? clip_max, "
      "float? guidance_scale, Tensor? model_output_uncond, Tensor(a!) out) -> ()");

  // ---- coattention: few queries per slide over its packed bag of keys (split-KV) ------
  // q [B, M, H, D]; k [total_n, Hkv, D]; v [total_n, Hkv, Dv]; cu_seqlens int32 [B + 1].
  // Returns out [B, M, H, Dv], lse [B, M, H] (fp32; fp64 for fp64 inputs) and probs
  // [total_n, H, M] (same dtype as lse; [0, H, M] unless return_probs). max_seqlen <= 0: unknown.
  m.def(
      "coattention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, float scale, "
      "bool return_probs) -> (Tensor, Tensor, Tensor)");
  // Gradients for (q, k, v) as asked by output_mask (an empty tensor for each one not asked);
  // probs is the forward's probs, needed only with grad_probs.
  m.def(
      "_coattention_backward(Tensor? grad_out, Tensor? grad_lse, Tensor? grad_probs, Tensor q, Tensor k, "
      "Tensor v, Tensor cu_seqlens, Tensor out, Tensor lse, Tensor? probs, int max_seqlen, float scale, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // ---- diagnostics --------------------------------------------------------------------
  // distinct threads that ran ATen's parallel_for over [0, n) in this extension's code
  // (common/parallel.h); no tensors, so one kernel for every backend
  m.def("_parallel_threads(int n) -> int", &pathgen::parallel_threads);
}
