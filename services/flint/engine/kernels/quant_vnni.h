// The tiled Linear of quant_vnni.cpp (AVX512-VNNI, or AVX2 through quant_avx2.h), bound in quant_linear.cpp's module.
#pragma once
#include <torch/extension.h>

namespace flint_tiled {

extern bool g_on;
bool available();
const char* isa();   // "avx512-vnni", "avx2" or "" (no tiled path in this build)
double vnni_peak_per_s(int64_t calls);
torch::Tensor linear_tiled(const torch::Tensor& x, int64_t bits, const torch::Tensor& w, const torch::Tensor& scale,
                           const c10::optional<torch::Tensor>& mins, int64_t n, int64_t kp, int64_t group,
                           const c10::optional<torch::Tensor>& xscale, const c10::optional<torch::Tensor>& bias,
                           double unit_rms_floor);

struct TiledLinear {
  TiledLinear(int64_t bits, torch::Tensor w, torch::Tensor scale, c10::optional<torch::Tensor> mins, int64_t n,
              int64_t kp, int64_t group, c10::optional<torch::Tensor> xscale, c10::optional<torch::Tensor> bias);
  // residual: y += residual; silu: x is a gate_up [M, 2K], multiplied as silu(gate) * up (the MLP's down).
  // These calls return nullopt (None) when the tiled path is off and touch no Python object: the module runs them
  // with the GIL released.
  c10::optional<torch::Tensor> call(const torch::Tensor& x, double unit_rms_floor,
                                    const c10::optional<torch::Tensor>& residual, bool silu) const;
  int64_t bits, n, kp, group;
  torch::Tensor w, scale;
  c10::optional<torch::Tensor> mins, xscale, bias;
};

// The rest of a decoder layer after attention in one call (see skinny_f32.cpp's mlp_block_packed); None when the
// tiled path is off.
c10::optional<torch::Tensor> mlp_block(const torch::Tensor& o, const torch::Tensor& x, const TiledLinear& o_proj,
                                       const TiledLinear& gate_up, const TiledLinear& down, double unit_rms_floor);

// One decoder layer of an in-place-attention step in one call (see skinny_f32.cpp's decode_layer_packed); None when
// the tiled path is off.
c10::optional<torch::Tensor> decode_layer(const torch::Tensor& x, const TiledLinear& qkv, const TiledLinear& o_proj,
                                          const TiledLinear& gate_up, const TiledLinear& down, double unit_rms_floor,
                                          const torch::Tensor& rope, at::Tensor kc, at::Tensor vc,
                                          const at::Tensor& write_slots, int64_t heads,
                                          const std::vector<at::Tensor>& slots, const at::Tensor& meta, int64_t window,
                                          double scale);

}  // namespace flint_tiled
