// Weight-only quantized Linear kernels for the CPU (see flint/engine/quant/__init__.py for the formats).
//
//   int8:  w[n, k] = scale[n] * q[n, k]                 q int8 [N, Kp], scale fp32 [N]
//   int4:  w[n, k] = scale[n, g] * q[n, k] + min[n, g]  g = k / G, q in 0..15 packed two per byte:
//          in every 32-column chunk, byte j holds column j (low nibble) and column j + 16 (high nibble);
//          packed uint8 [N, Kp / 2], scale and min fp32 [N, Kp / G]
//
// Kp is K padded to the block (16 for int8, G for int4); padded columns hold zero weights.
// `linear_*` computes y[M, N] = (x * xscale) @ w^T + bias for small M (decode and speculative verification):
// each weight vector is dequantized in registers once and multiplied into up to 8 rows of x, so the weights
// stream from memory once per call whatever M is. Output channels are split over torch's intra-op threads.
// `dequant_*` writes the fp32 matrix (prefill runs torch.mm on it; embedding lookups dequantize their rows).
#include <torch/extension.h>
#include <ATen/Parallel.h>

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
  at::parallel_for(0, n, kGrain, body);
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


// ---- AVX512-VNNI path: activations quantized to int8 per block, integer dot products -----------------
// The weight codes are the unsigned operand of vpdpbusd (int4 codes 0..15; int8 codes + 128) and the
// activations the signed one: x ~= sx[b] * xq, one scale per block of `block` columns (the int4 group, or
// 64 for int8). Per 64-column chunk and row: one vpdpbusd, a convert and an FMA with the per-lane scales
//   int4: y = sum_chunks (idot * sx) * s[n, g]          + sum_g min[n, g] * sx[g] * sum(xq in g)
//   int8: y = s[n] * (sum_chunks idot * sx - 128 * sum_b sx[b] * sum(xq in b))
// int4 unpacks 32 packed bytes to [cols 0-15, 32-47, 16-31, 48-63] of the chunk; the activations are
// stored in that order, so lanes pair up without a shuffle.
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
constexpr bool kHasVnni = true;
bool g_use_vnni = true;

struct QuantAct {
  int64_t chunks = 0, blocks = 0;
  std::vector<int8_t> q;        // [M, chunks * 64], int4 chunk order for int4
  std::vector<float> lane_scale;  // [M, chunks, 16]: the block scale of each int32 lane
  std::vector<float> block_sum;   // [M, blocks]: sx[b] * sum(xq in b)
};

// Position in a chunk -> column in the chunk (int4 order swaps the middle two 16-column quarters).
inline int64_t chunk_col(int64_t pos, bool int4) {
  if (!int4) return pos;
  const int64_t quarter = pos / 16;
  return (quarter == 1 ? 32 : quarter == 2 ? 16 : quarter * 16) + pos % 16;
}

void quantize_act(const float* x, int64_t m, int64_t kp, int64_t block, bool int4, QuantAct& a) {
  a.chunks = (kp + 63) / 64;
  a.blocks = (kp + block - 1) / block;
  const int64_t kc = a.chunks * 64;
  a.q.assign(m * kc, 0);
  a.lane_scale.assign(m * a.chunks * 16, 0.f);
  a.block_sum.assign(m * a.blocks, 0.f);
  std::vector<float> sx(a.blocks), inv(a.blocks);
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * kp;
    for (int64_t b = 0; b < a.blocks; ++b) {
      float mx = 0.f;
      for (int64_t k = b * block; k < std::min(kp, (b + 1) * block); ++k) mx = std::max(mx, std::abs(xr[k]));
      sx[b] = mx > 0.f ? mx / 127.f : 1.f;
      inv[b] = 1.f / sx[b];
    }
    int8_t* qr = a.q.data() + r * kc;
    for (int64_t c = 0; c < a.chunks; ++c) {
      for (int64_t pos = 0; pos < 64; ++pos) {
        const int64_t k = c * 64 + chunk_col(pos, int4);
        if (k >= kp) continue;
        const int v = static_cast<int>(std::nearbyint(xr[k] * inv[k / block]));
        qr[c * 64 + pos] = static_cast<int8_t>(v);
        a.block_sum[r * a.blocks + k / block] += static_cast<float>(v);
      }
      for (int lane = 0; lane < 16; ++lane) {
        const int64_t k = std::min(kp - 1, c * 64 + chunk_col(lane * 4, int4));
        a.lane_scale[(r * a.chunks + c) * 16 + lane] = sx[k / block];
      }
    }
    for (int64_t b = 0; b < a.blocks; ++b) a.block_sum[r * a.blocks + b] *= sx[b];
  }
}

