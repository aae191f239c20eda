// AVX512-VNNI small-M Linear over weights repacked in 16-output tiles (part of flint_quant_linear).
//
// A tile holds 16 output channels; one 64-byte vector of it is 16 lanes x 4 bytes, lane j for output 16t + j:
//   int8  [T/4, Kp/4, 4, 16, 4]  byte b of lane j at step s: w[16t + j, 4s + b] + 128 (unsigned)
//   int4  [T/4, Kp/8, 4, 16, 4]  byte b of lane j at step s: low nibble w[.., 8s + b], high nibble w[.., 8s + 4 + b]
// (T tiles in runs of 4 whose steps are interleaved, so a work item of 4 tiles reads one sequential stream:
// measured 18-35% faster per decode pass at one row than tile after tile) with scales (and int4 mins)
// [T, groups, 16] and N padded to 64 (zero scales). Every lane accumulates
// its own output, so a call needs no horizontal sums: per 64 weight bytes, a load (and for int4 two masks
// and a shift) and one vpdpbusd per row, against 4 activation bytes broadcast to every lane.
//
// Activations are rounded to int8 once per call, per row and block (the int4 group; 128 columns for int8):
//   x ~= sx[b] * xq,  xsum[b] = sum of xq over the block
//   int4: y[n] = sum_g s[n, g] * sx[g] * idot_g + min[n, g] * sx[g] * xsum[g]
//   int8: y[n] = s[n] * (sum_b sx[b] * idot_b - corr),  corr = 128 * sum_b sx[b] * xsum[b]
//         (the +128 of the weight codes, the same for every output n of a row: taken off once, at the end)
// Rows are processed 2 at a time over each work item of 4 tiles (4 or 8 at a time when more share the call, see
// Kern), so the tiles' bytes come from memory once
// per call and from L1 / L2 for the other rows: a verification step of 8 rows reads the weights once.
// A row's result depends only on that row (same operations in the same order whatever MB): speculative
// verification reproduces plain decoding bit for bit.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FLINT_TILED 1
#define FLINT_TILED_VNNI 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define FLINT_TILED 1
#define FLINT_TILED_AVX2 1   // the same tiles through vpmaddubsw (quant_avx2.h)
#include <immintrin.h>
#endif

#include "quant_vnni.h"
#include "rowops.h"
#include "pool.h"

#define FLINT_PA_NO_MODULE
#include "paged_attention.cpp"   // rope_attend, for decode_layer

