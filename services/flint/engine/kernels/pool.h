// flint_pool::parallel_for: the intra-op threads of flint's kernels, in place of at::parallel_for (OpenMP).
//
// An OpenMP region splits its range into one fixed share per thread and ends at a barrier every thread must reach.
// On a machine where another process holds one of the two cores, the share of a thread that is not running waits
// for the scheduler's next time slice, and a decode step makes about 25 regions: `flint bench engine` measured 2
// threads several times slower than 1 under a CPU burner. Here the range is split into one share per thread, each
// with its own counter: a thread claims chunks of its own share first (see `claim` for their size), then
// of the others' (the same counters), so whoever runs does the work; the caller then waits only for chunks a
// worker has already started, never for a worker that has not shown up. A worker that finds the job done leaves
// it. The same chunks give the same results: every kernel's work items are independent of which thread runs them.
//
// Why shares and not one counter for all: a thread that gets the same share of a Linear's outputs at every call
// keeps that share's weights in its own core's caches from one decode step to the next. On the 2-core Zen 5 VM
// the two vCPUs sit ~195 ns apart one way (a cache-line round trip measured 387-396 ns, the distance between
// CCDs, which do not share an L3; the VM does not show its host's topology), and 16-stream int4 decode layers
// took twice as long with their weights and KV swept out of cache as hot (loadtests/results/pool-shares-20261201.md).
//
// Between jobs a worker polls for the next one, yielding its core at every poll (so it never holds a core another
// runnable thread wants), for kSpin, then sleeps until woken. One pool serves every flint extension in the process
// (`attach` shares it through a capsule on flint.engine.kernels): each extension is its own shared object, and a
// pool each would leave two workers polling on a 2-core machine.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define FLINT_POOL_PAUSE() _mm_pause()
#else
#define FLINT_POOL_PAUSE() ((void)0)
#endif

namespace flint_pool {

using Body = void (*)(const void* ctx, int64_t a, int64_t z);
using Clock = std::chrono::steady_clock;
constexpr auto kSpin = std::chrono::microseconds(2000);   // polling after a job before sleeping

constexpr int kMaxShares = 64;   // a job's shares: one per thread, at most this many (more threads share them)

struct alignas(64) Share {         // [next, stop) of one thread's share of a job, on a cache line of its own
  std::atomic<int64_t> next{0};
  int64_t stop = 0;
};

struct Pool {
  static constexpr int kVersion = 2;   // the layout of this struct: pools of other builds are not shared
  int version = kVersion;

  alignas(64) std::atomic<uint64_t> gen{0};   // odd while a job is being written, even once it is published
  alignas(64) std::atomic<int> inside{0};      // workers between reading a job and leaving it
  std::atomic<bool> busy{false};               // a caller is running a job (a second caller runs inline)
  std::atomic<bool> held{false};               // workers stay out of jobs (tests: a worker the OS is not running)
  std::atomic<int64_t> worker_chunks{0};       // chunks the workers have run (tests)
  Body body = nullptr;
  const void* ctx = nullptr;
  int64_t grain = 1, threads = 1, shares_n = 1;
  Share shares[kMaxShares];                    // the job's range split in shares_n shares
  alignas(64) std::atomic<int64_t> left{0};    // indices not yet done
  std::mutex error_mu;
  std::exception_ptr error;

  std::mutex mu;                               // sleeping workers
  std::condition_variable cv;
  std::atomic<int> sleepers{0};
  std::vector<std::thread*> workers;           // never joined: the pool lives as long as the process

  // Claim the next chunk, from share `me` first, then from the others in turn: half of what is left of the share
  // and at most 1 / (2 * threads) of what is left of the job, at least `grain` (a worker that joins late, as a
  // descheduled one does, takes a small chunk: the caller waits for the chunks a worker has started).
  bool claim(int64_t me, int64_t& a, int64_t& z) {
    for (int64_t k = 0; k < shares_n; ++k) {
      Share& sh = shares[(me + k) % shares_n];
      int64_t cur = sh.next.load(std::memory_order_relaxed);
      while (cur < sh.stop) {
        const int64_t rest = sh.stop - cur, job = left.load(std::memory_order_relaxed) / (2 * threads);
        const int64_t chunk = std::min(rest, std::max(grain, std::min(rest / 2, job)));
        if (sh.next.compare_exchange_weak(cur, cur + chunk, std::memory_order_acq_rel)) {
          a = cur;
          z = cur + chunk;
          return true;
        }
      }
    }
    return false;
  }

  void drain(bool worker, int64_t me) {
    int64_t a, z;
    while (claim(me, a, z)) {
      if (worker) worker_chunks.fetch_add(1, std::memory_order_relaxed);
      try {
        body(ctx, a, z);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
      }
      left.fetch_sub(z - a, std::memory_order_acq_rel);
    }
  }