inline __m512i int4_codes(const uint8_t* p, bool tail) {
  // 32 packed bytes in both halves; the upper half shifted by 4: [low nibbles | high nibbles].
  const __m512i b = tail ? _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(0xFFFF, p))
                         : _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  const __m512i both = tail ? _mm512_inserti64x4(b, _mm512_castsi512_si256(b), 1) : b;
  return _mm512_and_si512(_mm512_mask_srli_epi16(both, 0xFFFF0000u, both, 4), _mm512_set1_epi8(0x0F));
}

// Outputs [n, n + NB) for rows [r0, r0 + MB): NB independent accumulator chains per row, and each
// activation vector loaded once for NB outputs.
template <int MB, int NB, bool INT4>
void vnni_tile(const QuantAct& a, int64_t r0, int64_t kp, int64_t group, const uint8_t* w, const float* scale,
               const float* mins, const float* bias, float* y, int64_t ldy, int64_t n) {
  const int64_t kc = a.chunks * 64, row_bytes = INT4 ? kp / 2 : kp, ngroups = INT4 ? kp / group : 0;
  const int64_t tail_bytes = INT4 ? (kp % 64) / 2 : kp % 64;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __mmask16 second_group = 0xF0F0;   // int4, group 32: lanes of columns 32-47 and 48-63
  const int group_shift = group == 128 ? 7 : group == 64 ? 6 : 5;   // group sizes are 32, 64, 128
  const int8_t* xq = a.q.data() + r0 * kc;
  const float* lsc = a.lane_scale.data() + r0 * a.chunks * 16;
  __m512 acc[MB][NB];
  for (int r = 0; r < MB; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < a.chunks; ++c) {
    const bool tail = tail_bytes && c == a.chunks - 1;
    __m512i wv[NB];
    __m512 ws[NB];
    for (int j = 0; j < NB; ++j) {
      const uint8_t* wr = w + (n + j) * row_bytes;
      if constexpr (INT4) {
        wv[j] = int4_codes(wr + c * 32, tail);
        const float* sn = scale + (n + j) * ngroups;
        if (group == 32) {
          const float s1 = 2 * c + 1 < ngroups ? sn[2 * c + 1] : 0.f;
          ws[j] = _mm512_mask_blend_ps(second_group, _mm512_set1_ps(sn[2 * c]), _mm512_set1_ps(s1));
        } else {
          ws[j] = _mm512_set1_ps(sn[(c * 64) >> group_shift]);
        }
      } else {
        const __m512i raw = tail ? _mm512_maskz_loadu_epi8((1ULL << tail_bytes) - 1, wr + c * 64)
                                 : _mm512_loadu_si512(wr + c * 64);
        wv[j] = _mm512_xor_si512(raw, flip);
      }
    }
    for (int r = 0; r < MB; ++r) {
      const __m512i xv = _mm512_loadu_si512(xq + r * kc + c * 64);
      const __m512 ls = _mm512_loadu_ps(lsc + (r * a.chunks + c) * 16);
      for (int j = 0; j < NB; ++j) {
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[j], xv));
        if constexpr (INT4) acc[r][j] = _mm512_fmadd_ps(dot, _mm512_mul_ps(ls, ws[j]), acc[r][j]);
        else acc[r][j] = _mm512_fmadd_ps(dot, ls, acc[r][j]);
      }
    }
  }
  for (int r = 0; r < MB; ++r) {
    const float* bs = a.block_sum.data() + (r0 + r) * a.blocks;
    float corr = 0.f;
    if constexpr (!INT4)
      for (int64_t k = 0; k < a.blocks; ++k) corr += bs[k];
    for (int j = 0; j < NB; ++j) {
      const int64_t o = n + j;
      if constexpr (INT4) {   // + sum_g min[o, g] * block_sum[g], in the lanes before the one reduction
        for (int64_t g = 0; g < ngroups; g += 16) {
          const __mmask16 live = ngroups - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (ngroups - g)) - 1);
          acc[r][j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, mins + o * ngroups + g),
                                      _mm512_maskz_loadu_ps(live, bs + g), acc[r][j]);
        }
      }
      float v = _mm512_reduce_add_ps(acc[r][j]);
      if constexpr (!INT4) v = scale[o] * (v - 128.f * corr);
      y[r * ldy + o] = v + (bias ? bias[o] : 0.f);
    }
  }
}

