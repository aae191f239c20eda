// Weight-only quantized Linear kernels for the CPU (see flint/engine/quant/__init__.py for the formats).
//
//   int8:  w[n, k] = scale[n] * q[n, k]                 q int8 [N, Kp], scale fp32 [N]
//   int4:  w[n, k] = scale[n, g] * q[n, k] + min[n, g]  g = k / G, q in 0..15 packed two per byte:
//          in every 32-column chunk, byte j holds column j (low nibble) and column j + 16 (high nibble);
//          packed uint8 [N, Kp / 2], scale and min fp32 [N, Kp / G]
//
// Kp is K padded to the block (16 for int8, G for int4); padded columns hold zero weights.
// `linear_*` computes y[M, N] = (x * xscale) @ w^T + bias for small M (decode and speculative verification)
// on CPUs without AVX2 + FMA (the others run quant_vnni.cpp over tiled weights): each weight vector is
// dequantized in registers once and multiplied into up to 8 rows of x, so the weights stream from memory
// once per call whatever M is. Output channels are split over torch's intra-op threads.
// `dequant_*` writes the fp32 matrix (prefill runs torch.mm on it; embedding lookups dequantize their rows).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "pool.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// ---- 16 floats at a time, on whatever the CPU has ----------------------------------------------------
#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";
struct F16 { __m512 v; };
inline F16 zero16() { return {_mm512_setzero_ps()}; }
inline F16 set16(float a) { return {_mm512_set1_ps(a)}; }
inline F16 load16(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void store16(float* p, F16 a) { _mm512_storeu_ps(p, a.v); }
inline F16 fma16(F16 a, F16 b, F16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline F16 mul16(F16 a, F16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline F16 add16(F16 a, F16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline float sum16(F16 a) { return _mm512_reduce_add_ps(a.v); }
inline F16 from_u8(__m128i b) { return {_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))}; }
inline F16 from_i8(__m128i b) { return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))}; }
#elif defined(__AVX2__)
constexpr const char* kIsa = "avx2";
struct F16 { __m256 a, b; };
inline F16 zero16() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline F16 set16(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline F16 load16(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void store16(float* p, F16 x) { _mm256_storeu_ps(p, x.a); _mm256_storeu_ps(p + 8, x.b); }
inline F16 fma16(F16 x, F16 y, F16 c) { return {_mm256_fmadd_ps(x.a, y.a, c.a), _mm256_fmadd_ps(x.b, y.b, c.b)}; }
inline F16 mul16(F16 x, F16 y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
inline F16 add16(F16 x, F16 y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
inline float sum16(F16 x) {
  __m256 s = _mm256_add_ps(x.a, x.b);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}
inline F16 from_u8(__m128i b) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)))};
}
inline F16 from_i8(__m128i b) {
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
#else
constexpr const char* kIsa = "scalar";
struct F16 { float v[16]; };
inline F16 zero16() { F16 r; for (int i = 0; i < 16; ++i) r.v[i] = 0.f; return r; }
inline F16 set16(float a) { F16 r; for (int i = 0; i < 16; ++i) r.v[i] = a; return r; }
inline F16 load16(const float* p) { F16 r; std::memcpy(r.v, p, sizeof r.v); return r; }
inline void store16(float* p, F16 a) { std::memcpy(p, a.v, sizeof a.v); }
inline F16 fma16(F16 a, F16 b, F16 c) { for (int i = 0; i < 16; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
inline F16 mul16(F16 a, F16 b) { for (int i = 0; i < 16; ++i) a.v[i] *= b.v[i]; return a; }
inline F16 add16(F16 a, F16 b) { for (int i = 0; i < 16; ++i) a.v[i] += b.v[i]; return a; }
inline float sum16(F16 a) { float s = 0.f; for (int i = 0; i < 16; ++i) s += a.v[i]; return s; }
#endif

// Weights of 16 columns as floats.
#if defined(__AVX512F__) || defined(__AVX2__)
inline F16 int8_cols(const int8_t* p) { return from_i8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
// One 32-column chunk of int4 (16 bytes): columns 0..15 and 16..31.
inline void int4_chunk(const uint8_t* p, F16& lo, F16& hi) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(0x0F);
  lo = from_u8(_mm_and_si128(b, m));
  hi = from_u8(_mm_and_si128(_mm_srli_epi16(b, 4), m));
}
#else
inline F16 int8_cols(const int8_t* p) { F16 r; for (int i = 0; i < 16; ++i) r.v[i] = float(p[i]); return r; }
inline void int4_chunk(const uint8_t* p, F16& lo, F16& hi) {
  for (int i = 0; i < 16; ++i) { lo.v[i] = float(p[i] & 15); hi.v[i] = float(p[i] >> 4); }
}
#endif

constexpr int kMaxRows = 8;       // rows of x multiplied per pass over a weight row
constexpr int64_t kGrain = 16;    // output channels per parallel work item (at least)

// ---- y[r, n] for MB rows of x (padded to Kp, stride Kp) and output channels [n0, n1) ---------------
template <int MB>
void int8_rows(const float* x, int64_t kp, const int8_t* q, const float* scale, const float* bias,
               float* y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = q + n * kp;
    F16 acc[MB];
    for (int r = 0; r < MB; ++r) acc[r] = zero16();
    for (int64_t k = 0; k < kp; k += 16) {
      const F16 wv = int8_cols(w + k);
      for (int r = 0; r < MB; ++r) acc[r] = fma16(wv, load16(x + r * kp + k), acc[r]);
    }
    const float b = bias ? bias[n] : 0.f;
    for (int r = 0; r < MB; ++r) y[r * ldy + n] = sum16(acc[r]) * scale[n] + b;
  }
}

template <int MB>
void int4_rows(const float* x, int64_t kp, int64_t group, const uint8_t* packed, const float* scale,
               const float* mins, const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  const int64_t ngroups = kp / group;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = packed + n * (kp / 2);
    F16 acc[MB];
    for (int r = 0; r < MB; ++r) acc[r] = zero16();
    for (int64_t g = 0; g < ngroups; ++g) {
      const F16 s = set16(scale[n * ngroups + g]), m = set16(mins[n * ngroups + g]);
      for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
        F16 lo, hi;
        int4_chunk(w + k / 2, lo, hi);
        lo = fma16(lo, s, m);
        hi = fma16(hi, s, m);
        for (int r = 0; r < MB; ++r) {
          acc[r] = fma16(lo, load16(x + r * kp + k), acc[r]);
          acc[r] = fma16(hi, load16(x + r * kp + k + 16), acc[r]);
        }
      }
    }
    const float b = bias ? bias[n] : 0.f;
    for (int r = 0; r < MB; ++r) y[r * ldy + n] = sum16(acc[r]) + b;
  }
}

