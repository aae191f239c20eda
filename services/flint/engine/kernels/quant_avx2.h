// The tiled small-M Linear of quant_vnni.cpp on CPUs with AVX2 and no AVX512-VNNI (included there, inside
// namespace flint_tiled, when the build has AVX2 + FMA and no AVX-512 VNNI).
//
// Same tiles, same int8 activations per block, same float epilogue as the VNNI kernel; a 64-byte tile vector is
// two 32-byte halves (8 output lanes x 4 bytes each). With no vpdpbusd, a lane's 4-byte dot product is
// vpmaddubsw (unsigned x signed bytes, adjacent pairs summed to 16 bits) then vpmaddwd against ones (pairs of
// 16-bit sums to 32 bits). vpmaddubsw saturates its 16-bit sums, so both operands are kept small enough to be
// exact:
//   int4: weights 0..15 (unsigned) x activations -127..127: a step's low- and high-nibble products added in 16 bits
//         reach at most 4 x 15 x 127 = 7,620;
//   int8: the codes + 128 of the tiles would reach 2 x 255 x 127 and saturate, so each weight vector goes back to
//         its signed codes (xor 0x80) and is multiplied as |w| x (x with w's sign), at most 2 x 127 x 127 = 32,258.
//         That is the signed dot product itself: no +128 correction (Act::corr is not used).
// Integer sums are exact and the float epilogue of a (row, half tile) is the same operations whatever rows share
// the call: a row's result depends only on that row, as on the VNNI path.
//
// Work: items of kTiles tiles (8 half tiles) as on the VNNI path; MB rows x HB half tiles per pass, MB * HB = 8
// integer accumulators (16 ymm registers: the rest hold a weight vector, its unpacked halves, activations and the
// constants); an item's bytes come from memory on its first pass and from L1 / L2 after it.

// kInt8Block and kTiles: quant_vnni.cpp's, shared by both forms.

struct Act {                 // int8 activations of M rows
  int64_t kq = 0, blocks = 0, block = 0;
  std::vector<int8_t> q;     // [M, kq]
  std::vector<float> sx;     // [M, blocks]
  std::vector<int32_t> sum;  // [M, blocks]
  std::vector<float> sxsum;  // [M, blocks]: sx * sum, the int4 mins' factor
};

inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int32_t hsum8i(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// 8 floats of p from column c on, zero at and past k (k - c may be anything)
inline __m256 load8(const float* p, int64_t c, int64_t k) {
  if (k - c >= 8) return _mm256_loadu_ps(p + c);
  alignas(32) float t[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int64_t i = c; i < k; ++i) t[i - c] = p[i];
  return _mm256_load_ps(t);
}

// Rows of x [M, K] (row stride ldx), times xscale [K] if given, zero past K, rounded to int8 per block (with
// floor >= 0 each row first divided by hypot(|row|, floor)): quant_vnni.cpp's quantize_rows in 8-float vectors.
inline void quantize(const float* x, int64_t ldx, int64_t m, int64_t k, const float* xscale, int64_t kp,
                     int64_t block, double floor, Act& a) {
  a.block = block;
  a.blocks = (kp + block - 1) / block;
  a.kq = a.blocks * block;
  a.q.resize(m * a.kq);
  a.sx.resize(m * a.blocks);
  a.sum.resize(m * a.blocks);
  a.sxsum.resize(m * a.blocks);
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * ldx;
    float row_scale = 1.f;
    if (floor >= 0) {
      __m256 ss = _mm256_setzero_ps();
      for (int64_t c = 0; c < k; c += 8) {
        const __m256 v = load8(xr, c, k);
        ss = _mm256_fmadd_ps(v, v, ss);
      }
      row_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hsum8(ss)) + floor * floor));
    }
    for (int64_t b = 0; b < a.blocks; ++b) {
      __m256 v[16];   // blocks are at most 128 columns
      const int64_t k0 = b * block, nv = block / 8;
      __m256 mx = _mm256_setzero_ps();
      for (int64_t i = 0; i < nv; ++i) {
        const int64_t c = k0 + 8 * i;
        v[i] = load8(xr, c, k);
        if (xscale) v[i] = _mm256_mul_ps(v[i], load8(xscale, c, k));
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
      }
      const float amax = hmax8(mx);
      const float sx = amax / 127.f;
      const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      __m256i total = _mm256_setzero_si256();
      int8_t* qr = a.q.data() + r * a.kq + k0;
      for (int64_t i = 0; i < nv; ++i) {
        const __m256i iv = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));   // round to nearest even, |iv| <= 127
        total = _mm256_add_epi32(total, iv);
        const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(iv), _mm256_extracti128_si256(iv, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(qr + 8 * i), _mm_packs_epi16(w16, w16));
      }
      const int64_t i = r * a.blocks + b;
      a.sx[i] = sx * row_scale;
      a.sum[i] = hsum8i(total);
      a.sxsum[i] = a.sx[i] * static_cast<float>(a.sum[i]);
    }
  }
}

