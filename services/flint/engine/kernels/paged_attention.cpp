// Attention that reads the paged KV cache in place (flash-decoding on the CPU).
//
// attend(out, q, kc, vc, slots, meta, window, scale) fills, for each sequence b with
// meta[b] = (row, start, n), the rows out[row : row + n] with the attention of its n new
// queries q[row : row + n] (positions start .. start + n - 1) over its keys at positions
// 0 .. start + n - 1, key position p being read from cache slot slots[b][p]:
//   q, out [T, H, D]; kc, vc [S, KV, D] (one layer of the cache); slots[b] int64 [>= start + n].
// Causal within the new tokens; with window > 0 (Mistral) a query at position i sees keys
// j with i - window < j <= i. Grouped-query attention: query head h reads KV head h / (H / KV).
//
// No key or value is copied into a per-sequence buffer. The visible keys of every sequence
// are cut into splits; each split, one task of the thread pool, reads its cache rows (all KV
// heads of a slot are one contiguous row, so a block of slots is one sequential stream) and
// runs an online softmax over them, tile by tile, for all the sequence's queries (each key
// and value is read once per split, not once per query head: grouped-query heads share it),
// leaving unnormalised partials (max, sum, acc[D]). A final pass merges the partials of a
// sequence with their log-sum-exps.
//
// Short sequences (float32, head_dim 64 or 128, at most kShortMaxKeys visible keys: the decode rows of a
// many-stream step) skip all that (run_short): one task per sequence, the scores of all its keys and
// queries in per-thread scratch, an exact softmax, the values, the output rows written directly. With
// 16 sequences of 48 keys the per-task State, partials and merge pass cost more than the arithmetic.
// Like the split path it reads each K and V row whole and in slot order: with the KV out of the caches
// (an engine step streams its weights through the L3 between two reads of a layer's KV), reading rows
// head by head was 1.1-1.9x slower than the split path (loadtests/results/attention-short-20261130.md).
//
// Where the memory goes (1 new token over 131,072 cached, demo shape, one thread): reading a
// tile of K rows and then the tile's V rows kept one memory stream going at a time and read the
// cache at ~40% of a plain sum's rate. Decode and short extends over float32 caches (up to
// kDotMaxQueries queries per KV head) are software-pipelined instead: each slot's K row is read
// beside the V row of the same slot one tile back (run_task_fused), about one read of the KV
// (loadtests/results/attention.md). Other dtypes and longer extends run tile by tile (run_task),
// with AVX-512 code for the extends' transposed scores and value updates where the CPU has it
// (-DFLINT_PA_NO_AVX512 builds the auto-vectorised loops instead; tests do).

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "pool.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

constexpr int kTile = 32;                 // keys per online-softmax update
constexpr int64_t kMinSplitKeys = 512;    // a split is worth its merge only past this many keys
constexpr int kTasksPerThread = 4;        // load balance across threads of unequal speed
constexpr int64_t kDotMaxQueries = 8;     // up to this many queries per KV head, scores by dot products
constexpr float kNeg = -1e30f;            // "minus infinity" that -ffast-math cannot break

inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_float(c10::Half x) { return static_cast<float>(x); }

struct Seq {
  int64_t row, start, n;
  const int64_t* slots;
  int64_t slot_stride;
  int64_t lo, hi;           // visible key positions [lo, hi) of the union of its queries
};

struct Task {
  int64_t seq, lo, hi;      // keys [lo, hi) of sequence seq, every KV head
  int64_t part;             // offset of its partials: [H * n, D + 2] floats; -1: run_short, no partials
};

template <typename T>
struct Step {
  const T* q; int64_t q_row, q_head;          // q strides (elements)
  T* out; int64_t out_row, out_head;
  const T* kc; const T* vc; int64_t slot_stride;   // KV * D
  int64_t heads, kv_heads, group, d, window;
  float scale;
};

// A row of D values as floats: the row itself for float caches, converted into `buf` otherwise.
template <typename T>
inline const float* row_as_float(const T* src, float* buf, int64_t d) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    for (int64_t i = 0; i < d; ++i) buf[i] = to_float(src[i]);
    return buf;
  }
}

#if defined(__AVX512F__) && !defined(FLINT_PA_NO_AVX512)
#include <immintrin.h>
#define FLINT_PA_AVX512 1

// out[t] = q . kt[:, t] for the tile's keys (kt [d, kTile], columns past tn kNeg): the 32 scores stay in
// registers, four independent sums over the head dim (the compiler kept them on the stack, a store-to-load
// chain per element: extends of 16 tokens ran 1.5x slower).
inline void scores_transposed(const float* q, const float* kt, int64_t d, int64_t tn, float* out) {
  static_assert(kTile == 32, "two vectors of 16 scores");
  __m512 a[4][2];
  for (auto& x : a) x[0] = x[1] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 4 <= d; i += 4)
    for (int u = 0; u < 4; ++u) {
      const __m512 x = _mm512_set1_ps(q[i + u]);
      a[u][0] = _mm512_fmadd_ps(x, _mm512_loadu_ps(kt + (i + u) * kTile), a[u][0]);
      a[u][1] = _mm512_fmadd_ps(x, _mm512_loadu_ps(kt + (i + u) * kTile + 16), a[u][1]);
    }
  for (; i < d; ++i) {
    const __m512 x = _mm512_set1_ps(q[i]);
    a[0][0] = _mm512_fmadd_ps(x, _mm512_loadu_ps(kt + i * kTile), a[0][0]);
    a[0][1] = _mm512_fmadd_ps(x, _mm512_loadu_ps(kt + i * kTile + 16), a[0][1]);
  }
  const __m512 neg = _mm512_set1_ps(kNeg);
  for (int h = 0; h < 2; ++h) {
    const __m512 sum = _mm512_add_ps(_mm512_add_ps(a[0][h], a[1][h]), _mm512_add_ps(a[2][h], a[3][h]));
    const int64_t valid = std::clamp<int64_t>(tn - 16 * h, 0, 16);
    _mm512_storeu_ps(out + 16 * h, _mm512_mask_blend_ps((__mmask16)((1u << valid) - 1), neg, sum));
  }
}

