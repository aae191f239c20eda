// fp32 kernels of the decode step (few rows: decode, speculative verification, batched decode), called by
// model/linear.py.
//
// linear_f32: y[M, N] = x[M, K] @ w[N, K]^T + bias (+ residual), M <= linear.MAX_ROWS; with unit_rms_floor >= 0,
// x / hypot(|x|, floor) per row instead of x (the RMSNorm before qkv and gate_up, fused: one scale per row of
// the output); with silu, x is a gate_up [M, 2K] and silu(gate) * up is multiplied (the MLP's down).
//
// A decode step is a chain of matrix-vector products, bound by reading the weights. One row: each weight row is
// streamed once, output channels split over torch's intra-op threads. Measured on the 2-core EPYC (AVX2), one
// row, weights warm in cache: 87-92 GB/s against 48-63 GB/s for torch's F.linear (MKL), and 21 vs 11 GB/s for
// a 16,000 x 512 lm_head that misses the L3. Several rows: blocks of ~16 KB of weights are multiplied into 3
// rows of x at a time (each weight vector loaded once for the 3): 3072 x 512 at 16 rows, one thread, 829 us
// against 1,010 us row by row. dot_rows is built without reassociation, so a row gets the same bits alone
// or beside others (tests/engine_model/test_linear_kernel.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "rowops.h"
#include "pool.h"

#define FLINT_PA_NO_MODULE
#include "paged_attention.cpp"   // rope_attend, for decode_layer_f32

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

// out[r] = w . x[r] for R rows of x (R <= 3: 4 accumulators per row plus the weight vector fill the 16 AVX2
// registers). Every row's sum is formed in the same order whatever R (`dot` is the one-row form): a row gets the same
// bits whether it is multiplied alone (decode) or beside others (speculative verification, batched decode),
// while each weight vector is loaded once for the R rows instead of once per row (a dot product of two
// streams does one FMA per two loads: the load ports, not the FMA units, bound it).
template <int R>
__attribute__((noinline, optimize("no-associative-math"))) void dot_rows(const float* w, const float* const* x, int64_t k, float* out) {
  int64_t i = 0;
  float acc[R];
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 a[R][4];
  for (int r = 0; r < R; ++r) a[r][0] = a[r][1] = a[r][2] = a[r][3] = _mm256_setzero_ps();
  for (; i + 32 <= k; i += 32) {
    for (int c = 0; c < 4; ++c) {
      const __m256 wv = _mm256_loadu_ps(w + i + 8 * c);
      for (int r = 0; r < R; ++r) a[r][c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + i + 8 * c), a[r][c]);
    }
  }
  for (; i + 8 <= k; i += 8) {
    const __m256 wv = _mm256_loadu_ps(w + i);
    for (int r = 0; r < R; ++r) a[r][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x[r] + i), a[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    const __m256 s = _mm256_add_ps(_mm256_add_ps(a[r][0], a[r][1]), _mm256_add_ps(a[r][2], a[r][3]));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    acc[r] = _mm_cvtss_f32(h);
  }
#endif
  for (; i < k; ++i)
    for (int r = 0; r < R; ++r) acc[r] += w[i] * x[r][i];
  for (int r = 0; r < R; ++r) out[r] = acc[r];
}

inline float dot(const float* a, const float* b, int64_t k) {
  float out;
  dot_rows<1>(a, &b, k, &out);
  return out;
}

}  // namespace