constexpr int kVnniRows = 4, kVnniCols = 4;

template <bool INT4, int MB>
void vnni_span(const QuantAct& a, int64_t r0, int64_t kp, int64_t group, const uint8_t* w, const float* scale,
               const float* mins, const float* bias, float* y, int64_t ldy, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kVnniCols <= n1; n += kVnniCols)
    vnni_tile<MB, kVnniCols, INT4>(a, r0, kp, group, w, scale, mins, bias, y, ldy, n);
  for (; n < n1; ++n) vnni_tile<MB, 1, INT4>(a, r0, kp, group, w, scale, mins, bias, y, ldy, n);
}

template <bool INT4>
void vnni_linear(const QuantAct& a, int64_t m, int64_t kp, int64_t group, const uint8_t* w, const float* scale,
                 const float* mins, const float* bias, float* y, int64_t n) {
  at::parallel_for(0, (n + kVnniCols - 1) / kVnniCols, std::max<int64_t>(1, kGrain / kVnniCols),
                   [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kVnniCols, n1 = std::min(n, b1 * kVnniCols);
    for (int64_t r = 0; r < m; r += kVnniRows) {
      float* yr = y + r * n;
      switch (std::min<int64_t>(kVnniRows, m - r)) {
        case 1: vnni_span<INT4, 1>(a, r, kp, group, w, scale, mins, bias, yr, n, n0, n1); break;
        case 2: vnni_span<INT4, 2>(a, r, kp, group, w, scale, mins, bias, yr, n, n0, n1); break;
        case 3: vnni_span<INT4, 3>(a, r, kp, group, w, scale, mins, bias, yr, n, n0, n1); break;
        default: vnni_span<INT4, 4>(a, r, kp, group, w, scale, mins, bias, yr, n, n0, n1); break;
      }
    }
  });
}
#else
constexpr bool kHasVnni = false;
bool g_use_vnni = false;
#endif

}  // namespace

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
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if (g_use_vnni) {
    QuantAct a;
    quantize_act(xd, m, kp, 64, false, a);
    vnni_linear<false>(a, m, kp, 64, reinterpret_cast<const uint8_t*>(qd), sd, nullptr, bd, yd, n);
    return y;
  }
#endif
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
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if (g_use_vnni) {
    QuantAct a;
    quantize_act(xd, m, kp, group, true, a);
    vnni_linear<true>(a, m, kp, group, wd, sd, md, bd, yd, n);
    return y;
  }
#endif
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("isa") = kIsa;
  m.attr("has_vnni") = kHasVnni;
  m.def("use_vnni", [](bool on) { g_use_vnni = kHasVnni && on; return g_use_vnni; },
        "choose the VNNI path (int8 activations) or register dequantization (fp32 activations)");
  m.def("linear_int8", &linear_int8, "y = (x * xscale) @ dequant(int8 w)^T + bias, small M");
  m.def("linear_int4", &linear_int4, "y = (x * xscale) @ dequant(int4 w)^T + bias, small M");
  m.def("dequant_int8", &dequant_int8, "fp32 [N, Kp] from int8 weights");
  m.def("dequant_int4", &dequant_int4, "fp32 [N, Kp] from packed int4 weights");
}