namespace flint_tiled {

namespace {
// Both tiled forms (VNNI here, AVX2 in quant_avx2.h):
// int8 activations' block: 128 columns. Against 64: the 16-row int8 Linears 0.93-0.95x the time (alternated process
// pairs, benchmark model, 2-core EPYC; one row the same), logits vs fp32 on the test checkpoints min cosine
// 0.9995-0.9996 either way (tests/quant/test_quantized_model.py, bound 0.999).
[[maybe_unused]] constexpr int64_t kInt8Block = 128;
[[maybe_unused]] constexpr int64_t kTiles = 4;   // tiles per work item and per interleaved run (formats.TILE_RUN)
// Rows from which a call's activations are rounded (and the MLP's silu_mul runs) on the pool, not on the caller
// alone: a batched decode step's. Fewer rows are a few us of work, less than handing them out.
[[maybe_unused]] constexpr int64_t kSplitRows = 8;
}  // namespace

#ifdef FLINT_TILED_VNNI
namespace {

struct Act {                 // int8 activations of M rows
  int64_t kq = 0, blocks = 0, block = 0;
  std::vector<int8_t> q;     // [M, kq]
  std::vector<float> sx;     // [M, blocks]
  std::vector<int32_t> sum;  // [M, blocks]
  std::vector<float> sxsum;  // [M, blocks]: sx * sum, the int4 mins' factor (one product per block, not per tile)
  std::vector<float> corr;   // [M]: 128 * (sum over blocks of sxsum): the int8 codes' +128, taken off a row once
  std::vector<float> raw_sx;      // [blocks, M]: a block's amax / 127 before the row's norm (quantize's scratch,
  std::vector<int32_t> raw_sum;   // [blocks, M]  block-major: a block's entries are one thread's)
  std::vector<float> raw_ss;      // [blocks, M, 16]: the row's squares over the block, per lane (with a norm)
  std::vector<int8_t> q16;   // [M / 16, kq / 4, 16, 4]: q of each full group of 16 rows, 4 columns of all 16 at a
                             // time, so the 16-row pass broadcasts them from one pointer (16 pointers spill)
  // The 4 bytes of columns [4u, 4u + 4) of row r0 + r, r0 a multiple of 16 when MB == 16.
  template <int MB>
  const int8_t* at(int64_t r0, int r, int64_t u) const {
    if constexpr (MB == 16) return q16.data() + ((r0 / 16 * (kq / 4) + u) * 16 + r) * 4;
    else return q.data() + (r0 + r) * kq + 4 * u;
  }
};

// Rows of x [M, K] (row stride ldx), times xscale [K] if given, zero past K, rounded to int8 per block.
// With floor >= 0 each row is first divided by hypot(|row|, floor) (llama.py's unit_rms, fused here: it only
// scales the row's block scales). With kQ16, the rows of each full group of 16 go to Act::q16 as they are rounded
// (4 columns of a row every 64 bytes; the 16-row pass reads nothing else, so those rows skip Act::q). That was a
// second pass over Act::q: the 16-row pass's layers and lm_head measured 0.85-0.96x the time without it in 3 of
// 4 alternated process pairs on the 2-core EPYC.
//
// Two phases, the same for every M: each block of columns is rounded for all rows on its own (its raw scale,
// code sum and the row's sum of squares over the block, in block-major scratch), then each row's blocks are
// finished in order (the row's norm from its blocks' sums of squares, the block scales, the int8 correction).
// Blocks are independent, so from kSplitRows rows on they go to the pool: rounding 16 rows on the caller alone
// was ~4% of a 16-stream decode step with the pool's worker idle (loadtests/results/int4-16-profile-20261201.md).
// Not rows: q16 puts 4 columns of all 16 rows in one 64-byte line, and two threads writing alternate rows of the
// same lines (vCPUs ~400 ns apart on the Zen 5 VM) made 16-stream decode 1.4x slower.
template <bool kQ16>
void quantize_block(const float* x, int64_t ldx, int64_t m, int64_t k, const float* xscale, bool norm, int64_t b,
                    Act& a) {
  const int64_t block = a.block, units = a.kq / 4, full = kQ16 ? m / 16 * 16 : 0, k0 = b * block, nv = block / 16;
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * ldx;
    __m512 v[8];   // blocks are at most 128 columns
    __m512 mx = _mm512_setzero_ps(), ss = _mm512_setzero_ps();
    for (int64_t i = 0; i < nv; ++i) {
      const int64_t c = k0 + 16 * i;
      const __mmask16 live = c >= k ? 0 : (k - c >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (k - c)) - 1));
      v[i] = _mm512_maskz_loadu_ps(live, xr + c);
      if (norm) ss = _mm512_fmadd_ps(v[i], v[i], ss);
      if (xscale) v[i] = _mm512_mul_ps(v[i], _mm512_maskz_loadu_ps(live, xscale + c));
      mx = _mm512_max_ps(mx, _mm512_abs_ps(v[i]));
    }
    const float amax = _mm512_reduce_max_ps(mx);
    const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    __m512i total = _mm512_setzero_si512();
    // this row in q16: columns [4u, 4u + 4) at ((group * units + u) * 16 + row in group) * 4 bytes
    int32_t* q16r = r < full ? reinterpret_cast<int32_t*>(a.q16.data()) + r / 16 * units * 16 + r % 16 : nullptr;
    int8_t* qr = a.q.data() + r * a.kq + k0;
    for (int64_t i = 0; i < nv; ++i) {
      const __m512i iv = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], inv));   // round to nearest even
      total = _mm512_add_epi32(total, iv);
      const __m128i bytes = _mm512_cvtsepi32_epi8(iv);
      if (q16r != nullptr) {   // these 16 columns are 4 units, 64 bytes apart in q16
        int32_t* dst = q16r + (k0 + 16 * i) / 4 * 16;
        dst[0] = _mm_cvtsi128_si32(bytes);
        dst[16] = _mm_extract_epi32(bytes, 1);
        dst[32] = _mm_extract_epi32(bytes, 2);
        dst[48] = _mm_extract_epi32(bytes, 3);
      } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + 16 * i), bytes);
      }
    }
    a.raw_sx[b * m + r] = amax / 127.f;
    a.raw_sum[b * m + r] = _mm512_reduce_add_epi32(total);
    if (norm) _mm512_storeu_ps(a.raw_ss.data() + (b * m + r) * 16, ss);
  }
}

