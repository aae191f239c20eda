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
// No key or value is copied into a per-sequence buffer. The visible keys of every
// (sequence, KV head) are cut into splits; each split, one task of the thread pool, runs
// an online softmax over its keys, tile by tile, for all the queries sharing that KV head
// (group * n of them: each key and value row is read once per split, not once per query
// head), and leaves an unnormalised partial (max, sum, acc[D]). A final pass merges the
// partials of a (sequence, KV head) with their log-sum-exps.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int kTile = 32;                 // keys per online-softmax update
constexpr int64_t kMinSplitKeys = 512;    // a split is worth its merge only past this many keys
constexpr int kTasksPerThread = 4;        // load balance across threads of unequal speed
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
  int64_t seq, kv_head, lo, hi;
  int64_t part;             // offset of its partials: [Q, D + 2] floats
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

template <typename T>
void run_task(const Step<T>& st, const Seq& s, const Task& task, float* part) {
  const int64_t d = st.d, group = st.group, n = s.n, nq = group * n;
  const int64_t g = task.kv_head;
  // Queries of this KV head, query row qi = j * group + r (token j, head g * group + r), pre-scaled.
  std::vector<float> qf(nq * d), acc(nq * d, 0.f), m(nq, kNeg), l(nq, 0.f);
  std::vector<float> sc(nq * kTile), kbuf(d), vbuf(d);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = 0; r < group; ++r) {
      const T* src = st.q + (s.row + j) * st.q_row + (g * group + r) * st.q_head;
      float* dst = qf.data() + (j * group + r) * d;
      for (int64_t i = 0; i < d; ++i) dst[i] = to_float(src[i]) * st.scale;
    }
  const T* kbase = st.kc + g * d;
  const T* vbase = st.vc + g * d;
  const int64_t last = s.start + n - 1;       // position of the last query
  const T* krow[kTile];
  const T* vrow[kTile];

  for (int64_t t0 = task.lo; t0 < task.hi; t0 += kTile) {
    const int64_t tn = std::min<int64_t>(kTile, task.hi - t0);
    for (int64_t t = 0; t < tn; ++t) {
      const int64_t slot = s.slots[(t0 + t) * s.slot_stride];
      krow[t] = kbase + slot * st.slot_stride;
      vrow[t] = vbase + slot * st.slot_stride;
    }
    // Scores [nq, tn].
    for (int64_t t = 0; t < tn; ++t) {
      const float* k = row_as_float(krow[t], kbuf.data(), d);
      for (int64_t qi = 0; qi < nq; ++qi) {
        const float* qv = qf.data() + qi * d;
        float dot = 0.f;
        for (int64_t i = 0; i < d; ++i) dot += qv[i] * k[i];
        sc[qi * kTile + t] = dot;
      }
    }
    // Mask where some query of the tile must not see some key: causal inside the new tokens,
    // or the window's lower edge.
    const bool causal_edge = t0 + tn - 1 > s.start;
    const bool window_edge = st.window > 0 && last - t0 >= st.window;
    if (causal_edge || window_edge) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t pos = s.start + j;
        for (int64_t t = 0; t < tn; ++t) {
          const int64_t key = t0 + t;
          if (key > pos || (st.window > 0 && pos - key >= st.window))
            for (int64_t r = 0; r < group; ++r) sc[(j * group + r) * kTile + t] = kNeg;
        }
      }
    }
    // Online softmax update, then acc += p @ V.
    for (int64_t qi = 0; qi < nq; ++qi) {
      float* p = sc.data() + qi * kTile;
      float mt = kNeg;
      for (int64_t t = 0; t < tn; ++t) mt = std::max(mt, p[t]);
      if (mt <= 0.5f * kNeg) {                 // every key of the tile masked for this query
        for (int64_t t = 0; t < tn; ++t) p[t] = 0.f;
        continue;
      }
      const float mnew = std::max(m[qi], mt);
      if (mnew > m[qi]) {
        const float alpha = std::exp(m[qi] - mnew);
        l[qi] *= alpha;
        float* a = acc.data() + qi * d;
        for (int64_t i = 0; i < d; ++i) a[i] *= alpha;
        m[qi] = mnew;
      }
      float sum = 0.f;
      for (int64_t t = 0; t < tn; ++t) {
        const float e = p[t] <= 0.5f * kNeg ? 0.f : std::exp(p[t] - mnew);
        p[t] = e;
        sum += e;
      }
      l[qi] += sum;
    }
    for (int64_t t = 0; t < tn; ++t) {
      const float* v = row_as_float(vrow[t], vbuf.data(), d);
      for (int64_t qi = 0; qi < nq; ++qi) {
        const float w = sc[qi * kTile + t];
        float* a = acc.data() + qi * d;
        for (int64_t i = 0; i < d; ++i) a[i] += w * v[i];
      }
    }
  }
  for (int64_t qi = 0; qi < nq; ++qi) {
    float* dst = part + qi * (d + 2);
    dst[0] = m[qi];
    dst[1] = l[qi];
    std::copy(acc.data() + qi * d, acc.data() + (qi + 1) * d, dst + 2);
  }
}