// x [M, K] -> contiguous fp32 [M, Kp], columns times xscale (if given), zero-padded past K.
torch::Tensor padded_input(const torch::Tensor& x, int64_t kp, const c10::optional<torch::Tensor>& xscale) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D [M, K]");
  auto xf = x.to(torch::kFloat32).contiguous();
  const int64_t k = xf.size(1);
  TORCH_CHECK(k <= kp, "x has ", k, " columns, the weight ", kp);
  if (k == kp && !xscale.has_value()) return xf;
  auto out = torch::zeros({xf.size(0), kp}, xf.options());
  auto view = out.narrow(1, 0, k);
  if (xscale.has_value()) torch::mul_out(view, xf, xscale->to(torch::kFloat32));
  else view.copy_(xf);
  return out;
}

template <typename Body>
void over_outputs(int64_t n, Body body) {
  flint_pool::parallel_for(0, n, kGrain, body);
}

#define FLINT_DISPATCH_ROWS(FN, MB, ...)                    \
  switch (MB) {                                              \
    case 1: FN<1>(__VA_ARGS__); break;                       \
    case 2: FN<2>(__VA_ARGS__); break;                       \
    case 3: FN<3>(__VA_ARGS__); break;                       \
    case 4: FN<4>(__VA_ARGS__); break;                       \
    case 5: FN<5>(__VA_ARGS__); break;                       \
    case 6: FN<6>(__VA_ARGS__); break;                       \
    case 7: FN<7>(__VA_ARGS__); break;                       \
    default: FN<8>(__VA_ARGS__); break;                      \
  }


}  // namespace