void quantize(const float* x, int64_t ldx, int64_t m, int64_t k, const float* xscale, int64_t kp, int64_t block,
              double floor, Act& a) {
  a.block = block;
  a.blocks = (kp + block - 1) / block;
  a.kq = a.blocks * block;
  a.q.resize(m * a.kq);
  a.q16.resize(m / 16 * 16 * a.kq);
  a.sx.resize(m * a.blocks);
  a.sum.resize(m * a.blocks);
  a.sxsum.resize(m * a.blocks);
  a.corr.resize(m);
  a.raw_sx.resize(m * a.blocks);
  a.raw_sum.resize(m * a.blocks);
  const bool norm = floor >= 0;
  if (norm) a.raw_ss.resize(m * a.blocks * 16);
  const auto blocks = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (m >= 16) quantize_block<true>(x, ldx, m, k, xscale, norm, b, a);
      else quantize_block<false>(x, ldx, m, k, xscale, norm, b, a);
    }
  };
  // chunks of at least 64 columns, so two threads never write the same line of a row of Act::q
  if (m >= kSplitRows) flint_pool::parallel_for(0, a.blocks, std::max<int64_t>(1, 64 / block), blocks);
  else blocks(0, a.blocks);
  for (int64_t r = 0; r < m; ++r) {
    float row_scale = 1.f, offset = 0.f;
    if (norm) {
      __m512 ss = _mm512_setzero_ps();
      for (int64_t b = 0; b < a.blocks; ++b)
        ss = _mm512_add_ps(ss, _mm512_loadu_ps(a.raw_ss.data() + (b * m + r) * 16));
      row_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(_mm512_reduce_add_ps(ss)) + floor * floor));
    }
    for (int64_t b = 0; b < a.blocks; ++b) {
      const int64_t i = r * a.blocks + b;
      a.sx[i] = a.raw_sx[b * m + r] * row_scale;
      a.sum[i] = a.raw_sum[b * m + r];
      a.sxsum[i] = a.sx[i] * static_cast<float>(a.sum[i]);
      offset += a.sxsum[i];
    }
    a.corr[r] = 128.f * offset;
  }
}

// The 64 bytes of tile t at step s: tiles come in runs of kTiles whose steps are interleaved (step s of
// tiles 4i..4i+3, then step s + 1 of them), so a pass over one run reads one sequential stream.
inline const uint8_t* tile_at(const uint8_t* w, int64_t t, int64_t s, int64_t steps) {
  return w + ((t / kTiles) * steps + s) * kTiles * 64 + (t % kTiles) * 64;
}

inline __m512i bcast(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// (The empty asm keeps v's product apart from the bias add: under -ffast-math GCC fused the two into one FMA in
// some of the kernels' instantiations and not in others, so a row's result depended on how many rows shared the
// call; tests/quant/test_quant_kernels.py caught it on the 1- / 8- / 16-row passes of a biased Linear.)
inline void store_tile(float* y, int64_t o, int64_t n, __m512 v, const float* bias) {
  const __mmask16 live = n - o >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n - o)) - 1);
  if (bias) {
    asm("" : "+v"(v));
    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, bias + o));
  }
  _mm512_mask_storeu_ps(y + o, live, v);
}

// The float accumulators of a pass, one vector per (row, tile): in registers for a few rows; in memory (L1) from 8
// rows on, where the 8-16 integer accumulators and the weights need the 32 registers (GCC otherwise shuffles and
// spills accumulators every step: the 16-row int8 pass measured 6.5% slower). The same operations either way.
// They start unset: the first block's product is stored, later ones added (`madd`, below; int4 spells it out). Zeroing them
// per tile was a 1 KiB memset call per tile of a 16-row pass (GCC turns the store loop into one): 4-7% of a
// 16-stream int8 decode's samples in perf.
template <int MB, int TB, bool kMem = (MB >= 8)>
struct FloatAcc {
  __m512 v[MB][TB];
  __m512 get(int r, int t) const { return v[r][t]; }
  void set(int r, int t, __m512 x) { v[r][t] = x; }
};

template <int MB, int TB>
struct FloatAcc<MB, TB, true> {
  alignas(64) float v[MB][TB][16];
  __m512 get(int r, int t) const { return _mm512_load_ps(v[r][t]); }
  void set(int r, int t, __m512 x) { _mm512_store_ps(v[r][t], x); }
};

// acc(r, t) = a * b on the first block, acc(r, t) + a * b after it
template <class Acc>
inline void madd(Acc& acc, int r, int t, __m512 a, __m512 b, bool first) {
  acc.set(r, t, first ? _mm512_mul_ps(a, b) : _mm512_fmadd_ps(a, b, acc.get(r, t)));
}

// r0 += (w0 . the 4 bytes at x) + (w1 . the 4 bytes at x + 64), r1 likewise at x + 4, ... r7 at x + 28: 8 rows of
// two steps of a 16-row pass (Act::q16). In asm, on named locals, so the 16 accumulators keep their registers
// across the step loop (GCC's own code copied some of them to other registers and to the stack every step). The
// activation bytes are vpdpbusd's own broadcast memory operand ({1to16}), not a vpbroadcastd each: half the
// instructions. Measured on the 2-core EPYC, 16-row int8 pass over the benchmark model: 0.97x the time at one
// thread and the same within noise at two, in separate processes (a paired A/B of both builds loaded into one
// process had shown 0.75-0.88x, which separate processes did not confirm). The bytes it reads are an "m" input, not
// a "memory" clobber: that told GCC any memory may have changed, so it reloaded Act's q16 pointer and kq every step.
#define FLINT_DP2(r, off0, off1)                                          \
  "vpdpbusd " #off0 "(%[x])%{1to16%}, %[w0], %[a" #r "]\n\t"              \
  "vpdpbusd " #off1 "(%[x])%{1to16%}, %[w1], %[a" #r "]\n\t"
