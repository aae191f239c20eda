// Small row operations the fused decode-step calls share (skinny_f32.cpp, quant_vnni.cpp): each one saves a
// Python-level op (and its tensor) per layer of a decode step.
#pragma once
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

namespace flint_rows {

// out[r, :] = silu(g[r, :inter]) * g[r, inter:] for a [m, 2 * inter] gate_up (the MLP's activation).
inline void silu_mul(const float* g, int64_t m, int64_t inter, float* out) {
  for (int64_t r = 0; r < m; ++r) {
    const float* gr = g + r * 2 * inter;
    const float* ur = gr + inter;
    float* o = out + r * inter;
    for (int64_t i = 0; i < inter; ++i) o[i] = gr[i] / (1.f + std::exp(-gr[i])) * ur[i];
  }
}

// The gate_up input of a Linear that applies silu_mul first: float32 [M, 2K] -> [M, K] (checked).
inline torch::Tensor silu_mul_tensor(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.scalar_type() == torch::kFloat32 && gate_up.is_contiguous() &&
              gate_up.size(1) % 2 == 0, "silu input must be contiguous float32 [M, 2I]");
  const int64_t m = gate_up.size(0), inter = gate_up.size(1) / 2;
  auto h = torch::empty({m, inter}, gate_up.options());
  silu_mul(gate_up.data_ptr<float>(), m, inter, h.data_ptr<float>());
  return h;
}

// y += residual, both float32 [M, N] contiguous (checked): the residual stream's add after o_proj and down.
inline void add_residual(torch::Tensor& y, const c10::optional<torch::Tensor>& residual) {
  if (!residual.has_value()) return;
  TORCH_CHECK(residual->scalar_type() == torch::kFloat32 && residual->is_contiguous() && residual->sizes() == y.sizes(),
              "residual must be contiguous float32 shaped like the output ", y.sizes());
  float* yp = y.data_ptr<float>();
  const float* rp = residual->data_ptr<float>();
  for (int64_t i = 0, n = y.numel(); i < n; ++i) yp[i] += rp[i];
}

}  // namespace flint_rows
