// Minimal fork-join parallelism for the CPU kernels.
//
// A small pool of our own std::threads instead of OpenMP: libgomp's pool does
// not survive fork() (DataLoader workers hang); ours is rebuilt in a forked
// child. A CRF runs hundreds of parallel loops, so spawning threads per loop
// (tens of microseconds each) would add up. Work is split
// into contiguous static chunks and every output element is written by exactly
// one thread in a fixed order, so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define SEGPOST_HAVE_MXCSR 1
#endif

namespace segpost {

int get_num_threads();
void set_num_threads(int n);

struct Range {
  int64_t begin;
  int64_t end;
};

// Splits [0, n) into at most get_num_threads() contiguous chunks of at least
// `grain` items (one chunk when n is small).
inline std::vector<Range> split_range(int64_t n, int64_t grain) {
  std::vector<Range> ranges;
  if (n <= 0) return ranges;
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(get_num_threads(), max_chunks));
  const int64_t size = (n + chunks - 1) / chunks;
  for (int64_t begin = 0; begin < n; begin += size) ranges.push_back({begin, std::min(n, begin + size)});
  return ranges;
}

// Flushes denormal floats to zero while in scope. Mean-field marginals decay
// towards 1e-38 and below, where denormal arithmetic is ~100x slower; the
// flushed values are far below anything that changes a result. Every thread
// of a parallel loop sets the same mode, so results stay thread-independent.
class FlushDenormals {
 public:
#ifdef SEGPOST_HAVE_MXCSR
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#endif
};

// Runs task(i) for i in [0, count) on the worker pool, task(0) on the calling
// thread, and returns when all are done. Each call runs under
// FlushDenormals; task must not throw. Returns false, running nothing, when
// the pool is busy (another thread's parallel loop, or a nested one) or
// cannot start its workers: the caller then falls back to threads of its own.
bool run_on_pool(std::size_t count, void (*task)(void*, std::size_t), void* context);

// Calls fn(chunk_index, begin, end) for every range, each on its own thread
// (the first on the calling thread), and returns when all are done. An
// exception thrown by fn (std::bad_alloc under an address-space limit, say)
// is caught on the thread that threw it, where escaping would terminate the
// process, and the first chunk's exception is rethrown here once every chunk
// has finished: the caller sees it as if the loop had run on one thread.
template <class F>
void run_chunks(const std::vector<Range>& ranges, const F& fn) {
  if (ranges.empty()) return;
  if (ranges.size() == 1) {
    FlushDenormals flush;
    fn(std::size_t(0), ranges[0].begin, ranges[0].end);
    return;
  }
  std::vector<std::exception_ptr> errors(ranges.size());
  auto guarded = [&fn, &ranges, &errors](std::size_t i) {
    try {
      fn(i, ranges[i].begin, ranges[i].end);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  struct Context {
    const decltype(guarded)* run;
  } context{&guarded};
  auto task = [](void* c, std::size_t i) { (*static_cast<const Context*>(c)->run)(i); };
  if (!run_on_pool(ranges.size(), task, &context)) {
    // Pool busy: threads of this call's own (tens of microseconds each).
    // A thread that cannot be started leaves its chunk to this thread.
    std::vector<std::thread> workers;
    std::vector<std::size_t> inline_chunks{0};
    for (std::size_t i = 1; i < ranges.size(); ++i) {
      try {
        workers.emplace_back([&guarded, i] {
          FlushDenormals flush;
          guarded(i);
        });
      } catch (...) {
        inline_chunks.push_back(i);
      }
    }
    {
      FlushDenormals flush;
      for (std::size_t i : inline_chunks) guarded(i);
    }
    for (auto& w : workers) w.join();
  }
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);
}

// Calls fn(begin, end) on disjoint chunks covering [0, n).
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& fn) {
  run_chunks(split_range(n, grain), [&fn](std::size_t, int64_t begin, int64_t end) { fn(begin, end); });
}

}  // namespace segpost