#define FLINT_DP8X2(x_, w0_, w1_, r0, r1, r2, r3, r4, r5, r6, r7)                                              \
  asm(FLINT_DP2(0, 0, 64) FLINT_DP2(1, 4, 68) FLINT_DP2(2, 8, 72) FLINT_DP2(3, 12, 76)                         \
      FLINT_DP2(4, 16, 80) FLINT_DP2(5, 20, 84) FLINT_DP2(6, 24, 88) FLINT_DP2(7, 28, 92)                      \
      : [a0] "+v"(r0), [a1] "+v"(r1), [a2] "+v"(r2), [a3] "+v"(r3), [a4] "+v"(r4), [a5] "+v"(r5),               \
        [a6] "+v"(r6), [a7] "+v"(r7)                                                                           \
      : [w0] "v"(w0_), [w1] "v"(w1_), [x] "r"(x_),                                                             \
        [xm] "m"(*reinterpret_cast<const int8_t(*)[96]>(x_)))   /* the bytes it reads, not a "memory" clobber */

// The 16-row passes walk two pointers set up once: the tile's weights, kTiles * 64 bytes a step on in its run's
// stream, and the 16 rows' activation bytes, 64 bytes a 4-column step on in Act::q16 (128 an int4 step); 4 steps an
// iteration, with no remainder (Kp and int8 blocks are multiples of 16 columns, int4 groups of 32). Computed per step
// (tile_at and Act::at, Act's fields reloaded after each asm), the step loop ran 0.45 other instructions per vpdpbusd
// for int4 and 0.52 for int8 (which also copied accumulators between registers and the stack); now 0.19 for both.
// One 16-row pass through the benchmark model's Linears, 40 alternated process pairs on the 2-core EPYC (12 of them
// quiet, the rest beside other runs): at one thread int8 0.89x the time (quiet 0.90x), int4 0.96x (quiet 0.96x); at
// two threads int8 0.91x (quiet 0.95x), int4 unchanged (quiet 1.01x). One int4 Linear called over and over on its
// own takes the same time as before or up to 1% more (int8 0.98x): the gain is in the pass over every Linear in
// turn, as in a decode step. The same bits (loadtests/results/tile16-loop-20261201.md).

// int8_tiles<16, 1>: one tile for the 16 rows [r0, r0 + 16), two steps (w0, w1) at a time.
void int8_tile16(const Act& a, int64_t r0, const uint8_t* w, const float* scale, const float* bias, float* y,
                 int64_t ldy, int64_t n, int64_t kp, int64_t t0) {
  const int64_t steps = kp / 4, bsteps = kInt8Block / 4;
  const uint8_t* wp = tile_at(w, t0, 0, steps);
  const int8_t* xp = a.at<16>(r0, 0, 0);
  FloatAcc<16, 1> acc;
  for (int64_t b = 0; b < a.blocks; ++b) {
    __m512i e0 = _mm512_setzero_si512(), e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0, e6 = e0, e7 = e0, e8 = e0,
            e9 = e0, e10 = e0, e11 = e0, e12 = e0, e13 = e0, e14 = e0, e15 = e0;
    const int64_t s1 = std::min(steps, (b + 1) * bsteps);
    for (int64_t s = b * bsteps; s < s1; s += 4)   // s1 - s is a multiple of 4: Kp and blocks are of 16 columns
#pragma GCC unroll 2
      for (int u = 0; u < 2; ++u, wp += 2 * kTiles * 64, xp += 2 * 64) {
        const __m512i w0 = _mm512_loadu_si512(wp);
        const __m512i w1 = _mm512_loadu_si512(wp + kTiles * 64);
        FLINT_DP8X2(xp, w0, w1, e0, e1, e2, e3, e4, e5, e6, e7);
        FLINT_DP8X2(xp + 32, w0, w1, e8, e9, e10, e11, e12, e13, e14, e15);
      }
    const __m512i ev[16] = {e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15};
    for (int r = 0; r < 16; ++r) {
      const int64_t i = (r0 + r) * a.blocks + b;
      madd(acc, r, 0, _mm512_cvtepi32_ps(ev[r]), _mm512_set1_ps(a.sx[i]), b == 0);
    }
  }
  const __m512 sc = _mm512_loadu_ps(scale + t0 * 16);
  for (int r = 0; r < 16; ++r)
    store_tile(y + (r0 + r) * ldy, 16 * t0, n,
               _mm512_mul_ps(_mm512_sub_ps(acc.get(r, 0), _mm512_set1_ps(a.corr[r0 + r])), sc), bias);
}