// acc[i] += sum_t p[i * stride + t] * row(t) for queries i < nq (kD floats each): two queries' accumulators
// stay in registers over the keys and share each value row's loads; even and odd keys go to separate
// accumulators where head_dim is 64 (two independent FMA chains per vector, not one).
template <int kD, typename Row>
void accumulate_f32(const float* p, int64_t nq, Row row, int64_t tn, float* acc, int64_t stride) {
  constexpr int kV = kD / 16;
  for (int64_t i = 0; i < nq; i += 2) {
    const bool two = i + 1 < nq;
    __m512 o0[kV], o1[kV], e0[kV], e1[kV];
    for (int j = 0; j < kV; ++j) {
      o0[j] = _mm512_loadu_ps(acc + i * kD + 16 * j);
      o1[j] = two ? _mm512_loadu_ps(acc + (i + 1) * kD + 16 * j) : _mm512_setzero_ps();
      e0[j] = e1[j] = _mm512_setzero_ps();
    }
    const float* p0 = p + i * stride;
    const float* p1 = two ? p + (i + 1) * stride : p0;
    int64_t t = 0;
    if constexpr (kV <= 4)   // kD 128: two queries' 16 accumulators are chains enough (and 32 would spill)
      for (; t + 2 <= tn; t += 2) {
        const __m512 w0 = _mm512_set1_ps(p0[t]), w1 = _mm512_set1_ps(p1[t]);
        const __m512 x0 = _mm512_set1_ps(p0[t + 1]), x1 = _mm512_set1_ps(p1[t + 1]);
        const float *r = row(t), *s = row(t + 1);
        for (int j = 0; j < kV; ++j) {
          const __m512 v = _mm512_loadu_ps(r + 16 * j), u = _mm512_loadu_ps(s + 16 * j);
          o0[j] = _mm512_fmadd_ps(w0, v, o0[j]);
          o1[j] = _mm512_fmadd_ps(w1, v, o1[j]);
          e0[j] = _mm512_fmadd_ps(x0, u, e0[j]);
          e1[j] = _mm512_fmadd_ps(x1, u, e1[j]);
        }
      }
    for (; t < tn; ++t) {
      const __m512 w0 = _mm512_set1_ps(p0[t]), w1 = _mm512_set1_ps(p1[t]);
      const float* r = row(t);
      for (int j = 0; j < kV; ++j) {
        const __m512 v = _mm512_loadu_ps(r + 16 * j);
        o0[j] = _mm512_fmadd_ps(w0, v, o0[j]);
        o1[j] = _mm512_fmadd_ps(w1, v, o1[j]);
      }
    }
    for (int j = 0; j < kV; ++j) {
      _mm512_storeu_ps(acc + i * kD + 16 * j, _mm512_add_ps(o0[j], e0[j]));
      if (two) _mm512_storeu_ps(acc + (i + 1) * kD + 16 * j, _mm512_add_ps(o1[j], e1[j]));
    }
  }
}

// Lane k = the sum of the 16 lanes of s[k]: a transpose-and-add tree, 45 instructions where 16 separate
// horizontal sums take about 130.
inline __m512 sum16(const __m512* s) {
  __m512 a[8], b[4];
  for (int k = 0; k < 8; ++k)   // per 128-bit lane of x = s[2k], y = s[2k + 1]: x0+x2, y0+y2, x1+x3, y1+y3
    a[k] = _mm512_add_ps(_mm512_unpacklo_ps(s[2 * k], s[2 * k + 1]), _mm512_unpackhi_ps(s[2 * k], s[2 * k + 1]));
  for (int k = 0; k < 4; ++k) {  // per 128-bit lane: that lane's sums of s[4k .. 4k + 3]
    const __m512d x = _mm512_castps_pd(a[2 * k]), y = _mm512_castps_pd(a[2 * k + 1]);
    b[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const auto lanes = [](__m512 x, __m512 y) {  // (x.l0 + x.l1, x.l2 + x.l3, y.l0 + y.l1, y.l2 + y.l3)
    return _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
  };
  return lanes(lanes(b[0], b[1]), lanes(b[2], b[3]));
}

// e^x for x <= 0: 2^n e^r with n = round(x / ln 2), r = x - n ln 2 (|r| <= 0.35, Cody-Waite), e^r by its
// degree-6 Taylor polynomial (error ~1e-7 relative). x is clamped at -80 so that 2^n stays normal: weights
// below e^-80 of the row's largest do not matter to a float sum. Inline, where libmvec's expf is a call
// per 16 lanes (and slow on very negative lanes).
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-80.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);     // ln 2, high bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);           // ln 2, the rest
  __m512 e = _mm512_set1_ps(1.f / 720);
  for (const float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(e, n);
}

// p[t] = e^(p[t] - max) for t in [a, b), 0 for the other t < padded (a multiple of 16); returns the sum.
inline float softmax_row(float* p, int64_t a, int64_t b, int64_t padded) {
  const auto visible = [&](int64_t t0) {
    const int64_t lo = std::clamp<int64_t>(a - t0, 0, 16), hi = std::clamp<int64_t>(b - t0, 0, 16);
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
  };
  __m512 mx = _mm512_set1_ps(kNeg);
  for (int64_t t0 = 0; t0 < padded; t0 += 16) mx = _mm512_mask_max_ps(mx, visible(t0), mx, _mm512_loadu_ps(p + t0));
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t t0 = 0; t0 < padded; t0 += 16) {
    const __m512 e = _mm512_maskz_mov_ps(visible(t0), exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(p + t0), m)));
    _mm512_storeu_ps(p + t0, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// Scores of the 16 keys of a block for all nq queries, each key's K row (all KV heads) read whole, in order:
// the partial sums go to part [nq][16] vectors, then each query's 16 are reduced by sum16.
template <int kD>
inline void scores_rows(const float* q, int64_t nq, int64_t per_head, const float* kc, const int64_t* off,
                        __m512* part, float* out, int64_t stride) {
  constexpr int kV = kD / 16;
  for (int k = 0; k < 16; ++k) {
    const float* row = kc + off[k];
    for (int64_t qa = 0; qa < nq; ++qa) {
      const float* r = row + qa / per_head * kD;
      const float* qv = q + qa * kD;
      __m512 s = _mm512_mul_ps(_mm512_loadu_ps(qv), _mm512_loadu_ps(r));
      for (int j = 1; j < kV; ++j) s = _mm512_fmadd_ps(_mm512_loadu_ps(qv + 16 * j), _mm512_loadu_ps(r + 16 * j), s);
      part[qa * 16 + k] = s;
    }
  }
  for (int64_t qa = 0; qa < nq; ++qa) _mm512_storeu_ps(out + qa * stride, sum16(part + qa * 16));
}

// scores_rows for kNq queries (a divisor of 16) in registers: 16 / kNq keys' partial sums for all queries
// are exactly the 16 vectors of one sum16, no trip through memory; the scores come out key-major,
// out[t * kNq + qa].
template <int kD, int kNq>
inline void scores_rows_keymajor(const float* q, int64_t per_head, const float* kc, const int64_t* off,
                                 int64_t padded, float* out) {
  constexpr int kV = kD / 16, kK = 16 / kNq;
  for (int64_t t0 = 0; t0 < padded; t0 += kK) {
    __m512 s[16];
    for (int k = 0; k < kK; ++k) {
      const float* row = kc + off[t0 + k];
      for (int qa = 0; qa < kNq; ++qa) {
        const float *r = row + qa / per_head * kD, *qv = q + qa * kD;
        __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qv), _mm512_loadu_ps(r));
        for (int j = 1; j < kV; ++j) a = _mm512_fmadd_ps(_mm512_loadu_ps(qv + 16 * j), _mm512_loadu_ps(r + 16 * j), a);
        s[k * kNq + qa] = a;
      }
    }
    _mm512_storeu_ps(out + t0 * kNq, sum16(s));
  }
}