#include "quant_vnni.h"

torch::Tensor linear_int8(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& scale,
                          const c10::optional<torch::Tensor>& xscale, const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(q.scalar_type() == torch::kInt8 && q.is_contiguous() && q.dim() == 2, "q must be contiguous int8 [N, Kp]");
  const int64_t n = q.size(0), kp = q.size(1);
  TORCH_CHECK(kp % 16 == 0, "int8 Kp must be a multiple of 16");
  auto xp = padded_input(x, kp, xscale);
  const int64_t m = xp.size(0);
  auto y = torch::empty({m, n}, xp.options());
  auto sc = scale.contiguous();
  torch::Tensor b = bias.has_value() ? bias->to(torch::kFloat32).contiguous() : torch::Tensor();
  const float* xd = xp.data_ptr<float>();
  const int8_t* qd = q.data_ptr<int8_t>();
  const float* sd = sc.data_ptr<float>();
  const float* bd = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  over_outputs(n, [&](int64_t n0, int64_t n1) {
    for (int64_t r = 0; r < m; r += kMaxRows) {
      const int64_t mb = std::min<int64_t>(kMaxRows, m - r);
      FLINT_DISPATCH_ROWS(int8_rows, mb, xd + r * kp, kp, qd, sd, bd, yd + r * n, n, n0, n1);
    }
  });
  return y;
}

torch::Tensor linear_int4(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& scale,
                          const torch::Tensor& mins, int64_t group, const c10::optional<torch::Tensor>& xscale,
                          const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous() && packed.dim() == 2,
              "packed must be contiguous uint8 [N, Kp/2]");
  const int64_t n = packed.size(0), kp = packed.size(1) * 2;
  TORCH_CHECK(group % 32 == 0 && kp % group == 0, "group size must be a multiple of 32 dividing Kp");
  TORCH_CHECK(scale.numel() == n * (kp / group) && mins.numel() == n * (kp / group), "scale/min shape");
  auto xp = padded_input(x, kp, xscale);
  const int64_t m = xp.size(0);
  auto y = torch::empty({m, n}, xp.options());
  auto sc = scale.contiguous(), mn = mins.contiguous();
  torch::Tensor b = bias.has_value() ? bias->to(torch::kFloat32).contiguous() : torch::Tensor();
  const float* xd = xp.data_ptr<float>();
  const uint8_t* wd = packed.data_ptr<uint8_t>();
  const float* sd = sc.data_ptr<float>();
  const float* md = mn.data_ptr<float>();
  const float* bd = b.defined() ? b.data_ptr<float>() : nullptr;
  float* yd = y.data_ptr<float>();
  over_outputs(n, [&](int64_t n0, int64_t n1) {
    for (int64_t r = 0; r < m; r += kMaxRows) {
      const int64_t mb = std::min<int64_t>(kMaxRows, m - r);
      FLINT_DISPATCH_ROWS(int4_rows, mb, xd + r * kp, kp, group, wd, sd, md, bd, yd + r * n, n, n0, n1);
    }
  });
  return y;
}

