// Minimal fork-join parallelism for the CPU kernels.
//
// We spawn plain std::threads per call instead of using OpenMP: libgomp's pool
// does not survive fork() (DataLoader workers hang), and the per-call cost
// (tens of microseconds) is negligible next to a lattice pass. Work is split
// into contiguous static chunks and every output element is written by exactly
// one thread in a fixed order, so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace segpost {

int get_num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n). Chunks hold at least
// `grain` items so that tiny loops stay on the calling thread. fn must not throw.
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& fn) {
  if (n <= 0) return;
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  const int64_t threads = std::min<int64_t>(get_num_threads(), max_chunks);
  if (threads <= 1) {
    fn(int64_t(0), n);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> workers;
  workers.reserve(threads - 1);
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * chunk;
    const int64_t end = std::min(n, begin + chunk);
    if (begin >= end) break;
    workers.emplace_back([&fn, begin, end] { fn(begin, end); });
  }
  fn(int64_t(0), std::min(n, chunk));
  for (auto& w : workers) w.join();
}

}  // namespace segpost