torch::Tensor linear_f32(const torch::Tensor& x_in, const torch::Tensor& w, const c10::optional<torch::Tensor>& bias,
                         double unit_rms_floor, const c10::optional<torch::Tensor>& residual, bool silu) {
  const torch::Tensor x = silu ? flint_rows::silu_mul_tensor(x_in) : x_in;
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "linear_f32: x [M, K] and w [N, K] expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "linear_f32: float32 only");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "linear_f32: contiguous x and w expected");
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  auto y = torch::empty({m, n}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == n && bias->scalar_type() == at::kFloat, "linear_f32: bias");
    bp = bias->data_ptr<float>();
  }
  float* yp = y.data_ptr<float>();
  std::vector<float> row_scale(m, 1.f);   // unit_rms fused: x / hypot(|x|, floor) == x * row_scale
  if (unit_rms_floor >= 0)
    for (int64_t r = 0; r < m; ++r)
      row_scale[r] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dot(xp + r * k, xp + r * k, k)) +
                                                        unit_rms_floor * unit_rms_floor));
  if (m == 1) {   // decode: one stream through the weights
    flint_pool::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const float b = bp ? bp[j] : 0.f;
        float d;
        dot_rows<1>(wp + j * k, &xp, k, &d);
        yp[j] = std::fma(d, row_scale[0], b);   // one rounding, as the rows below
      }
    });
    flint_rows::add_residual(y, residual);
    return y;
  }
  // Output channels in blocks of about 16 KB of weights: a block is read from memory once, then from L1 for
  // every 3 rows of x (whose 3 rows sit in L1 beside it). While a block is multiplied, the next one is
  // prefetched towards L2, each row group fetching its share of each row: a model's fp32 weights do not fit
  // the L3, and the hardware prefetchers stop at the end of the rows being read. One pass through the
  // benchmark model's Linears at 16 rows, 1 thread: 12.4-12.7 ms against 14.5-15.0 without (3 alternated
  // process pairs, 2-core EPYC; the whole block at once at its start: 16.5-16.8 ms, slower).
  const int64_t block = std::clamp<int64_t>(16384 / (4 * k), 1, 16);
  const int64_t lines = (k * 4 + 63) / 64, groups = (m + 2) / 3;   // a weight row's cache lines; row groups
  flint_pool::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    float d[3];
    for (int64_t j0 = begin; j0 < end; j0 += block) {
      const int64_t j1 = std::min(end, j0 + block);
      for (int64_t r = 0; r < m; r += 3) {
        const float* xs[3] = {xp + r * k, xp + std::min(r + 1, m - 1) * k, xp + std::min(r + 2, m - 1) * k};
        const int64_t rows = std::min<int64_t>(3, m - r);
        for (int64_t j = j0; j < j1; ++j) {
          const float* wr = wp + j * k;
          if (j + block < end) {   // this row group's share of the next block's row j + block, towards L2
            const char* nx = reinterpret_cast<const char*>(wp + (j + block) * k);
            for (int64_t b = lines * (r / 3) / groups; b < lines * (r / 3 + 1) / groups; ++b)
              __builtin_prefetch(nx + 64 * b, 0, 2);
          }
          if (rows == 3) dot_rows<3>(wr, xs, k, d);
          else if (rows == 2) dot_rows<2>(wr, xs, k, d);
          else dot_rows<1>(wr, xs, k, d);
          const float b = bp ? bp[j] : 0.f;
          for (int64_t q = 0; q < rows; ++q) yp[(r + q) * n + j] = std::fma(d[q], row_scale[r + q], b);
        }
      }
    }
  });
  flint_rows::add_residual(y, residual);
  return y;
}

// x [T, d] / hypot(|x|, floor) per row: RMSNorm with its weight and sqrt(d) folded into the next Linear
// (model/llama.py). One call instead of vector_norm, hypot and div.
// With `weight` [d], times weight too: the final RMSNorm (weight * sqrt(d) given) in one call.
torch::Tensor unit_rms_f32(const torch::Tensor& x, double floor, const c10::optional<torch::Tensor>& weight) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "unit_rms_f32: contiguous [T, d]");
  const int64_t t = x.size(0), d = x.size(1);
  const float* wp = nullptr;
  if (weight.has_value()) {
    TORCH_CHECK(weight->scalar_type() == at::kFloat && weight->is_contiguous() && weight->numel() == d,
                "unit_rms_f32: weight must be contiguous float32 [d]");
    wp = weight->data_ptr<float>();
  }
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const double floor2 = floor * floor;
  for (int64_t r = 0; r < t; ++r) {
    const float* xr = xp + r * d;
    const float inv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dot(xr, xr, d)) + floor2));
    if (wp) for (int64_t i = 0; i < d; ++i) yp[r * d + i] = xr[i] * inv * wp[i];
    else for (int64_t i = 0; i < d; ++i) yp[r * d + i] = xr[i] * inv;
  }
  return y;
}