// acc[qa] += sum_k w[qa * stride + k] * V row k (qa's KV head) for the tn keys of a block, the accumulators in
// registers across the block: for each KV head g and each run of up to C of its queries, the run's C x kD
// accumulators are loaded once, take the block's keys in order (the head's kD values of each V row; the block's
// rows stay in L1 for the next head) and are stored once. Per key and head: kD / 16 loads, C broadcasts and
// C x kD / 16 FMAs. The accumulators loaded and stored per key and query instead (the code before) cost one
// layer's attention over 16 sequences of ~78 keys 68.2 us at one thread, against 56.1 us now (3.8 us for one
// sequence, 4.8 before; the 2-core EPYC, 10th percentiles of 1,000 calls): the same FMAs in the same order,
// the same bits.
template <int kD, int C>
inline void accumulate_run(const float* w, const float* vc, const int64_t* off, int64_t tn, float* acc,
                           int64_t stride, int64_t head_off) {
  constexpr int kV = kD / 16;
  __m512 a[C][kV];
  for (int q = 0; q < C; ++q)
    for (int j = 0; j < kV; ++j) a[q][j] = _mm512_loadu_ps(acc + q * kD + 16 * j);
  for (int64_t k = 0; k < tn; ++k) {
    const float* r = vc + off[k] + head_off;
    __m512 v[kV];
    for (int j = 0; j < kV; ++j) v[j] = _mm512_loadu_ps(r + 16 * j);
    for (int q = 0; q < C; ++q) {
      const __m512 wv = _mm512_set1_ps(w[q * stride + k]);
      for (int j = 0; j < kV; ++j) a[q][j] = _mm512_fmadd_ps(wv, v[j], a[q][j]);
    }
  }
  for (int q = 0; q < C; ++q)
    for (int j = 0; j < kV; ++j) _mm512_storeu_ps(acc + q * kD + 16 * j, a[q][j]);
}

template <int kD>
inline void accumulate_heads(const float* w, int64_t kv_heads, int64_t per_head, const float* vc, const int64_t* off,
                             int64_t tn, float* acc, int64_t stride) {
  constexpr int kRun = 16 / (kD / 16);   // accumulators in 16 registers: 4 queries at kD 64, 2 at 128
  for (int64_t g = 0; g < kv_heads; ++g)
    for (int64_t q0 = 0; q0 < per_head; q0 += kRun) {
      const int64_t qa = g * per_head + q0, c = std::min<int64_t>(kRun, per_head - q0);
      const float* wq = w + qa * stride;
      float* aq = acc + qa * kD;
      if (c == 1) accumulate_run<kD, 1>(wq, vc, off, tn, aq, stride, g * kD);
      else if (c == 2) accumulate_run<kD, 2>(wq, vc, off, tn, aq, stride, g * kD);
      else if constexpr (kRun >= 4) {
        if (c == 3) accumulate_run<kD, 3>(wq, vc, off, tn, aq, stride, g * kD);
        else accumulate_run<kD, 4>(wq, vc, off, tn, aq, stride, g * kD);
      }
    }
}

// out[k] = q . (base + off[k])[0 : kD] for the 16 keys k of a block: one vector of partial sums per key,
// reduced together by sum16.
template <int kD>
inline void scores16(const float* q, const float* base, const int64_t* off, float* out) {
  constexpr int kV = kD / 16;
  __m512 qv[kV], s[16];
  for (int j = 0; j < kV; ++j) qv[j] = _mm512_loadu_ps(q + 16 * j);
  for (int k = 0; k < 16; ++k) {
    const float* r = base + off[k];
    s[k] = _mm512_mul_ps(qv[0], _mm512_loadu_ps(r));
    for (int j = 1; j < kV; ++j) s[k] = _mm512_fmadd_ps(qv[j], _mm512_loadu_ps(r + 16 * j), s[k]);
  }
  _mm512_storeu_ps(out, sum16(s));
}
#endif

// Online-softmax state of the queries of one task: query qa = g * group * n + j * group + r is
// token j of head g * group + r (the group * n queries of KV head g are contiguous).
struct State {
  std::vector<float> q, acc, m, l, sc;   // [Q, D] pre-scaled, [Q, D], [Q], [Q], scores [Q, kTile]
};

template <typename T>
State start_state(const Step<T>& st, const Seq& s, int64_t d) {
  const int64_t group = st.group, n = s.n, per_head = group * n, nq = st.kv_heads * per_head;
  State z{std::vector<float>(nq * d), std::vector<float>(nq * d, 0.f), std::vector<float>(nq, kNeg),
          std::vector<float>(nq, 0.f), std::vector<float>(nq * kTile)};
  for (int64_t g = 0; g < st.kv_heads; ++g)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t r = 0; r < group; ++r) {
        const T* src = st.q + (s.row + j) * st.q_row + (g * group + r) * st.q_head;
        float* dst = z.q.data() + (g * per_head + j * group + r) * d;
        for (int64_t i = 0; i < d; ++i) dst[i] = to_float(src[i]) * st.scale;
      }
  return z;
}