torch::Tensor dequant_int8(const torch::Tensor& q, const torch::Tensor& scale) {
  TORCH_CHECK(q.scalar_type() == torch::kInt8 && q.is_contiguous() && q.dim() == 2, "q must be contiguous int8 [N, Kp]");
  const int64_t n = q.size(0), kp = q.size(1);
  TORCH_CHECK(kp % 16 == 0, "int8 Kp must be a multiple of 16");
  auto out = torch::empty({n, kp}, q.options().dtype(torch::kFloat32));
  auto sc = scale.contiguous();
  const int8_t* qd = q.data_ptr<int8_t>();
  const float* sd = sc.data_ptr<float>();
  float* od = out.data_ptr<float>();
  over_outputs(n, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      const F16 s = set16(sd[i]);
      for (int64_t k = 0; k < kp; k += 16) store16(od + i * kp + k, mul16(int8_cols(qd + i * kp + k), s));
    }
  });
  return out;
}

torch::Tensor dequant_int4(const torch::Tensor& packed, const torch::Tensor& scale, const torch::Tensor& mins,
                           int64_t group) {
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous() && packed.dim() == 2,
              "packed must be contiguous uint8 [N, Kp/2]");
  const int64_t n = packed.size(0), kp = packed.size(1) * 2, ng = kp / group;
  TORCH_CHECK(group % 32 == 0 && kp % group == 0, "group size must be a multiple of 32 dividing Kp");
  auto out = torch::empty({n, kp}, packed.options().dtype(torch::kFloat32));
  auto sc = scale.contiguous(), mn = mins.contiguous();
  const uint8_t* wd = packed.data_ptr<uint8_t>();
  const float* sd = sc.data_ptr<float>();
  const float* md = mn.data_ptr<float>();
  float* od = out.data_ptr<float>();
  over_outputs(n, [&](int64_t n0, int64_t n1) {
    for (int64_t i = n0; i < n1; ++i) {
      for (int64_t g = 0; g < ng; ++g) {
        const F16 s = set16(sd[i * ng + g]), m = set16(md[i * ng + g]);
        for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
          F16 lo, hi;
          int4_chunk(wd + i * (kp / 2) + k / 2, lo, hi);
          store16(od + i * kp + k, fma16(lo, s, m));
          store16(od + i * kp + k + 16, fma16(hi, s, m));
        }
      }
    }
  });
  return out;
}

