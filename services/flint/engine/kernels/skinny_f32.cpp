// fp32 kernels of the model on the CPU, called by model/packed.py and model/linear.py.
//
// linear_packed: y[M, N] = x[M, K] @ w[N, K]^T + bias (+ residual) for any M, over weights stored by pack_f32
// as panels of 64 output channels; with unit_rms_floor >= 0, x / hypot(|x|, floor) per row instead of x (the
// RMSNorm before qkv and gate_up, fused: one scale per row of the output); with silu, x is a gate_up [M, 2K] and
// silu(gate) * up is multiplied (the MLP's down). mlp_block_packed and decode_layer_packed chain a decoder
// layer's Linears (and its attention) in one call. unit_rms_f32 and silu_mul_f32 are the same row operations
// alone; embedding_packed reads a tied embedding's rows from the lm_head's panels.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "rowops.h"
#include "pool.h"

#define FLINT_PA_NO_MODULE
#include "paged_attention.cpp"   // rope_attend, for decode_layer_packed

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace {

// a . b over k floats, 4 accumulators of 8 (the RMSNorm's sum of squares), in one fixed order: the same bits
// on every build (no reassociation of the tail under -ffast-math).
__attribute__((optimize("no-associative-math"))) float dot(const float* a, const float* b, int64_t k) {
  int64_t i = 0;
  float acc = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (; i + 32 <= k; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  acc = _mm_cvtss_f32(h);
#endif
  for (; i < k; ++i) acc += a[i] * b[i];
  return acc;
}

// ---- Panel-packed fp32 weights: every Linear of an fp32 CPU model (model/packed.py) ----
//
// pack_f32 stores w [N, K] as panels of kPanel output channels, [ceil(N / kPanel), K, kPanel] (the last panel
// zero-padded): for each k, a panel's kPanel weights are one contiguous 256-byte run. linear_packed then forms
// its outputs as outer products: per k, a row's x[r, k] is broadcast and multiplied into kPanel accumulators
// (4 512-bit or 8 256-bit vectors) for up to kRows rows at once, so a weight vector loaded once serves
// kRows rows with no horizontal sums, and the accumulators stay in registers for the whole K. Each output is
// fma(x[r, k], w[n, k], acc) for k = 0, 1, ..., K - 1 from 0, whatever the number of rows and the instruction
// set, so a row gets the same bits alone (decode) or beside others (verification, batched decode, prefill).
// Measured on the 2-core Zen 5 EPYC, one thread, 16 rows: 7.7-7.8G 512-bit FMAs/s (90% of the core's peak)
// against the equivalent of 2.3G for the row-dot-product kernel it replaced, which kept the [N, K] layout
// (loadtests/results/packed-f32-20261201.md).
constexpr int64_t kPanel = 64;
#if defined(__AVX512F__)
constexpr int kRows = 6;   // 6 rows x 4 zmm accumulators + 4 weight vectors + a broadcast: 29 of 32 registers
#else
constexpr int kRows = 3;   // AVX2: 3 rows x 4 ymm (half a panel at a time) + 3 broadcasts + the weight: 16
#endif

// out[r * kPanel + c] = sum_k x[r][k] * wp[k * kPanel + c], r < R, in k order with one rounding per step.
template <int R>
__attribute__((noinline)) void panel_rows(const float* const* x, const float* wp, int64_t k, float* out) {
#if defined(__AVX512F__)
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; ++i) {
    const float* w = wp + i * kPanel;
    const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16), w2 = _mm512_loadu_ps(w + 32),
                 w3 = _mm512_loadu_ps(w + 48);
    for (int r = 0; r < R; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r][i]);
      acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(xb, w2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(xb, w3, acc[r][3]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(out + r * kPanel + 16 * c, acc[r][c]);
#elif defined(__AVX2__) && defined(__FMA__)
  for (int half = 0; half < 2; ++half) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = acc[r][2] = acc[r][3] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; ++i) {
      const float* w = wp + i * kPanel + 32 * half;
      __m256 xb[R];
      for (int r = 0; r < R; ++r) xb[r] = _mm256_set1_ps(x[r][i]);
      for (int c = 0; c < 4; ++c) {
        const __m256 wv = _mm256_loadu_ps(w + 8 * c);
        for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(xb[r], wv, acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + r * kPanel + 32 * half + 8 * c, acc[r][c]);
  }
#else
  for (int r = 0; r < R; ++r)
    for (int64_t c = 0; c < kPanel; ++c) {
      float s = 0.f;
      for (int64_t i = 0; i < k; ++i) s = std::fma(x[r][i], wp[i * kPanel + c], s);
      out[r * kPanel + c] = s;
    }
#endif
}

void panel_block(int rows, const float* const* x, const float* wp, int64_t k, float* out) {
  switch (rows) {
#if defined(__AVX512F__)
    case 6: return panel_rows<6>(x, wp, k, out);
    case 5: return panel_rows<5>(x, wp, k, out);
    case 4: return panel_rows<4>(x, wp, k, out);
#endif
    case 3: return panel_rows<3>(x, wp, k, out);
    case 2: return panel_rows<2>(x, wp, k, out);
    default: return panel_rows<1>(x, wp, k, out);
  }
}

void check_packed(const torch::Tensor& packed, int64_t n, int64_t k, const char* who) {
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kPanel && packed.scalar_type() == at::kFloat &&
              packed.is_contiguous(), who, ": packed weights must be contiguous float32 [panels, K, ", kPanel, "]");
  TORCH_CHECK(n > 0 && packed.size(0) == (n + kPanel - 1) / kPanel && packed.size(1) == k, who, ": packed weights ",
              packed.sizes(), " do not hold ", n, " outputs of ", k, " inputs");
}

}  // namespace