// The tiles of a task in the order they are read, and their cache row offsets. Tiles go in ascending
// cache address where the slot map runs downwards (blocks handed out in descending order): the hardware
// prefetcher streams forward only, and a backward walk made it fetch the lines past each block, read just
// before, for nothing (measured: ~10% of the step at 128K). The online softmax does not depend on the order.
struct Walk {
  const Seq& s;
  int64_t lo, hi, row_stride, ntiles;
  bool backward;
  Walk(const Seq& seq, const Task& task, int64_t slot_stride)
      : s(seq), lo(task.lo), hi(task.hi), row_stride(slot_stride), ntiles((task.hi - task.lo + kTile - 1) / kTile) {
    backward = s.slots[lo * s.slot_stride] > s.slots[(hi - 1) * s.slot_stride];
  }
  int64_t start(int64_t it) const { return lo + (backward ? ntiles - 1 - it : it) * kTile; }
  // Element offsets of the rows of tile `it` into off; returns how many keys it has.
  int64_t offsets(int64_t it, int64_t* off) const {
    const int64_t t0 = start(it), tn = std::min<int64_t>(kTile, hi - t0);
    for (int64_t t = 0; t < tn; ++t) off[t] = s.slots[(t0 + t) * s.slot_stride] * row_stride;
    return tn;
  }
};

// Mask where some query of the tile [t0, t0 + tn) must not see some key: causal inside the new tokens,
// or the window's lower edge.
template <typename T>
void mask_tile(const Step<T>& st, const Seq& s, int64_t t0, int64_t tn, float* sc) {
  const int64_t n = s.n, group = st.group, per_head = group * n, last = s.start + n - 1;
  const bool causal_edge = t0 + tn - 1 > s.start;
  const bool window_edge = st.window > 0 && last - t0 >= st.window;
  if (!causal_edge && !window_edge) return;
  for (int64_t j = 0; j < n; ++j) {
    const int64_t pos = s.start + j;
    for (int64_t t = 0; t < tn; ++t) {
      const int64_t key = t0 + t;
      if (key > pos || (st.window > 0 && pos - key >= st.window))
        for (int64_t g = 0; g < st.kv_heads; ++g)
          for (int64_t r = 0; r < group; ++r) sc[(g * per_head + j * group + r) * kTile + t] = kNeg;
    }
  }
}

// Online softmax update of the tile's scores (masked ones are kNeg: exp gives 0): the running max and
// sum move on, the accumulators are rescaled, and the scores become the weights of the tile's values.
inline void softmax_tile(State& z, int64_t nq, int64_t d) {
  for (int64_t qa = 0; qa < nq; ++qa) {
    float* p = z.sc.data() + qa * kTile;
    float mt = kNeg;
    for (int t = 0; t < kTile; ++t) mt = std::max(mt, p[t]);
    if (mt <= 0.5f * kNeg) {                 // every key of the tile masked for this query
      for (int t = 0; t < kTile; ++t) p[t] = 0.f;
      continue;
    }
    const float mnew = std::max(z.m[qa], mt);
    if (mnew > z.m[qa]) {
      const float alpha = std::exp(z.m[qa] - mnew);
      z.l[qa] *= alpha;
      float* a = z.acc.data() + qa * d;
      for (int64_t i = 0; i < d; ++i) a[i] *= alpha;
      z.m[qa] = mnew;
    }
#ifdef FLINT_PA_AVX512
    // Inline exp; masked keys (kNeg) get exactly 0 without going through exp's underflow path.
    static_assert(kTile == 32, "two vectors of 16 scores");
    const __m512 m = _mm512_set1_ps(mnew), live = _mm512_set1_ps(0.5f * kNeg);
    __m512 s = _mm512_setzero_ps();
    for (int h = 0; h < 2; ++h) {
      const __m512 x = _mm512_loadu_ps(p + 16 * h);
      const __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, live, _CMP_GT_OQ),
                                           exp_nonpositive(_mm512_sub_ps(x, m)));
      _mm512_storeu_ps(p + 16 * h, e);
      s = _mm512_add_ps(s, e);
    }
    const float sum = _mm512_reduce_add_ps(s);
#else
    float sum = 0.f;
    for (int t = 0; t < kTile; ++t) {
      p[t] = std::exp(p[t] - mnew);
      sum += p[t];
    }
#endif
    z.l[qa] += sum;
  }
}

// The task's unnormalised partials (max, sum, acc[D]) per query, for the merge.
inline void write_partials(const State& z, int64_t nq, int64_t d, float* part) {
  for (int64_t qa = 0; qa < nq; ++qa) {
    float* dst = part + qa * (d + 2);
    dst[0] = z.m[qa];
    dst[1] = z.l[qa];
    std::copy(z.acc.data() + qa * d, z.acc.data() + (qa + 1) * d, dst + 2);
  }
}