// Merge the partials of the tasks [first, last) of one (sequence, KV head) into out.
template <typename T>
void merge(const Step<T>& st, const Seq& s, const std::vector<Task>& tasks, int64_t first, int64_t last,
           const float* parts) {
  const int64_t d = st.d, group = st.group, nq = group * s.n, g = tasks[first].kv_head;
  std::vector<float> o(d);
  for (int64_t qi = 0; qi < nq; ++qi) {
    float mx = kNeg;
    for (int64_t k = first; k < last; ++k) mx = std::max(mx, parts[tasks[k].part + qi * (d + 2)]);
    std::fill(o.begin(), o.end(), 0.f);
    float l = 0.f;
    for (int64_t k = first; k < last; ++k) {
      const float* p = parts + tasks[k].part + qi * (d + 2);
      if (p[1] == 0.f) continue;
      const float w = std::exp(p[0] - mx);
      l += w * p[1];
      for (int64_t i = 0; i < d; ++i) o[i] += w * p[2 + i];
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const int64_t j = qi / group, r = qi % group;
    T* dst = st.out + (s.row + j) * st.out_row + (g * group + r) * st.out_head;
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<T>(o[i] * inv);
  }
}

template <typename T>
void attend_typed(const Step<T>& st, std::vector<Seq>& seqs) {
  // Split every (sequence, KV head)'s visible keys so the pool gets about kTasksPerThread tasks per thread.
  int64_t total = 0;
  for (auto& s : seqs) total += (s.hi - s.lo) * st.kv_heads;
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t split = std::max(kMinSplitKeys, (total + threads * kTasksPerThread - 1) / (threads * kTasksPerThread));
  std::vector<Task> tasks;
  std::vector<int64_t> groups{0};           // tasks of (sequence, KV head) i are [groups[i], groups[i + 1])
  int64_t floats = 0;
  for (int64_t b = 0; b < (int64_t)seqs.size(); ++b) {
    const Seq& s = seqs[b];
    const int64_t keys = s.hi - s.lo;
    const int64_t nsplit = std::max<int64_t>(1, (keys + split - 1) / split);
    const int64_t per = ((keys + nsplit - 1) / nsplit + kTile - 1) / kTile * kTile;
    for (int64_t g = 0; g < st.kv_heads; ++g) {
      for (int64_t lo = s.lo; lo < s.hi; lo += per) {
        tasks.push_back({b, g, lo, std::min(s.hi, lo + per), floats});
        floats += st.group * s.n * (st.d + 2);
      }
      groups.push_back((int64_t)tasks.size());
    }
  }
  std::vector<float> parts(floats);
  at::parallel_for(0, (int64_t)tasks.size(), 1, [&](int64_t a, int64_t z) {
    for (int64_t i = a; i < z; ++i) run_task(st, seqs[tasks[i].seq], tasks[i], parts.data() + tasks[i].part);
  });
  const int64_t ngroups = (int64_t)groups.size() - 1;
  at::parallel_for(0, ngroups, 8, [&](int64_t a, int64_t z) {
    for (int64_t i = a; i < z; ++i)
      merge(st, seqs[tasks[groups[i]].seq], tasks, groups[i], groups[i + 1], parts.data());
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend, "attention of new tokens over the paged KV cache, read in place");
}