// w [N, K] -> [ceil(N / 64), K, 64], the layout linear_packed reads (zero-padded to whole panels).
torch::Tensor pack_f32(const torch::Tensor& w_in) {
  TORCH_CHECK(w_in.dim() == 2 && w_in.scalar_type() == at::kFloat, "pack_f32: float32 [N, K] weights expected");
  const torch::Tensor w = w_in.contiguous();
  const int64_t n = w.size(0), k = w.size(1), panels = (n + kPanel - 1) / kPanel;
  auto packed = torch::zeros({panels, k, kPanel}, w.options());
  const float* wp = w.data_ptr<float>();
  float* pp = packed.data_ptr<float>();
  at::parallel_for(0, panels, 1, [&](int64_t a, int64_t z) {
    for (int64_t p = a; p < z; ++p)
      for (int64_t c = 0; c < kPanel && p * kPanel + c < n; ++c) {
        const float* row = wp + (p * kPanel + c) * k;
        for (int64_t i = 0; i < k; ++i) pp[(p * k + i) * kPanel + c] = row[i];
      }
  });
  return packed;
}

// The inverse: [N, K] from the panels (tests, and torch ops where the kernel does not run).
torch::Tensor unpack_f32(const torch::Tensor& packed, int64_t n) {
  TORCH_CHECK(packed.dim() == 3, "unpack_f32: packed [panels, K, 64] expected");
  check_packed(packed, n, packed.size(1), "unpack_f32");
  return packed.transpose(1, 2).reshape({-1, packed.size(1)}).narrow(0, 0, n).contiguous();
}