// kD: head_dim known at compile time (0: read from st.d), so the inner loops unroll into registers.
template <typename T, int kD>
void run_task(const Step<T>& st, const Seq& s, const Task& task, float* part) {
  const int64_t d = kD ? kD : st.d, group = st.group, n = s.n, per_head = group * n, nq = st.kv_heads * per_head;
  State z = start_state(st, s, d);
  std::vector<float> kt(d * kTile), vbuf(d), vt(std::is_same_v<T, float> ? 0 : kTile * d);
  const Walk walk(s, task, st.slot_stride);
  const int64_t ntiles = walk.ntiles;
  int64_t off[kTile];
  for (int64_t it = 0; it < ntiles; ++it) {
    const int64_t t0 = walk.start(it), tn = walk.offsets(it, off);
    // Scores [Q, kTile] (columns past tn kNeg), per KV head.
    for (int64_t g = 0; g < st.kv_heads; ++g) {
      if (per_head <= kDotMaxQueries) {
        // Few queries per key (decode): dot products straight from the cache row.
        for (int64_t t = 0; t < tn; ++t) {
          const float* k = row_as_float(st.kc + off[t] + g * d, vbuf.data(), d);
          for (int64_t qa = g * per_head; qa < (g + 1) * per_head; ++qa) {
            const float* qv = z.q.data() + qa * d;
            float dot = 0.f;
            for (int64_t i = 0; i < d; ++i) dot += qv[i] * k[i];
            z.sc[qa * kTile + t] = dot;
          }
        }
        for (int64_t qa = g * per_head; qa < (g + 1) * per_head; ++qa)
          for (int64_t t = tn; t < kTile; ++t) z.sc[qa * kTile + t] = kNeg;
        continue;
      }
      // Many queries per key (extends): the tile's keys transposed to kt [D, kTile] (columns past
      // tn zero), so scores are broadcast-FMAs along the tile, no horizontal sums.
      for (int64_t t = 0; t < tn; ++t) {
        const T* k = st.kc + off[t] + g * d;
        for (int64_t i = 0; i < d; ++i) kt[i * kTile + t] = to_float(k[i]);
      }
      if (tn < kTile)
        for (int64_t i = 0; i < d; ++i)
          for (int64_t t = tn; t < kTile; ++t) kt[i * kTile + t] = 0.f;
      for (int64_t qa = g * per_head; qa < (g + 1) * per_head; ++qa) {
        const float* qv = z.q.data() + qa * d;
#ifdef FLINT_PA_AVX512
        if constexpr (kD > 0) {
          scores_transposed(qv, kt.data(), kD, tn, z.sc.data() + qa * kTile);
          continue;
        }
#endif
        float acc_t[kTile] = {0.f};
        for (int64_t i = 0; i < d; ++i) {
          const float x = qv[i];
          const float* col = kt.data() + i * kTile;
          for (int t = 0; t < kTile; ++t) acc_t[t] += x * col[t];
        }
        float* out = z.sc.data() + qa * kTile;
        for (int t = 0; t < kTile; ++t) out[t] = t < tn ? acc_t[t] : kNeg;
      }
    }
    mask_tile(st, s, t0, tn, z.sc.data());
    softmax_tile(z, nq, d);
    // acc += p @ V, four keys per pass over a query's accumulator (a quarter of its loads and stores).
    for (int64_t g = 0; g < st.kv_heads; ++g) {
      const float* v[kTile];
      for (int64_t t = 0; t < tn; ++t) {
        v[t] = row_as_float(st.vc + off[t] + g * d, std::is_same_v<T, float> ? nullptr : vt.data() + t * d, d);
      }
#ifdef FLINT_PA_AVX512
      if constexpr (std::is_same_v<T, float> && (kD == 64 || kD == 128)) {
        accumulate_f32<kD>(z.sc.data() + g * per_head * kTile, per_head, [&](int64_t t) { return v[t]; }, tn,
                           z.acc.data() + g * per_head * d, kTile);
        continue;
      }
#endif
      for (int64_t qa = g * per_head; qa < (g + 1) * per_head; ++qa) {
        const float* w = z.sc.data() + qa * kTile;
        float* __restrict__ a = z.acc.data() + qa * d;
        int64_t t = 0;
        for (; t + 4 <= tn; t += 4) {
          const float w0 = w[t], w1 = w[t + 1], w2 = w[t + 2], w3 = w[t + 3];
          const float *v0 = v[t], *v1 = v[t + 1], *v2 = v[t + 2], *v3 = v[t + 3];
          for (int64_t i = 0; i < d; ++i) a[i] += w0 * v0[i] + w1 * v1[i] + w2 * v2[i] + w3 * v3[i];
        }
        for (; t < tn; ++t)
          for (int64_t i = 0; i < d; ++i) a[i] += w[t] * v[t][i];
      }
    }
  }
  write_partials(z, nq, d, part);
}

// Decode and short extends over float32 rows (few queries per KV head), software-pipelined by one tile:
// each key's K row is read for this tile's scores right beside the V row of the same slot of the previous
// tile, whose weights the online softmax has fixed. Reading K and V of a slot together keeps two memory
// streams going at once; a tile of K rows, then a tile of V rows (one stream at a time) read the cache at
// about 60% of the rate (flint.bench.attention, same run). Results equal run_task's. Plain loops over the
// head dim that -O3 -march=native vectorises (AVX-512 or AVX2): explicit AVX-512 code here (16-key
// reductions, value updates through registers) measured 1.3-1.45x slower at 128K in the same run.
template <int kD>
void run_task_fused(const Step<float>& st, const Seq& s, const Task& task, float* part) {
  const int64_t per_head = st.group * s.n, nq = st.kv_heads * per_head, stride = st.slot_stride;
  State z = start_state(st, s, kD);
  std::vector<float> weights(nq * kTile, 0.f);              // the previous tile's softmax weights
  const Walk walk(s, task, stride);
  int64_t off[kTile], prev[kTile], tn_prev = 0;
  for (int64_t it = 0; it <= walk.ntiles; ++it) {
    const int64_t tn = it < walk.ntiles ? walk.offsets(it, off) : 0;
    for (int64_t t = 0; t < std::max(tn, tn_prev); ++t) {
      if (t < tn) {
        const float* row = st.kc + off[t];
        for (int64_t g = 0; g < st.kv_heads; ++g)
          for (int64_t qa = g * per_head; qa < (g + 1) * per_head; ++qa) {
            const float* q = z.q.data() + qa * kD;
            float dot = 0.f;
            for (int i = 0; i < kD; ++i) dot += q[i] * row[g * kD + i];
            z.sc[qa * kTile + t] = dot;
          }
      }
      if (t < tn_prev) {
        const float* row = st.vc + prev[t];
        for (int64_t g = 0; g < st.kv_heads; ++g) {
          for (int64_t qa = g * per_head; qa < (g + 1) * per_head; ++qa) {
            const float w = weights[qa * kTile + t];
            float* __restrict__ a = z.acc.data() + qa * kD;
            for (int i = 0; i < kD; ++i) a[i] += w * row[g * kD + i];
          }
        }
      }
    }
    if (tn == 0) break;
    for (int64_t qa = 0; qa < nq; ++qa)                      // columns past the tile's keys
      for (int64_t t = tn; t < kTile; ++t) z.sc[qa * kTile + t] = kNeg;
    mask_tile(st, s, walk.start(it), tn, z.sc.data());
    softmax_tile(z, nq, kD);                                 // after the previous tile's values went in
    std::copy(z.sc.begin(), z.sc.end(), weights.begin());
    std::copy(off, off + tn, prev);
    tn_prev = tn;
  }
  write_partials(z, nq, kD, part);
}

// A sequence whose visible keys all fit one task and at most kShortMaxKeys (decode and short extends over a
// short context, the common case of a many-stream step) skips the online softmax: the scores of all its keys
// and queries, an exact softmax per query over the keys it sees, the values weighted into registers, its rows
// of out written directly (no partials, no merge pass). Scratch is per thread and grows once.
constexpr int64_t kShortMaxKeys = 512;
constexpr int64_t kShortMaxScores = 1 << 16;   // queries x keys of one sequence (256 KiB of scores at most)
constexpr int64_t kShortValueKeys = 16;         // keys per block of the value pass

constexpr int64_t kRowQueries = 32;   // up to this many queries per sequence, K and V rows are read whole

struct ShortScratch {
  std::vector<float> q, sc, acc, inv;
  std::vector<int64_t> off;
#ifdef FLINT_PA_AVX512
  __m512 part[kRowQueries * 16];       // scores_rows' partial sums of a block
#endif
  // Room for nq queries of kd floats over `padded` keys; the vectors only grow.
  void reserve(int64_t nq, int64_t kd, int64_t padded) {
    if ((int64_t)sc.size() < 2 * nq * padded) sc.resize(2 * nq * padded);   // scores, key-major scores
    if ((int64_t)q.size() < nq * kd) q.resize(nq * kd), acc.resize(nq * kd), inv.resize(nq);
    if ((int64_t)off.size() < padded) off.resize(padded);
  }
};