// Embedding lookup: rows `ids` of the quantized [N, K] matrix as fp32 [T, K] (one call, no fp32 copy of the
// matrix and no gather of codes and scales first).
torch::Tensor embedding(const torch::Tensor& ids, int64_t bits, const torch::Tensor& data, const torch::Tensor& scale,
                        const c10::optional<torch::Tensor>& mins, int64_t group, int64_t k) {
  TORCH_CHECK(ids.scalar_type() == torch::kInt64 && ids.dim() == 1, "embedding: ids must be int64 [T]");
  TORCH_CHECK(data.is_contiguous() && data.dim() == 2 && scale.is_contiguous(), "embedding: contiguous weights");
  const int64_t n = data.size(0), kp = bits == 8 ? data.size(1) : data.size(1) * 2, t = ids.size(0);
  TORCH_CHECK(k <= kp && (bits == 8 || (mins.has_value() && group % 32 == 0 && kp % group == 0)), "embedding: format");
  auto idc = ids.contiguous();
  const int64_t* ip = idc.data_ptr<int64_t>();
  auto out = torch::empty({t, k}, scale.options());
  float* op = out.data_ptr<float>();
  const float* sd = scale.data_ptr<float>();
  std::vector<float> row(kp);
  for (int64_t r = 0; r < t; ++r) {
    const int64_t i = ip[r];
    TORCH_CHECK(i >= 0 && i < n, "token id ", i, " is outside the vocabulary [0, ", n, ")");
    if (bits == 8) {
      const int8_t* q = data.data_ptr<int8_t>() + i * kp;
      const F16 s = set16(sd[i]);
      for (int64_t c = 0; c < kp; c += 16) store16(row.data() + c, mul16(int8_cols(q + c), s));
    } else {
      const uint8_t* q = data.data_ptr<uint8_t>() + i * (kp / 2);
      const int64_t ng = kp / group;
      const float* md = mins->data_ptr<float>();
      for (int64_t c = 0; c < kp; c += 32) {
        const F16 s = set16(sd[i * ng + c / group]), m = set16(md[i * ng + c / group]);
        F16 lo, hi;
        int4_chunk(q + c / 2, lo, hi);
        store16(row.data() + c, fma16(lo, s, m));
        store16(row.data() + c + 16, fma16(hi, s, m));
      }
    }
    std::memcpy(op + r * k, row.data(), k * sizeof(float));
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  flint_pool::attach();
  // The computing calls run without the GIL (their arguments are converted before, the result after): a step's
  // kernels are most of its time, and the event loop that streams tokens to clients runs meanwhile.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.attr("isa") = kIsa;
  m.attr("tiled_isa") = flint_tiled::isa();
  m.attr("has_tiled") = flint_tiled::available();
  m.attr("has_vnni") = std::string(flint_tiled::isa()) == "avx512-vnni";
  m.def("use_tiled", [](bool on) { flint_tiled::g_on = on; return flint_tiled::available() && on; },
        "choose the tiled path (int8 activations; AVX512-VNNI or AVX2) or register dequantization (fp32 activations)");
  m.def("vnni_peak_per_s", &flint_tiled::vnni_peak_per_s, py::arg("calls") = 20'000'000,
        "512-bit vpdpbusd instructions per second over the intra-op threads (0 without AVX512-VNNI)", nogil);
  m.def("tiled_on", []() { return flint_tiled::available() && flint_tiled::g_on; }, "whether QuantLinear takes the tiled path");
  py::class_<flint_tiled::TiledLinear>(m, "TiledLinear", py::module_local())   // local: a second build (tests) can load beside it
      .def(py::init<int64_t, torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, int64_t, int64_t, int64_t,
                    c10::optional<torch::Tensor>, c10::optional<torch::Tensor>>())
      .def("__call__", &flint_tiled::TiledLinear::call, py::arg("x"), py::arg("unit_rms_floor") = -1.0,
           py::arg("residual") = py::none(), py::arg("silu") = false,
           "y [M, N] for x [M, K] float32 (x / hypot(|x|, floor) per row with floor >= 0; silu(gate) * up of a "
           "[M, 2K] x with silu; plus residual [M, N]), or None when the path is off", nogil);
  m.def("decode_layer", &flint_tiled::decode_layer,
        "a decoder layer of an in-place-attention step in one call over four TiledLinears, or None when off", nogil);
  m.def("mlp_block", &flint_tiled::mlp_block, py::arg("o"), py::arg("x"), py::arg("o_proj"), py::arg("gate_up"),
        py::arg("down"), py::arg("unit_rms_floor"),
        "x + o_proj(o), then + down(silu_mul(gate_up(unit_rms(.)))) over three TiledLinears, or None when off", nogil);
  m.def("linear_tiled", &flint_tiled::linear_tiled, py::arg("x"), py::arg("bits"), py::arg("w"), py::arg("scale"),
        py::arg("mins"), py::arg("n"), py::arg("kp"), py::arg("group"), py::arg("xscale"), py::arg("bias"),
        py::arg("unit_rms_floor") = -1.0,
        "y = (x * xscale) @ w^T + bias over 16-output tiles of int8/int4 weights (quant_vnni.cpp), small M", nogil);
  m.def("linear_int8", &linear_int8, "y = (x * xscale) @ dequant(int8 w)^T + bias, small M", nogil);
  m.def("linear_int4", &linear_int4, "y = (x * xscale) @ dequant(int4 w)^T + bias, small M", nogil);
  m.def("embedding", &embedding, "fp32 rows `ids` of quantized int8/int4 weights");
  m.def("dequant_int8", &dequant_int8, "fp32 [N, Kp] from int8 weights", nogil);
  m.def("dequant_int4", &dequant_int4, "fp32 [N, Kp] from packed int4 weights", nogil);
}