  // A job is published when gen turns even; while it is odd the caller is writing the job's fields, and a worker
  // that entered late (`inside`) sees gen changed and leaves without reading them.
  void work(int id) {
    uint64_t seen = gen.load();
    const auto ready = [&] {
      const uint64_t g = gen.load();
      return g != seen && (g & 1) == 0;
    };
    for (;;) {
      const auto t0 = Clock::now();
      while (!ready()) {
        for (int i = 0; i < 16 && !ready(); ++i) FLINT_POOL_PAUSE();
        sched_yield();
        if (Clock::now() - t0 > kSpin) {
          std::unique_lock<std::mutex> lock(mu);
          sleepers.fetch_add(1);
          cv.wait(lock, ready);
          sleepers.fetch_sub(1);
        }
      }
      seen = gen.load();
      if (seen & 1) continue;                    // a new job is being written already
      inside.fetch_add(1);
      if (gen.load() == seen && id < threads - 1 && !held.load()) drain(true, id % shares_n);   // workers 0 .. threads - 2
      inside.fetch_sub(1);
    }
  }

  void grow(int n) {
    while ((int)workers.size() < n) {
      const int id = (int)workers.size();
      workers.push_back(new std::thread([this, id] { work(id); }));
      workers.back()->detach();
    }
  }

  // A forked child has none of the workers: start over with no workers and no job.
  void reset_after_fork() {
    workers.clear();   // the parent's thread objects are dropped, not destroyed
    new (&mu) std::mutex();
    new (&cv) std::condition_variable();
    new (&error_mu) std::mutex();
    sleepers.store(0);
    inside.store(0);
    busy.store(false);
    if (gen.load() & 1) gen.fetch_add(1);   // forked while a job was being written: none is
  }

  void run(int64_t begin, int64_t stop, int64_t grain_, int64_t threads_, Body body_, const void* ctx_);
};

inline Pool*& slot() {
  static Pool* pool = nullptr;
  return pool;
}

inline thread_local bool t_in_job = false;

inline void Pool::run(int64_t begin, int64_t stop, int64_t grain_, int64_t threads_, Body body_, const void* ctx_) {
  grow((int)threads_ - 1);
  gen.fetch_add(1);                                      // odd: writing; no worker enters from here on
  for (int spins = 0; inside.load() != 0; ++spins) {    // workers still in the last job (or just turned away)
    FLINT_POOL_PAUSE();
    if (spins % 64 == 63) sched_yield();
  }
  body = body_;
  ctx = ctx_;
  grain = std::max<int64_t>(1, grain_);
  threads = threads_;
  shares_n = std::min<int64_t>(threads_, kMaxShares);
  for (int64_t t = 0; t < shares_n; ++t) {   // share t: [begin + t * n / shares_n, begin + (t + 1) * n / shares_n)
    shares[t].next.store(begin + (stop - begin) * t / shares_n, std::memory_order_relaxed);
    shares[t].stop = begin + (stop - begin) * (t + 1) / shares_n;
  }
  error = nullptr;
  left.store(stop - begin, std::memory_order_relaxed);
  gen.fetch_add(1);   // even: published (seq_cst, as the sleepers count and the sleeping worker's check of gen)
  if (sleepers.load() > 0) {
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
  }
  t_in_job = true;
  drain(false, (threads_ - 1) % shares_n);   // the caller's share is the last one
  for (int spins = 0; left.load(std::memory_order_acquire) != 0; ++spins) {   // chunks a worker has started
    FLINT_POOL_PAUSE();
    if (spins % 64 == 63) sched_yield();
  }
  t_in_job = false;
  std::exception_ptr failed = error;
  busy.store(false, std::memory_order_release);
  if (failed) std::rethrow_exception(failed);
}

// f(a, z) over [begin, end) in chunks of at least `grain`, on this thread and the pool's (at::get_num_threads()
// in all); inline when the range is at most one grain, one thread is asked for, or another job is running.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  Pool* pool = slot();
  const int64_t threads = at::get_num_threads();
  if (pool == nullptr || threads <= 1 || end - begin <= grain || t_in_job ||
      pool->busy.exchange(true, std::memory_order_acq_rel)) {
    f(begin, end);
    return;
  }
  pool->run(begin, end, grain, threads,
            [](const void* c, int64_t a, int64_t z) { (*static_cast<const F*>(c))(a, z); }, &f);
}

// Called from each extension's module init: the process's pool (made by the first extension to load, kept on
// flint.engine.kernels._pool), or a private one where that module is not importable or holds another layout.
inline void attach() {
  if (slot() != nullptr) return;
  static std::once_flag fork_hook;
  std::call_once(fork_hook, [] {
    pthread_atfork(nullptr, nullptr, [] {
      if (slot() != nullptr) slot()->reset_after_fork();
    });
  });
  try {
    py::module_ home = py::module_::import("flint.engine.kernels");
    if (py::hasattr(home, "_pool")) {
      Pool* shared = static_cast<Pool*>(home.attr("_pool").cast<py::capsule>().get_pointer());
      if (shared != nullptr && shared->version == Pool::kVersion) {
        slot() = shared;
        return;
      }
    }
    slot() = new Pool();
    home.attr("_pool") = py::capsule(static_cast<void*>(slot()), "flint_pool");
  } catch (const py::error_already_set&) {
    PyErr_Clear();
    if (slot() == nullptr) slot() = new Pool();
  }
}

// Test hooks, bound by the paged_attention extension: hold the workers out of jobs (as if the OS ran none of them)
// or let them in again; the chunks workers have run so far.
inline void hold_workers(bool held) {
  if (slot() != nullptr) slot()->held.store(held);
}

inline int64_t worker_chunks() { return slot() != nullptr ? slot()->worker_chunks.load() : 0; }

}  // namespace flint_pool