// y[M, n] = x[M, K] @ w^T + bias (+ residual) over pack_f32's panels, any M (decode, verification, prefill);
// unit_rms_floor >= 0 and silu as in the file's header. Work items are (panel, block of up to 96 rows): a panel's
// weights (64 x K floats, 128-384 KB on the benchmark model) stay in the core's L2 while its rows go by.
torch::Tensor linear_packed(const torch::Tensor& x_in, const torch::Tensor& packed, int64_t n,
                            const c10::optional<torch::Tensor>& bias, double unit_rms_floor,
                            const c10::optional<torch::Tensor>& residual, bool silu) {
  const torch::Tensor x = silu ? flint_rows::silu_mul_tensor(x_in) : x_in;
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "linear_packed: x must be contiguous float32 [M, K]");
  const int64_t m = x.size(0), k = x.size(1);
  check_packed(packed, n, k, "linear_packed");
  auto y = torch::empty({m, n}, x.options());
  if (m == 0) return y;
  const float* xp = x.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == n && bias->scalar_type() == at::kFloat,
                "linear_packed: bias must be contiguous float32 [", n, "]");
    bp = bias->data_ptr<float>();
  }
  float* yp = y.data_ptr<float>();
  const float* rp = nullptr;   // the residual, added in each work item's epilogue (no serial pass after the job)
  if (residual.has_value()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->is_contiguous() && residual->sizes() == y.sizes(),
                "linear_packed: residual must be contiguous float32 shaped like the output ", y.sizes());
    rp = residual->data_ptr<float>();
  }
  std::vector<float> row_scale(m, 1.f);   // unit_rms fused: x / hypot(|x|, floor) == x * row_scale
  if (unit_rms_floor >= 0)
    for (int64_t r = 0; r < m; ++r)
      row_scale[r] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(dot(xp + r * k, xp + r * k, k)) +
                                                        unit_rms_floor * unit_rms_floor));
  const int64_t panels = packed.size(0), chunk = 16 * kRows, chunks = (m + chunk - 1) / chunk;
  flint_pool::parallel_for(0, panels * chunks, 1, [&](int64_t a, int64_t z) {
    alignas(64) float acc[kRows * kPanel];
    for (int64_t item = a; item < z; ++item) {
      const int64_t p = item / chunks, r0 = (item % chunks) * chunk, r1 = std::min(m, r0 + chunk);
      const int64_t c0 = p * kPanel, cols = std::min(kPanel, n - c0);
      for (int64_t r = r0; r < r1; r += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, r1 - r));
        const float* xs[kRows];
        for (int q = 0; q < rows; ++q) xs[q] = xp + (r + q) * k;
        panel_block(rows, xs, wp + p * k * kPanel, k, acc);
        for (int q = 0; q < rows; ++q) {
          float* yr = yp + (r + q) * n + c0;
          const float s = row_scale[r + q];
          for (int64_t c = 0; c < cols; ++c) yr[c] = std::fma(acc[q * kPanel + c], s, bp ? bp[c0 + c] : 0.f);
          if (rp != nullptr) {
            const float* res = rp + (r + q) * n + c0;
            for (int64_t c = 0; c < cols; ++c) yr[c] += res[c];
          }
        }
      }
    }
  });
  return y;
}

// Token rows of an embedding tied to a packed lm_head: out[t] = w[ids[t]] read from the panels.
torch::Tensor embedding_packed(const torch::Tensor& ids_in, const torch::Tensor& packed, int64_t n) {
  TORCH_CHECK(packed.dim() == 3, "embedding_packed: packed [panels, K, 64] expected");
  const int64_t k = packed.size(1);
  check_packed(packed, n, k, "embedding_packed");
  const torch::Tensor ids = ids_in.to(at::kLong).contiguous();
  const int64_t t = ids.numel();
  auto out = torch::empty({t, k}, packed.options());
  const int64_t* ip = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < t; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < n, "token id ", ip[i], " is outside the vocabulary [0, ", n, ")");
  const float* wp = packed.data_ptr<float>();
  float* op = out.data_ptr<float>();
  flint_pool::parallel_for(0, t, 64, [&](int64_t a, int64_t z) {
    for (int64_t i = a; i < z; ++i) {
      const float* col = wp + (ip[i] / kPanel) * k * kPanel + ip[i] % kPanel;
      for (int64_t j = 0; j < k; ++j) op[i * k + j] = col[j * kPanel];
    }
  });
  return out;
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

// gate_up [T, 2I] -> silu(gate) * up [T, I]: one call instead of chunk, silu and mul (rowops.h's, which the
// tiled quantized kernel's down runs too).
torch::Tensor silu_mul_f32(const torch::Tensor& gate_up) { return flint_rows::silu_mul_tensor(gate_up); }

// The rest of a decoder layer after attention, three Linears back to back in one call (no Python between
// them, so the weight streams follow each other): x1 = x + o @ Wo^T; returns x1 + Wd @ silu_mul(Wgu @
// unit_rms(x1))^T. Bias-free o_proj / gate_up / down only (packed.py checks); n_gate_up: gate_up's outputs.
torch::Tensor mlp_block_packed(const torch::Tensor& o, const torch::Tensor& x, const torch::Tensor& p_o,
                               const torch::Tensor& p_gate_up, int64_t n_gate_up, const torch::Tensor& p_down,
                               double unit_rms_floor) {
  const c10::optional<torch::Tensor> none;
  const int64_t d = x.size(1);
  const torch::Tensor x1 = linear_packed(o, p_o, d, none, -1.0, x, false);
  const torch::Tensor gate_up = linear_packed(x1, p_gate_up, n_gate_up, none, unit_rms_floor, none, false);
  return linear_packed(gate_up, p_down, d, none, -1.0, x1, true);
}