// int4_tiles<16, 1>: one tile for the 16 rows [r0, r0 + 16). A step's low and high nibbles are the two steps of
// FLINT_DP8X2 (x at step 2s, then 2s + 1: 64 bytes on in Act::q16).
void int4_tile16(const Act& a, int64_t r0, const uint8_t* w, const float* scale, const float* mins, int64_t kp,
                 int64_t group, const float* bias, float* y, int64_t ldy, int64_t n, int64_t t0) {
  const int64_t steps = kp / 8, groups = kp / group, gsteps = group / 8;
  const __m512i low = _mm512_set1_epi8(0x0F);
  const uint8_t* wp = tile_at(w, t0, 0, steps);
  const int8_t* xp = a.at<16>(r0, 0, 0);
  FloatAcc<16, 1> acc;
  for (int64_t g = 0; g < groups; ++g) {
    __m512i e0 = _mm512_setzero_si512(), e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0, e6 = e0, e7 = e0, e8 = e0,
            e9 = e0, e10 = e0, e11 = e0, e12 = e0, e13 = e0, e14 = e0, e15 = e0;
    for (int64_t s = 0; s < gsteps; s += 4)   // gsteps is a multiple of 4: groups are of 32 columns
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u, wp += kTiles * 64, xp += 2 * 64) {
        const __m512i raw = _mm512_loadu_si512(wp);
        const __m512i wl = _mm512_and_si512(raw, low);
        const __m512i wh = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
        FLINT_DP8X2(xp, wl, wh, e0, e1, e2, e3, e4, e5, e6, e7);
        FLINT_DP8X2(xp + 32, wl, wh, e8, e9, e10, e11, e12, e13, e14, e15);
      }
    const __m512i ev[16] = {e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15};
    const __m512 sc = _mm512_loadu_ps(scale + (t0 * groups + g) * 16);
    const __m512 mn = _mm512_loadu_ps(mins + (t0 * groups + g) * 16);
    for (int r = 0; r < 16; ++r) {
      const int64_t i = (r0 + r) * a.blocks + g;
      const __m512 p = _mm512_cvtepi32_ps(ev[r]), f = _mm512_mul_ps(sc, _mm512_set1_ps(a.sx[i]));
      const __m512 v = g == 0 ? _mm512_mul_ps(p, f) : _mm512_fmadd_ps(p, f, acc.get(r, 0));
      acc.set(r, 0, _mm512_fmadd_ps(mn, _mm512_set1_ps(a.sxsum[i]), v));
    }
  }
  for (int r = 0; r < 16; ++r) store_tile(y + (r0 + r) * ldy, 16 * t0, n, acc.get(r, 0), bias);
}

// Integer accumulators per (row, tile): two (the even and odd 4-column steps, so consecutive vpdpbusd do not
// wait on each other) while fewer than 8 (row, tile) pairs share a pass; one when 8 or more do (their chains
// already overlap, and 16 rows then fit the 32 registers). Integer sums are exact: the same bits either way.
template <int MB, int TB>
constexpr bool kSplit = MB * TB < 8;

// Tiles [t0, t0 + TB) for rows [r0, r0 + MB).
template <int MB, int TB>
void int4_tiles(const Act& a, int64_t r0, const uint8_t* w, const float* scale, const float* mins, int64_t kp,
                int64_t group, const float* bias, float* y, int64_t ldy, int64_t n, int64_t t0) {
  if constexpr (MB == 16 && TB == 1) {
    int4_tile16(a, r0, w, scale, mins, kp, group, bias, y, ldy, n, t0);
    return;
  }
  const int64_t steps = kp / 8, groups = kp / group, gsteps = group / 8;
  const __m512i low = _mm512_set1_epi8(0x0F);
  FloatAcc<MB, TB> acc;
  for (int64_t g = 0; g < groups; ++g) {
    __m512i lo[MB][TB], hi[MB][TB];
    for (int r = 0; r < MB; ++r)
      for (int t = 0; t < TB; ++t) lo[r][t] = hi[r][t] = _mm512_setzero_si512();
    for (int64_t s = g * gsteps; s < (g + 1) * gsteps; ++s) {
      for (int t = 0; t < TB; ++t) {
        const __m512i raw = _mm512_loadu_si512(tile_at(w, t0 + t, s, steps));
        const __m512i wl = _mm512_and_si512(raw, low);
        const __m512i wh = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
        for (int r = 0; r < MB; ++r) {
          const int8_t* x0 = a.at<MB>(r0, r, 2 * s);
          const int8_t* x1 = a.at<MB>(r0, r, 2 * s + 1);
          lo[r][t] = _mm512_dpbusd_epi32(lo[r][t], wl, bcast(x0));
          if constexpr (kSplit<MB, TB>) hi[r][t] = _mm512_dpbusd_epi32(hi[r][t], wh, bcast(x1));
          else lo[r][t] = _mm512_dpbusd_epi32(lo[r][t], wh, bcast(x1));
        }
      }
    }
    for (int t = 0; t < TB; ++t) {
      const __m512 sc = _mm512_loadu_ps(scale + ((t0 + t) * groups + g) * 16);
      const __m512 mn = _mm512_loadu_ps(mins + ((t0 + t) * groups + g) * 16);
      for (int r = 0; r < MB; ++r) {
        const int64_t i = (r0 + r) * a.blocks + g;
        const __m512i idot = kSplit<MB, TB> ? _mm512_add_epi32(lo[r][t], hi[r][t]) : lo[r][t];
        const __m512 dot = _mm512_cvtepi32_ps(idot);
        const __m512 f = _mm512_mul_ps(sc, _mm512_set1_ps(a.sx[i]));
        const __m512 v = g == 0 ? _mm512_mul_ps(dot, f) : _mm512_fmadd_ps(dot, f, acc.get(r, t));
        acc.set(r, t, _mm512_fmadd_ps(mn, _mm512_set1_ps(a.sxsum[i]), v));
      }
    }
  }
  for (int r = 0; r < MB; ++r)
    for (int t = 0; t < TB; ++t) store_tile(y + (r0 + r) * ldy, 16 * (t0 + t), n, acc.get(r, t), bias);
}