// The 32 bytes of half h (0: outputs 0-7, 1: 8-15) of tile t at step s: tiles come in runs of kTiles whose steps
// are interleaved, so the 8 half tiles of a run at one step are 256 consecutive bytes.
inline const uint8_t* half_at(const uint8_t* w, int64_t t, int h, int64_t s, int64_t steps) {
  return w + ((t / kTiles) * steps + s) * kTiles * 64 + (t % kTiles) * 64 + 32 * h;
}

inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// (The empty asm keeps v's product apart from the bias add, as in quant_vnni.cpp's store_tile: under -ffast-math
// the two could be fused into one FMA in some instantiations only.)
inline void store_half(float* y, int64_t o, int64_t n, __m256 v, const float* bias) {
  if (o >= n) return;
  if (n - o >= 8) {
    if (bias) {
      asm("" : "+x"(v));
      v = _mm256_add_ps(v, _mm256_loadu_ps(bias + o));
    }
    _mm256_storeu_ps(y + o, v);
    return;
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int64_t i = 0; i < n - o; ++i) {
    float e = t[i];
    if (bias) {
      asm("" : "+x"(e));
      e += bias[o + i];
    }
    y[o + i] = e;
  }
}

// Half tiles [h0, h0 + HB) of the item starting at tile t0 (half j: tile t0 + j / 2, half j % 2), rows [r0, r0 + MB).
template <int MB, int HB>
void int4_halves(const Act& a, int64_t r0, const uint8_t* w, const float* scale, const float* mins, int64_t kp,
                 int64_t group, const float* bias, float* y, int64_t ldy, int64_t n, int64_t t0, int h0) {
  const int64_t steps = kp / 8, groups = kp / group, gsteps = group / 8;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[MB][HB];
  for (int64_t g = 0; g < groups; ++g) {
    __m256i e[MB][HB];
    for (int r = 0; r < MB; ++r)
      for (int h = 0; h < HB; ++h) e[r][h] = _mm256_setzero_si256();
    // 4 steps at a time summed in 16 bits (a step adds at most 7,620 to a 16-bit lane: 4 steps 30,480), then widened
    // once: a quarter of the vpmaddwd. gsteps is a multiple of 4 (groups are of 32 columns).
    for (int64_t s4 = g * gsteps; s4 < (g + 1) * gsteps; s4 += 4) {
      __m256i p[MB][HB];
#pragma GCC unroll 4
      for (int64_t s = s4; s < s4 + 4; ++s) {
        for (int h = 0; h < HB; ++h) {
          const int j = h0 + h;
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half_at(w, t0 + j / 2, j % 2, s, steps)));
          const __m256i wl = _mm256_and_si256(raw, low);
          const __m256i wh = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
          for (int r = 0; r < MB; ++r) {
            const int8_t* xr = a.q.data() + (r0 + r) * a.kq + 8 * s;
            const __m256i d = _mm256_add_epi16(_mm256_maddubs_epi16(wl, bcast4(xr)), _mm256_maddubs_epi16(wh, bcast4(xr + 4)));
            p[r][h] = s == s4 ? d : _mm256_add_epi16(p[r][h], d);
          }
        }
      }
      for (int r = 0; r < MB; ++r)
        for (int h = 0; h < HB; ++h) e[r][h] = _mm256_add_epi32(e[r][h], _mm256_madd_epi16(p[r][h], ones));
    }
    for (int h = 0; h < HB; ++h) {
      const int j = h0 + h;
      const int64_t t = t0 + j / 2, off = ((t * groups + g) * 16) + 8 * (j % 2);
      const __m256 sc = _mm256_loadu_ps(scale + off), mn = _mm256_loadu_ps(mins + off);
      for (int r = 0; r < MB; ++r) {
        const int64_t i = (r0 + r) * a.blocks + g;
        const __m256 dot = _mm256_cvtepi32_ps(e[r][h]);
        const __m256 f = _mm256_mul_ps(sc, _mm256_set1_ps(a.sx[i]));
        const __m256 v = g == 0 ? _mm256_mul_ps(dot, f) : _mm256_fmadd_ps(dot, f, acc[r][h]);
        acc[r][h] = _mm256_fmadd_ps(mn, _mm256_set1_ps(a.sxsum[i]), v);
      }
    }
  }
  for (int r = 0; r < MB; ++r)
    for (int h = 0; h < HB; ++h) {
      const int j = h0 + h;
      store_half(y + (r0 + r) * ldy, 16 * (t0 + j / 2) + 8 * (j % 2), n, acc[r][h], bias);
    }
}

