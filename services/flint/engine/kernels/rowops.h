// Small row operations the fused decode-step calls share (skinny_f32.cpp, quant_vnni.cpp): each one saves a
// Python-level op (and its tensor) per layer of a decode step.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>

#include <cmath>
#include <cstdint>

#include "pool.h"

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
  const float* g = gate_up.data_ptr<float>();
  float* o = h.data_ptr<float>();
  // a batched decode step's rows (8 or more) on the pool, a row's result the same whoever runs it
  const auto rows = [&](int64_t a, int64_t z) { silu_mul(g + a * 2 * inter, z - a, inter, o + a * inter); };
  if (m >= 8) flint_pool::parallel_for(0, m, 2, rows);
  else rows(0, m);
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

// 12 independent `op`s on vector registers of kind `r` ("ymm", "zmm"): 0-11 += f(14, 15), a peak_rate block.
#define FLINT_PEAK_OPS(op, r)                                                                                    \
  asm volatile(op " %%" r "14, %%" r "15, %%" r "0\n" op " %%" r "14, %%" r "15, %%" r "1\n"                     \
               op " %%" r "14, %%" r "15, %%" r "2\n" op " %%" r "14, %%" r "15, %%" r "3\n"                     \
               op " %%" r "14, %%" r "15, %%" r "4\n" op " %%" r "14, %%" r "15, %%" r "5\n"                     \
               op " %%" r "14, %%" r "15, %%" r "6\n" op " %%" r "14, %%" r "15, %%" r "7\n"                     \
               op " %%" r "14, %%" r "15, %%" r "8\n" op " %%" r "14, %%" r "15, %%" r "9\n"                     \
               op " %%" r "14, %%" r "15, %%" r "10\n" op " %%" r "14, %%" r "15, %%" r "11\n"                   \
               ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11")

// Instructions per second all intra-op threads reach together running `block` (12 independent instructions
// per call) `calls` times each: the machine's peak for that instruction, which `flint bench engine` sets a
// kernel's rate against (a kernel cannot beat it).
template <typename Block>
double peak_rate(Block block, int64_t calls) {
  const int64_t threads = std::max(1, at::get_num_threads());
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t a, int64_t z) {
    for (int64_t i = a; i < z; ++i)
      for (int64_t c = 0; c < calls; ++c) block();
  });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(threads * calls * 12) / s;
}

}  // namespace flint_rows