// One decoder layer of a step whose sequences all attend in place (decode, verification, short extends), in
// one call: qkv = Wqkv @ unit_rms(x) (+ bias); rotary, KV write and attention (paged_attention.cpp's
// rope_attend); then mlp_block_packed. No Python between the four weight streams of the layer.
torch::Tensor decode_layer_packed(const torch::Tensor& x, const torch::Tensor& p_qkv, int64_t n_qkv,
                                  const c10::optional<torch::Tensor>& b_qkv, const torch::Tensor& p_o,
                                  const torch::Tensor& p_gate_up, int64_t n_gate_up, const torch::Tensor& p_down,
                                  double unit_rms_floor, const torch::Tensor& rope, at::Tensor kc, at::Tensor vc,
                                  const at::Tensor& write_slots, int64_t heads, const std::vector<at::Tensor>& slots,
                                  const at::Tensor& meta, int64_t window, double scale) {
  TORCH_CHECK(!slots.empty(), "decode_layer_packed: the step's sequences must all attend in place");
  const c10::optional<torch::Tensor> none;
  const torch::Tensor qkv = linear_packed(x, p_qkv, n_qkv, b_qkv, unit_rms_floor, none, false);
  const int64_t t = x.size(0), d = kc.size(2);
  auto out = torch::empty({t, heads, d}, x.options());
  rope_attend(out, qkv, rope, kc, vc, write_slots, heads, slots, meta, window, scale);
  return mlp_block_packed(out.view({t, heads * d}), x, p_o, p_gate_up, n_gate_up, p_down, unit_rms_floor);
}

// Width in floats of the FMAs linear_packed runs: 16 (512-bit) with AVX-512, 8 (256-bit) with AVX2, 0 without.
int64_t fma_width() {
#if defined(__AVX512F__)
  return 16;
#elif defined(__AVX2__) && defined(__FMA__)
  return 8;
#else
  return 0;
#endif
}

// Those FMAs per second over the intra-op threads: linear_packed's ceiling here (0 without AVX2/FMA).
double fma_peak_per_s(int64_t calls) {
#if defined(__AVX512F__)
  return flint_rows::peak_rate([] { FLINT_PEAK_OPS("vfmadd231ps", "zmm"); }, calls);
#elif defined(__AVX2__) && defined(__FMA__)
  return flint_rows::peak_rate([] { FLINT_PEAK_OPS("vfmadd231ps", "ymm"); }, calls);
#else
  (void)calls;
  return 0.0;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  flint_pool::attach();
  // The computing calls run without the GIL (their arguments are converted before, the result after): a step's
  // kernels are most of its time, and the event loop that streams tokens to clients runs meanwhile.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("fma_peak_per_s", &fma_peak_per_s, py::arg("calls") = 20'000'000,
        "FMA instructions of fma_width() floats per second over the intra-op threads (0 without AVX2/FMA)", nogil);
  m.def("fma_width", &fma_width, "floats per FMA instruction of linear_packed (16, 8, or 0 for scalar code)");
  m.def("pack_f32", &pack_f32, "w [N, K] -> panels [ceil(N / 64), K, 64] (linear_packed's layout)", nogil);
  m.def("unpack_f32", &unpack_f32, py::arg("packed"), py::arg("n"), "panels -> w [n, K]");
  m.def("linear_packed", &linear_packed, py::arg("x"), py::arg("packed"), py::arg("n"), py::arg("bias"),
        py::arg("unit_rms_floor") = -1.0, py::arg("residual") = py::none(), py::arg("silu") = false,
        "y = x @ w^T + bias (+ residual) over packed weights, any number of float32 rows", nogil);
  m.def("embedding_packed", &embedding_packed, "rows of the [n, K] matrix held as packed panels");
  m.def("mlp_block_packed", &mlp_block_packed, "x + o_proj(o), then + down(silu_mul(gate_up(unit_rms(.)))) in one call",
        nogil);
  m.def("decode_layer_packed", &decode_layer_packed, "a decoder layer of an in-place-attention step in one call",
        nogil);
  m.def("unit_rms_f32", &unit_rms_f32, py::arg("x"), py::arg("floor"), py::arg("weight") = py::none(),
        "x / hypot(|x|, floor) per row (times weight if given)");
  m.def("silu_mul_f32", &silu_mul_f32, "silu(gate) * up from [T, 2I]");
}