template <int kD>
void run_short(const Step<float>& st, const Seq& s) {
  static thread_local ShortScratch scratch;
  const int64_t group = st.group, per_head = group * s.n, nq = st.kv_heads * per_head;
  const int64_t keys = s.hi - s.lo, padded = (keys + 15) / 16 * 16;
  ShortScratch& z = scratch;                                 // one TLS look-up, not one per use
  z.reserve(nq, kD, padded);
  float *const q = z.q.data(), *const sc = z.sc.data(), *const acc = z.acc.data(), *const inv = z.inv.data();
  int64_t* const off = z.off.data();
  for (int64_t t = 0; t < keys; ++t) off[t] = s.slots[(s.lo + t) * s.slot_stride] * st.slot_stride;
  for (int64_t t = keys; t < padded; ++t) off[t] = off[0];   // scored, never weighted
  for (int64_t qa = 0; qa < nq; ++qa) {                      // query qa in State's order, pre-scaled
    const int64_t g = qa / per_head, j = (qa % per_head) / group, r = qa % group;
    const float* src = st.q + (s.row + j) * st.q_row + (g * group + r) * st.q_head;
    for (int i = 0; i < kD; ++i) q[qa * kD + i] = src[i] * st.scale;
  }
  // All the scores first, then the softmaxes: a row is read back long after its stores, not right behind
  // them (a 64-byte load straight after the 64-byte store of the same line waited on the store). A block of
  // 16 keys at a time, each K row (all KV heads of a slot, contiguous) read whole and in slot order for all
  // queries: with the cache cold, reading the rows head by head (a row's lines in four passes) took 1.3-1.9x
  // the time of the split path, which reads each row whole.
#ifdef FLINT_PA_AVX512
  if (nq == 4 || nq == 8 || nq == 16) {
    float* keymajor = sc + nq * padded;                      // [padded][nq], then transposed into sc
    if (nq == 4) scores_rows_keymajor<kD, 4>(q, per_head, st.kc, off, padded, keymajor);
    else if (nq == 8) scores_rows_keymajor<kD, 8>(q, per_head, st.kc, off, padded, keymajor);
    else scores_rows_keymajor<kD, 16>(q, per_head, st.kc, off, padded, keymajor);
    for (int64_t qa = 0; qa < nq; ++qa)
      for (int64_t t = 0; t < padded; ++t) sc[qa * padded + t] = keymajor[t * nq + qa];
  } else
#endif
  for (int64_t t0 = 0; t0 < padded; t0 += 16) {
#ifdef FLINT_PA_AVX512
    if (nq <= kRowQueries) {
      scores_rows<kD>(q, nq, per_head, st.kc, off + t0, z.part, sc + t0, padded);
      continue;
    }
#endif
    for (int64_t qa = 0; qa < nq; ++qa) {
      const float* base = st.kc + qa / per_head * kD;
#ifdef FLINT_PA_AVX512
      scores16<kD>(q + qa * kD, base, off + t0, sc + qa * padded + t0);
#else
      for (int64_t t = t0; t < t0 + 16; ++t) {
        float dot = 0.f;
        for (int i = 0; i < kD; ++i) dot += q[qa * kD + i] * base[off[t] + i];
        sc[qa * padded + t] = dot;
      }
#endif
    }
  }
  for (int64_t qa = 0; qa < nq; ++qa) {
    // Keys [a, b) are visible to this query (causal, window); the others get weight 0.
    const int64_t pos = s.start + (qa % per_head) / group;
    const int64_t a = (st.window > 0 ? std::max(s.lo, pos - st.window + 1) : s.lo) - s.lo, b = pos + 1 - s.lo;
    float* p = sc + qa * padded;
#ifdef FLINT_PA_AVX512
    const float sum = softmax_row(p, a, b, padded);
#else
    float mx = p[a];
    for (int64_t t = a + 1; t < b; ++t) mx = std::max(mx, p[t]);
    float sum = 0.f;
    for (int64_t t = a; t < b; ++t) {
      p[t] = std::exp(p[t] - mx);
      sum += p[t];
    }
    std::fill(p, p + a, 0.f);
    std::fill(p + b, p + padded, 0.f);
#endif
    inv[qa] = 1.f / sum;
  }
  // Values in blocks of kShortValueKeys keys, each V row read whole and in order like the K rows (many
  // queries: head by head within the block, accumulators in registers).
  std::fill(acc, acc + nq * kD, 0.f);
  for (int64_t t0 = 0; t0 < keys; t0 += kShortValueKeys) {
    const int64_t tn = std::min(kShortValueKeys, keys - t0);
#ifdef FLINT_PA_AVX512
    if (nq <= kRowQueries) {
      accumulate_heads<kD>(sc + t0, st.kv_heads, per_head, st.vc, off + t0, tn, acc, padded);
      continue;
    }
#endif
    for (int64_t g = 0; g < st.kv_heads; ++g) {
      const float* base = st.vc + g * kD;
      const float* w = sc + g * per_head * padded + t0;
      float* o = acc + g * per_head * kD;
#ifdef FLINT_PA_AVX512
      accumulate_f32<kD>(w, per_head, [&](int64_t t) { return base + off[t0 + t]; }, tn, o, padded);
#else
      for (int64_t i = 0; i < per_head; ++i)
        for (int64_t t = 0; t < tn; ++t) {
          const float wt = w[i * padded + t], *v = base + off[t0 + t];
          float* __restrict__ oi = o + i * kD;
          for (int k = 0; k < kD; ++k) oi[k] += wt * v[k];
        }
#endif
    }
  }
  for (int64_t qa = 0; qa < nq; ++qa) {
    const int64_t g = qa / per_head, j = (qa % per_head) / group, r = qa % group;
    float* dst = st.out + (s.row + j) * st.out_row + (g * group + r) * st.out_head;
    for (int i = 0; i < kD; ++i) dst[i] = acc[qa * kD + i] * inv[qa];
  }
}