// gate_up [T, 2I] -> silu(gate) * up [T, I]: one call instead of chunk, silu and mul.
torch::Tensor silu_mul_f32(const torch::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.scalar_type() == at::kFloat && gate_up.is_contiguous() &&
              gate_up.size(1) % 2 == 0, "silu_mul_f32: contiguous [T, 2I]");
  const int64_t t = gate_up.size(0), inter = gate_up.size(1) / 2;
  auto y = torch::empty({t, inter}, gate_up.options());
  const float* gp = gate_up.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < t; ++r) {
    const float* g = gp + r * 2 * inter;
    const float* u = g + inter;
    for (int64_t i = 0; i < inter; ++i) yp[r * inter + i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
  return y;
}

// The rest of a decoder layer after attention, three Linears back to back in one call (no Python between
// them, so the weight streams follow each other): x1 = x + o @ Wo^T; returns x1 + Wd @ silu_mul(Wgu @
// unit_rms(x1))^T. Bias-free o_proj / gate_up / down only (llama.py checks).
torch::Tensor mlp_block_f32(const torch::Tensor& o, const torch::Tensor& x, const torch::Tensor& w_o,
                            const torch::Tensor& w_gate_up, const torch::Tensor& w_down, double unit_rms_floor) {
  const c10::optional<torch::Tensor> none;
  const torch::Tensor x1 = linear_f32(o, w_o, none, -1.0, x, false);
  const torch::Tensor gate_up = linear_f32(x1, w_gate_up, none, unit_rms_floor, none, false);
  return linear_f32(gate_up, w_down, none, -1.0, x1, true);
}

// One decoder layer of a step whose sequences all attend in place (decode, verification, short extends), in
// one call: qkv = Wqkv @ unit_rms(x) (+ bias); rotary, KV write and attention (paged_attention.cpp's
// rope_attend); then mlp_block_f32. No Python between the four weight streams of the layer.
torch::Tensor decode_layer_f32(const torch::Tensor& x, const torch::Tensor& w_qkv, const c10::optional<torch::Tensor>& b_qkv,
                               const torch::Tensor& w_o, const torch::Tensor& w_gate_up, const torch::Tensor& w_down,
                               double unit_rms_floor, const torch::Tensor& rope, at::Tensor kc, at::Tensor vc,
                               const at::Tensor& write_slots, int64_t heads, const std::vector<at::Tensor>& slots,
                               const at::Tensor& meta, int64_t window, double scale) {
  TORCH_CHECK(!slots.empty(), "decode_layer_f32: the step's sequences must all attend in place");
  const c10::optional<torch::Tensor> none;
  const torch::Tensor qkv = linear_f32(x, w_qkv, b_qkv, unit_rms_floor, none, false);
  const int64_t t = x.size(0), d = kc.size(2);
  auto out = torch::empty({t, heads, d}, x.options());
  rope_attend(out, qkv, rope, kc, vc, write_slots, heads, slots, meta, window, scale);
  return mlp_block_f32(out.view({t, heads * d}), x, w_o, w_gate_up, w_down, unit_rms_floor);
}

// 256-bit FMAs per second over the intra-op threads (the instruction linear_f32 runs): its ceiling here.
double fma_peak_per_s(int64_t calls) {
#if defined(__AVX2__) && defined(__FMA__)
  return flint_rows::peak_rate([] { FLINT_PEAK_OPS("vfmadd231ps", "ymm"); }, calls);
#else
  (void)calls;
  return 0.0;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  flint_pool::attach();
  m.def("fma_peak_per_s", &fma_peak_per_s, py::arg("calls") = 20'000'000,
        "256-bit FMA instructions per second over the intra-op threads (0 without AVX2/FMA)");
  m.def("decode_layer_f32", &decode_layer_f32, "a decoder layer of an in-place-attention step in one call");
  m.def("mlp_block_f32", &mlp_block_f32, "x + o_proj(o), then + down(silu_mul(gate_up(unit_rms(.)))) in one call");
  m.def("linear_f32", &linear_f32, py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("unit_rms_floor") = -1.0,
        py::arg("residual") = py::none(), py::arg("silu") = false,
        "y = x @ w^T + bias (+ residual) for a few float32 rows (x / hypot(|x|, floor) with floor >= 0; "
        "silu(gate) * up of a [M, 2K] x with silu)");
  m.def("unit_rms_f32", &unit_rms_f32, py::arg("x"), py::arg("floor"), py::arg("weight") = py::none(),
        "x / hypot(|x|, floor) per row (times weight if given)");
  m.def("silu_mul_f32", &silu_mul_f32, "silu(gate) * up from [T, 2I]");
}