template <int MB, int TB>
void int8_tiles(const Act& a, int64_t r0, const uint8_t* w, const float* scale, const float* /*mins*/, int64_t kp,
                int64_t /*group*/, const float* bias, float* y, int64_t ldy, int64_t n, int64_t t0) {
  if constexpr (MB == 16 && TB == 1) {
    int8_tile16(a, r0, w, scale, bias, y, ldy, n, kp, t0);
    return;
  }
  const int64_t steps = kp / 4, bsteps = kInt8Block / 4;
  FloatAcc<MB, TB> acc;
  for (int64_t b = 0; b < a.blocks; ++b) {
    __m512i ev[MB][TB], od[MB][TB];
    for (int r = 0; r < MB; ++r)
      for (int t = 0; t < TB; ++t) ev[r][t] = od[r][t] = _mm512_setzero_si512();
    const int64_t s1 = std::min(steps, (b + 1) * bsteps);
    int64_t s = b * bsteps;
    for (; s + 2 <= s1; s += 2) {      // blocks and Kp are multiples of 16 columns: s1 - s is even
      for (int t = 0; t < TB; ++t) {
        const uint8_t* wt = tile_at(w, t0 + t, s, steps);
        const __m512i w0 = _mm512_loadu_si512(wt), w1 = _mm512_loadu_si512(tile_at(w, t0 + t, s + 1, steps));
        for (int r = 0; r < MB; ++r) {
          const int8_t* x0 = a.at<MB>(r0, r, s);
          const int8_t* x1 = a.at<MB>(r0, r, s + 1);
          ev[r][t] = _mm512_dpbusd_epi32(ev[r][t], w0, bcast(x0));
          if constexpr (kSplit<MB, TB>) od[r][t] = _mm512_dpbusd_epi32(od[r][t], w1, bcast(x1));
          else ev[r][t] = _mm512_dpbusd_epi32(ev[r][t], w1, bcast(x1));
        }
      }
    }
    for (int r = 0; r < MB; ++r) {
      const int64_t i = (r0 + r) * a.blocks + b;
      const __m512 sx = _mm512_set1_ps(a.sx[i]);
      for (int t = 0; t < TB; ++t) {
        const __m512i sum = kSplit<MB, TB> ? _mm512_add_epi32(ev[r][t], od[r][t]) : ev[r][t];
        madd(acc, r, t, _mm512_cvtepi32_ps(sum), sx, b == 0);
      }
    }
  }
  for (int t = 0; t < TB; ++t) {
    const __m512 sc = _mm512_loadu_ps(scale + (t0 + t) * 16);
    for (int r = 0; r < MB; ++r)
      store_tile(y + (r0 + r) * ldy, 16 * (t0 + t), n,
                 _mm512_mul_ps(_mm512_sub_ps(acc.get(r, t), _mm512_set1_ps(a.corr[r0 + r])), sc), bias);
  }
}

// MB rows over TB tiles of a work item (1 or 2 rows over its 4 tiles: one sequential stream; 4 rows over 2 tiles or
// 8 over 1 when many rows share the call, each unpacked weight vector used by all of them): accumulators per row and
// tile plus the unpacked weights fit the 32 registers; a last, partial item goes tile by tile.
template <bool INT4, int MB, int TB = kTiles>
struct Kern {
  static void run(const Act& a, int64_t r0, const uint8_t* w, const float* s, const float* mn, int64_t kp,
                  int64_t g, const float* bias, float* y, int64_t ldy, int64_t n, int64_t t0, int64_t t1) {
    int64_t t = t0;
    for (; t + TB <= t1; t += TB) {
      if constexpr (INT4) int4_tiles<MB, TB>(a, r0, w, s, mn, kp, g, bias, y, ldy, n, t);
      else int8_tiles<MB, TB>(a, r0, w, s, mn, kp, g, bias, y, ldy, n, t);
    }
    for (; t < t1; ++t) {
      if constexpr (INT4) int4_tiles<MB, 1>(a, r0, w, s, mn, kp, g, bias, y, ldy, n, t);
      else int8_tiles<MB, 1>(a, r0, w, s, mn, kp, g, bias, y, ldy, n, t);
    }
  }
};