// Merge the partials of the tasks [first, last) of one sequence into its rows of out.
template <typename T>
void merge(const Step<T>& st, const Seq& s, const std::vector<Task>& tasks, int64_t first, int64_t last,
           const float* parts) {
  const int64_t d = st.d, group = st.group, per_head = group * s.n, nq = st.kv_heads * per_head;
  std::vector<float> o(d);
  for (int64_t qa = 0; qa < nq; ++qa) {
    float mx = kNeg;
    for (int64_t k = first; k < last; ++k) mx = std::max(mx, parts[tasks[k].part + qa * (d + 2)]);
    std::fill(o.begin(), o.end(), 0.f);
    float l = 0.f;
    for (int64_t k = first; k < last; ++k) {
      const float* p = parts + tasks[k].part + qa * (d + 2);
      if (p[1] == 0.f) continue;
      const float w = std::exp(p[0] - mx);
      l += w * p[1];
      for (int64_t i = 0; i < d; ++i) o[i] += w * p[2 + i];
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int64_t g = qa / per_head, j = (qa % per_head) / group, r = qa % group;
    T* dst = st.out + (s.row + j) * st.out_row + (g * group + r) * st.out_head;
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<T>(o[i] * inv);
  }
}

template <typename T>
void attend_typed(const Step<T>& st, std::vector<Seq>& seqs) {
  // Split every sequence's visible keys so the pool gets about kTasksPerThread tasks per thread.
  int64_t total = 0;
  for (auto& s : seqs) total += s.hi - s.lo;
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t split = std::max(kMinSplitKeys, (total + threads * kTasksPerThread - 1) / (threads * kTasksPerThread));
  std::vector<Task> tasks;
  std::vector<int64_t> first{0};            // tasks of sequence b are [first[b], first[b + 1])
  std::vector<int64_t> merged;              // the sequences whose tasks leave partials to merge
  int64_t floats = 0;
  for (int64_t b = 0; b < (int64_t)seqs.size(); ++b) {
    const Seq& s = seqs[b];
    const int64_t keys = s.hi - s.lo;
    if (std::is_same_v<T, float> && (st.d == 64 || st.d == 128) && keys <= kShortMaxKeys &&
        st.heads * s.n * keys <= kShortMaxScores) {
      tasks.push_back({b, s.lo, s.hi, -1});  // run_short: out written directly
      first.push_back((int64_t)tasks.size());
      continue;
    }
    const int64_t nsplit = std::max<int64_t>(1, (keys + split - 1) / split);
    const int64_t per = ((keys + nsplit - 1) / nsplit + kTile - 1) / kTile * kTile;
    for (int64_t lo = s.lo; lo < s.hi; lo += per) {
      tasks.push_back({b, lo, std::min(s.hi, lo + per), floats});
      floats += st.heads * s.n * (st.d + 2);
    }
    first.push_back((int64_t)tasks.size());
    merged.push_back(b);
  }
  std::vector<float> parts(floats);
  flint_pool::parallel_for(0, (int64_t)tasks.size(), 1, [&](int64_t a, int64_t z) {
    for (int64_t i = a; i < z; ++i) {
      const Seq& s = seqs[tasks[i].seq];
      if constexpr (std::is_same_v<T, float>) {
        if (tasks[i].part < 0) {
          if (st.d == 64) run_short<64>(st, s);
          else run_short<128>(st, s);
          continue;
        }
      }
      float* part = parts.data() + tasks[i].part;
      if constexpr (std::is_same_v<T, float>) {
        if (st.group * s.n <= kDotMaxQueries && (st.d == 64 || st.d == 128)) {
          if (st.d == 64) run_task_fused<64>(st, s, tasks[i], part);
          else run_task_fused<128>(st, s, tasks[i], part);
          continue;
        }
      }
      if (st.d == 64) run_task<T, 64>(st, s, tasks[i], part);
      else if (st.d == 128) run_task<T, 128>(st, s, tasks[i], part);
      else run_task<T, 0>(st, s, tasks[i], part);
    }
  });
  if (merged.empty()) return;
  flint_pool::parallel_for(0, (int64_t)merged.size(), 4, [&](int64_t a, int64_t z) {
    for (int64_t i = a; i < z; ++i) {
      const int64_t b = merged[i];
      merge(st, seqs[b], tasks, first[b], first[b + 1], parts.data());
    }
  });
}

void attend(at::Tensor out, const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
            const std::vector<at::Tensor>& slots, const at::Tensor& meta, int64_t window, double scale) {
  TORCH_CHECK(q.device().is_cpu() && kc.device().is_cpu(), "paged attention kernel: CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && out.dim() == 3 && kc.dim() == 3 && vc.dim() == 3, "q/out [T,H,D], kc/vc [S,KV,D]");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous(), "KV cache layer must be contiguous");
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1, "q and out need a contiguous last dimension");
  TORCH_CHECK(q.scalar_type() == kc.scalar_type() && out.scalar_type() == kc.scalar_type() &&
              vc.scalar_type() == kc.scalar_type(), "q, out and the cache must share a dtype");
  TORCH_CHECK(meta.scalar_type() == at::kLong && meta.is_contiguous() && meta.dim() == 2 && meta.size(1) == 3 &&
              meta.size(0) == (int64_t)slots.size(), "meta must be int64 [B, 3] (row, start, n), one per slot map");
  const int64_t heads = q.size(1), kv_heads = kc.size(1), d = q.size(2);
  TORCH_CHECK(heads % kv_heads == 0 && kc.size(2) == d, "head counts or head_dim do not match the cache");
  const int64_t* mp = meta.data_ptr<int64_t>();
  std::vector<Seq> seqs;
  seqs.reserve(slots.size());
  for (size_t b = 0; b < slots.size(); ++b) {
    const int64_t row = mp[3 * b], start = mp[3 * b + 1], n = mp[3 * b + 2];
    const at::Tensor& sl = slots[b];
    TORCH_CHECK(sl.scalar_type() == at::kLong && sl.dim() == 1 && sl.size(0) >= start + n,
                "slot map ", b, " must be int64 with at least start + n = ", start + n, " entries");
    TORCH_CHECK(n >= 1 && row >= 0 && row + n <= q.size(0), "rows of sequence ", b, " out of range");
    const int64_t lo = window > 0 ? std::max<int64_t>(0, start - window + 1) : 0;
    seqs.push_back({row, start, n, sl.data_ptr<int64_t>(), sl.stride(0), lo, start + n});
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attend", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      TORCH_CHECK(false, "paged attention kernel: float64 is not supported");
    } else {
      Step<scalar_t> st{q.data_ptr<scalar_t>(), q.stride(0), q.stride(1),
                        out.data_ptr<scalar_t>(), out.stride(0), out.stride(1),
                        kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(), kv_heads * d,
                        heads, kv_heads, heads / kv_heads, d, window, static_cast<float>(scale)};
      attend_typed(st, seqs);
    }
  });
}