template <int MB, int HB>
void int8_halves(const Act& a, int64_t r0, const uint8_t* w, const float* scale, const float* /*mins*/, int64_t kp,
                 int64_t /*group*/, const float* bias, float* y, int64_t ldy, int64_t n, int64_t t0, int h0) {
  const int64_t steps = kp / 4, bsteps = kInt8Block / 4;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  __m256 acc[MB][HB];
  for (int64_t b = 0; b < a.blocks; ++b) {
    __m256i e[MB][HB];
    for (int r = 0; r < MB; ++r)
      for (int h = 0; h < HB; ++h) e[r][h] = _mm256_setzero_si256();
    const int64_t s1 = std::min(steps, (b + 1) * bsteps);
    for (int64_t s = b * bsteps; s < s1; ++s) {
      __m256i x0[MB];
      for (int r = 0; r < MB; ++r) x0[r] = bcast4(a.q.data() + (r0 + r) * a.kq + 4 * s);
      for (int h = 0; h < HB; ++h) {
        const int j = h0 + h;
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(half_at(w, t0 + j / 2, j % 2, s, steps)));
        const __m256i ws = _mm256_xor_si256(raw, flip);   // the signed codes
        const __m256i wa = _mm256_abs_epi8(ws);
        for (int r = 0; r < MB; ++r) {
          const __m256i p = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(x0[r], ws));
          e[r][h] = _mm256_add_epi32(e[r][h], _mm256_madd_epi16(p, ones));
        }
      }
    }
    for (int r = 0; r < MB; ++r) {
      const __m256 sx = _mm256_set1_ps(a.sx[(r0 + r) * a.blocks + b]);
      for (int h = 0; h < HB; ++h) {
        const __m256 dot = _mm256_cvtepi32_ps(e[r][h]);
        acc[r][h] = b == 0 ? _mm256_mul_ps(dot, sx) : _mm256_fmadd_ps(dot, sx, acc[r][h]);
      }
    }
  }
  for (int h = 0; h < HB; ++h) {
    const int j = h0 + h;
    const int64_t o = 16 * (t0 + j / 2) + 8 * (j % 2);
    const __m256 sc = _mm256_loadu_ps(scale + o);
    for (int r = 0; r < MB; ++r) store_half(y + (r0 + r) * ldy, o, n, _mm256_mul_ps(acc[r][h], sc), bias);
  }
}

// MB rows over the item's 8 half tiles, HB = 8 / MB at a time.
template <bool INT4, int MB>
inline void item_rows(const Act& a, int64_t r0, const uint8_t* w, const float* s, const float* mn, int64_t kp,
                      int64_t g, const float* bias, float* y, int64_t n, int64_t t0) {
  constexpr int HB = 8 / MB;
  for (int h0 = 0; h0 < 2 * kTiles; h0 += HB) {
    if constexpr (INT4) int4_halves<MB, HB>(a, r0, w, s, mn, kp, g, bias, y, n, n, t0, h0);
    else int8_halves<MB, HB>(a, r0, w, s, mn, kp, g, bias, y, n, n, t0, h0);
  }
}

template <bool INT4>
void linear(const Act& a, int64_t m, const uint8_t* w, const float* s, const float* mn, int64_t kp, int64_t g,
            const float* bias, float* y, int64_t n) {
  // tiles come in whole runs of kTiles (formats.tile pads N to 64 with zero scales), so every item is whole
  const int64_t items = (n + 16 * kTiles - 1) / (16 * kTiles);
  flint_pool::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t t0 = item * kTiles;
      int64_t r = 0;
      for (; r + 8 <= m; r += 8) item_rows<INT4, 8>(a, r, w, s, mn, kp, g, bias, y, n, t0);
      for (; r + 4 <= m; r += 4) item_rows<INT4, 4>(a, r, w, s, mn, kp, g, bias, y, n, t0);
      for (; r + 2 <= m; r += 2) item_rows<INT4, 2>(a, r, w, s, mn, kp, g, bias, y, n, t0);
      if (r < m) item_rows<INT4, 1>(a, r, w, s, mn, kp, g, bias, y, n, t0);
    }
  });
}