template <bool INT4>
void linear(const Act& a, int64_t m, const uint8_t* w, const float* s, const float* mn, int64_t kp, int64_t g,
            const float* bias, float* y, int64_t n) {
  const int64_t tiles = (n + 15) / 16;
  // a work item: kTiles tiles (64 outputs) for every row; rows go 4 at a time over the item's tiles, whose
  // bytes (64 x Kp or Kp / 2) stay in L1 / L2 after the first 4 rows
  flint_pool::parallel_for(0, (tiles + kTiles - 1) / kTiles, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t t0 = item * kTiles, t1 = std::min(tiles, t0 + kTiles);
      int64_t r = 0;
      for (; r + 16 <= m; r += 16)   // batched decode: 16 rows tile by tile, each weight vector used 16 times
        Kern<INT4, 16, 1>::run(a, r, w, s, mn, kp, g, bias, y, n, n, t0, t1);
      for (; r + 8 <= m; r += 8)   // many rows: 8 at a time tile by tile, each unpacked weight vector used 8 times
        Kern<INT4, 8, 1>::run(a, r, w, s, mn, kp, g, bias, y, n, n, t0, t1);
      for (; r + 4 <= m; r += 4)   // 4 at a time over 2 tiles
        Kern<INT4, 4, 2>::run(a, r, w, s, mn, kp, g, bias, y, n, n, t0, t1);
      for (; r < m; r += 2) {      // the item's 4 tiles in one pass, rows 2 at a time
        if (m - r == 1) Kern<INT4, 1>::run(a, r, w, s, mn, kp, g, bias, y, n, n, t0, t1);
        else Kern<INT4, 2>::run(a, r, w, s, mn, kp, g, bias, y, n, n, t0, t1);
      }
    }
  });
}

}  // namespace
#elif defined(FLINT_TILED_AVX2)
namespace {
#include "quant_avx2.h"
}  // namespace
#endif

// 512-bit vpdpbusd per second over the intra-op threads (the instruction of the tiled kernel): its ceiling.
double vnni_peak_per_s(int64_t calls) {
#ifdef FLINT_TILED_VNNI
  return flint_rows::peak_rate([] { FLINT_PEAK_OPS("vpdpbusd", "zmm"); }, calls);
#else
  (void)calls;
  return 0.0;
#endif
}

bool g_on = true;   // use_tiled(False) turns the tiled path off (A/B runs, tests of the other path)

bool available() {
#ifdef FLINT_TILED
  return true;
#else
  return false;
#endif
}

const char* isa() {
#if defined(FLINT_TILED_VNNI)
  return "avx512-vnni";
#elif defined(FLINT_TILED_AVX2)
  return "avx2";
#else
  return "";
#endif
}

// y [M, N] = (x * xscale) @ w^T + bias (x divided by hypot(|x|, floor) per row first when floor >= 0) over tiled int8 (bits 8) or int4 (bits 4) weights of Kp columns.
torch::Tensor linear_tiled(const torch::Tensor& x, int64_t bits, const torch::Tensor& w, const torch::Tensor& scale,
                           const c10::optional<torch::Tensor>& mins, int64_t n, int64_t kp, int64_t group,
                           const c10::optional<torch::Tensor>& xscale, const c10::optional<torch::Tensor>& bias,
                           double unit_rms_floor) {
#ifdef FLINT_TILED
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.stride(1) == 1,
              "linear_tiled: x must be float32 [M, K] with unit column stride");
  TORCH_CHECK(bits == 8 || bits == 4, "linear_tiled: bits must be 8 or 4");
  const int64_t m = x.size(0), k = x.size(1), tiles = (n + 16 * kTiles - 1) / (16 * kTiles) * kTiles;
  TORCH_CHECK(k <= kp && kp > 0 && kp % 16 == 0, "linear_tiled: x has ", k, " columns, the weight ", kp);
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.is_contiguous() && w.numel() == tiles * 16 * (bits == 8 ? kp : kp / 2),
              "linear_tiled: w must be contiguous uint8 tiles");
  const int64_t block = bits == 8 ? kInt8Block : group;
  TORCH_CHECK(bits == 8 || (group % 32 == 0 && group <= 128 && kp % group == 0), "linear_tiled: group size");
  TORCH_CHECK(scale.is_contiguous() && scale.numel() == tiles * 16 * (bits == 8 ? 1 : kp / group), "linear_tiled: scale");
  TORCH_CHECK(bits == 8 || (mins.has_value() && mins->is_contiguous() && mins->numel() == scale.numel()),
              "linear_tiled: int4 needs mins shaped like scale");
  const float* xs = nullptr;
  if (xscale.has_value()) {
    TORCH_CHECK(xscale->scalar_type() == torch::kFloat32 && xscale->is_contiguous() && xscale->numel() == k,
                "linear_tiled: xscale must be contiguous float32 [K]");
    xs = xscale->data_ptr<float>();
  }
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat32 && bias->is_contiguous() && bias->numel() == n,
                "linear_tiled: bias must be contiguous float32 [N]");
    bp = bias->data_ptr<float>();
  }
  thread_local Act act;
  quantize(x.data_ptr<float>(), x.stride(0), m, k, xs, kp, block, unit_rms_floor, act);
  auto y = torch::empty({m, n}, x.options());
  const float* mn = bits == 4 ? mins->data_ptr<float>() : nullptr;
  if (bits == 4) linear<true>(act, m, w.data_ptr<uint8_t>(), scale.data_ptr<float>(), mn, kp, group, bp, y.data_ptr<float>(), n);
  else linear<false>(act, m, w.data_ptr<uint8_t>(), scale.data_ptr<float>(), nullptr, kp, 0, bp, y.data_ptr<float>(), n);
  return y;