// rope_table(positions [T] int64, inv_freq [D/2] float32, magnitude) -> float32 [T, 1, D/2, 2]: the rotation
// (cos, sin) * magnitude of every token's pairs, the layout of rope.Rotary.rotation (one call, not six ops).
at::Tensor rope_table(const at::Tensor& positions, const at::Tensor& inv_freq, double magnitude) {
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.dim() == 1 && positions.is_contiguous(),
              "rope_table: positions must be contiguous int64 [T]");
  TORCH_CHECK(inv_freq.scalar_type() == at::kFloat && inv_freq.dim() == 1 && inv_freq.is_contiguous(),
              "rope_table: inv_freq must be contiguous float32 [D/2]");
  const int64_t t = positions.size(0), half = inv_freq.size(0);
  auto table = at::empty({t, 1, half, 2}, inv_freq.options());
  const int64_t* pos = positions.data_ptr<int64_t>();
  const float* f = inv_freq.data_ptr<float>();
  float* o = table.data_ptr<float>();
  const float mag = static_cast<float>(magnitude);
  flint_pool::parallel_for(0, t, 256, [&](int64_t a, int64_t z) {
    for (int64_t r = a; r < z; ++r) {
      const float p = static_cast<float>(pos[r]);   // as torch: positions.to(float32) * inv_freq
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * f[i];
        o[(r * half + i) * 2] = mag * std::cos(angle);
        o[(r * half + i) * 2 + 1] = mag * std::sin(angle);
      }
    }
  });
  return table;
}

// rope_attend(out, qkv, rope, kc, vc, write_slots, heads, slots, meta, window, scale): one decoder layer's
// attention from its fused QKV output qkv [T, (H + 2 KV) * D] (float32, contiguous): rotates the q and k heads
// of every row in place by rope [T, 1, D/2, 2] (pairs adjacent, rope.interleave_rows), copies each row's k
// and v heads to cache slot write_slots[t], then runs `attend` for the sequences in slots/meta (may be none:
// long prefill chunks attend on the Python side, from the rotated qkv and the written cache). One call per
// layer where the Python path ran about fifteen ops (rotation, two index_copy_, views, the kernel).
void rope_attend(at::Tensor out, at::Tensor qkv, const at::Tensor& rope, at::Tensor kc, at::Tensor vc,
                 const at::Tensor& write_slots, int64_t heads, const std::vector<at::Tensor>& slots,
                 const at::Tensor& meta, int64_t window, double scale) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && kc.scalar_type() == at::kFloat && vc.scalar_type() == at::kFloat &&
              rope.scalar_type() == at::kFloat, "rope_attend: float32 qkv, rope and cache only");
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && kc.dim() == 3 && kc.is_contiguous() && vc.is_contiguous() &&
              vc.sizes() == kc.sizes(), "rope_attend: contiguous qkv [T, (H + 2KV) * D] and kc/vc [S, KV, D]");
  const int64_t t = qkv.size(0), kv_heads = kc.size(1), d = kc.size(2), half = d / 2, slots_n = kc.size(0);
  TORCH_CHECK(d % 2 == 0 && qkv.size(1) == (heads + 2 * kv_heads) * d, "rope_attend: qkv has ", qkv.size(1),
              " columns, (heads + 2 * kv_heads) * head_dim = ", (heads + 2 * kv_heads) * d);
  TORCH_CHECK(rope.is_contiguous() && rope.numel() == t * half * 2, "rope_attend: rope must be contiguous [T, 1, D/2, 2]");
  TORCH_CHECK(write_slots.scalar_type() == at::kLong && write_slots.dim() == 1 && write_slots.size(0) == t,
              "rope_attend: write_slots must be int64 [T]");
  float* x = qkv.data_ptr<float>();
  const float* rp = rope.data_ptr<float>();
  float* kp = kc.data_ptr<float>();
  float* vp = vc.data_ptr<float>();
  const int64_t* ws = write_slots.data_ptr<int64_t>();
  const int64_t ws_stride = write_slots.stride(0), width = (heads + 2 * kv_heads) * d, kvw = kv_heads * d;
  for (int64_t r = 0; r < t; ++r)
    TORCH_CHECK(ws[r * ws_stride] >= 0 && ws[r * ws_stride] < slots_n, "rope_attend: write slot out of range");
  flint_pool::parallel_for(0, t, 16, [&](int64_t a, int64_t z) {
    for (int64_t r = a; r < z; ++r) {
      float* row = x + r * width;
      const float* rot = rp + r * half * 2;
      for (int64_t h = 0; h < heads + kv_heads; ++h) {   // (x0 + i x1)(c + i s), as rope.apply_rotary
        float* p = row + h * d;
        for (int64_t i = 0; i < half; ++i) {
          const float x0 = p[2 * i], x1 = p[2 * i + 1], c = rot[2 * i], s = rot[2 * i + 1];
          p[2 * i] = x0 * c - x1 * s;
          p[2 * i + 1] = x0 * s + x1 * c;
        }
      }
      const int64_t slot = ws[r * ws_stride];
      std::copy(row + heads * d, row + heads * d + kvw, kp + slot * kvw);
      std::copy(row + heads * d + kvw, row + width, vp + slot * kvw);
    }
  });
  if (!slots.empty()) {
    const at::Tensor q = qkv.view({t, heads + 2 * kv_heads, d}).narrow(1, 0, heads);
    attend(out, q, kc, vc, slots, meta, window, scale);
  }
}

}  // namespace

#ifndef FLINT_PA_NO_MODULE   // skinny_f32.cpp and quant_vnni.cpp include this file for their decode_layer
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  flint_pool::attach();
  // The computing calls run without the GIL (their arguments are converted before, the result after): a step's
  // kernels are most of its time, and the event loop that streams tokens to clients runs meanwhile.
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("pool_hold_workers", &flint_pool::hold_workers, "tests: keep the kernel pool's workers out of jobs (or let them in)");
  m.def("pool_worker_chunks", &flint_pool::worker_chunks, "tests: chunks the kernel pool's workers have run");
  m.def("attend", &attend, "attention of new tokens over the paged KV cache, read in place", nogil);
  m.def("rope_table", &rope_table, "per-token rotary (cos, sin) pairs [T, 1, D/2, 2]");
  m.def("rope_attend", &rope_attend,
        "rotate q/k of a fused QKV output in place, write k/v to their cache slots, attend (one layer)", nogil);
}
#endif