#else
  TORCH_CHECK(false, "linear_tiled needs AVX2 + FMA or AVX512-VNNI (this build has neither)");
  return x;
#endif
}

// One tiled Linear bound to its tensors: a decode step calls it 17 times, so the call takes only x.
// Returns None when the tiled path is off (the caller then takes the other path).
TiledLinear::TiledLinear(int64_t bits, torch::Tensor w, torch::Tensor scale, c10::optional<torch::Tensor> mins,
                         int64_t n, int64_t kp, int64_t group, c10::optional<torch::Tensor> xscale,
                         c10::optional<torch::Tensor> bias)
    : bits(bits), n(n), kp(kp), group(group), w(std::move(w)), scale(std::move(scale)), mins(std::move(mins)),
      xscale(std::move(xscale)), bias(std::move(bias)) {}

c10::optional<torch::Tensor> TiledLinear::call(const torch::Tensor& x, double unit_rms_floor,
                                               const c10::optional<torch::Tensor>& residual, bool silu) const {
  if (!(available() && g_on)) return c10::nullopt;
  torch::Tensor xf = x.scalar_type() == torch::kFloat32 && x.stride(-1) == 1 ? x : x.to(torch::kFloat32).contiguous();
  if (silu) xf = flint_rows::silu_mul_tensor(xf.contiguous());
  torch::Tensor y = linear_tiled(xf, bits, w, scale, mins, n, kp, group, xscale, bias, unit_rms_floor);
  flint_rows::add_residual(y, residual);
  return y;
}

c10::optional<torch::Tensor> mlp_block(const torch::Tensor& o, const torch::Tensor& x, const TiledLinear& o_proj,
                                       const TiledLinear& gate_up, const TiledLinear& down, double unit_rms_floor) {
  if (!(available() && g_on)) return c10::nullopt;
  TORCH_CHECK(o.scalar_type() == torch::kFloat32 && o.stride(-1) == 1, "mlp_block: o must be float32 with unit stride");
  const auto run = [](const TiledLinear& l, const torch::Tensor& in, double floor) {
    return linear_tiled(in, l.bits, l.w, l.scale, l.mins, l.n, l.kp, l.group, l.xscale, l.bias, floor);
  };
  torch::Tensor x1 = run(o_proj, o, -1.0);
  flint_rows::add_residual(x1, x);
  const torch::Tensor h = flint_rows::silu_mul_tensor(run(gate_up, x1, unit_rms_floor));
  torch::Tensor y = run(down, h, -1.0);
  flint_rows::add_residual(y, x1);
  return y;
}

c10::optional<torch::Tensor> decode_layer(const torch::Tensor& x, const TiledLinear& qkv, const TiledLinear& o_proj,
                                          const TiledLinear& gate_up, const TiledLinear& down, double unit_rms_floor,
                                          const torch::Tensor& rope, at::Tensor kc, at::Tensor vc,
                                          const at::Tensor& write_slots, int64_t heads,
                                          const std::vector<at::Tensor>& slots, const at::Tensor& meta, int64_t window,
                                          double scale) {
  if (!(available() && g_on)) return c10::nullopt;
  TORCH_CHECK(!slots.empty(), "decode_layer: the step's sequences must all attend in place");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.stride(-1) == 1, "decode_layer: x must be float32 with unit stride");
  const torch::Tensor q = linear_tiled(x, qkv.bits, qkv.w, qkv.scale, qkv.mins, qkv.n, qkv.kp, qkv.group, qkv.xscale,
                                       qkv.bias, unit_rms_floor);
  const int64_t t = x.size(0), d = kc.size(2);
  auto out = torch::empty({t, heads, d}, x.options());
  ::rope_attend(out, q, rope, kc, vc, write_slots, heads, slots, meta, window, scale);
  return mlp_block(out.view({t, heads * d}), x, o_proj, gate_up, down, unit_rms_floor);
}

}  // namespace flint_tiled
