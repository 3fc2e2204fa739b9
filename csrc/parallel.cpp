#include "parallel.h"

#include <atomic>
#include <condition_variable>
#include <mutex>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define SEGPOST_HAVE_ATFORK 1
#endif

namespace segpost {

namespace {
int default_threads() {
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}
std::atomic<int> g_num_threads{default_threads()};

// Spins a waiting thread makes (about 30 microseconds) before it sleeps: the
// mean field's parallel loops follow each other within microseconds, and
// waking a sleeping thread costs more than that on a virtual machine.
constexpr int kSpins = 4000;

inline void cpu_relax() {
#ifdef SEGPOST_HAVE_MXCSR
  _mm_pause();
#endif
}

// Persistent workers that wait for jobs, spinning briefly and then sleeping
// on a condition variable; every job is acknowledged by every worker. One job at a time: `busy_` is taken with
// try_lock, so a second caller (another Python thread, or a loop nested in a
// task) never waits for the pool.
class Pool {
 public:
  bool run(std::size_t count, void (*task)(void*, std::size_t), void* context) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    while (workers_.size() + 1 < count) {
      const std::size_t index = workers_.size() + 1;
      try {
        workers_.reserve(workers_.size() + 1);
        std::thread worker([this, index, seen = generation_.load()] { work(index, seen); });
        worker.detach();  // never joined: the pool lives as long as the process
      } catch (...) {
        return false;  // no memory or threads left for a worker: the caller's fallback copes
      }
      workers_.push_back(index);
    }
    task_ = task;
    context_ = context;
    count_ = count;
    pending_.store(workers_.size(), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);  // publishes the job
    { std::lock_guard<std::mutex> lock(mutex_); }        // no sleeper misses the wake-up
    wake_.notify_all();
    {
      FlushDenormals flush;
      task(context, 0);
    }
    for (int spin = 0; spin < kSpins && pending_.load(std::memory_order_acquire) != 0; ++spin) cpu_relax();
    if (pending_.load(std::memory_order_acquire) != 0) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    return true;
  }

 private:
  void work(std::size_t index, uint64_t seen) {
    for (;;) {
      for (int spin = 0; spin < kSpins && generation_.load(std::memory_order_acquire) == seen; ++spin) cpu_relax();
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      // Every worker acknowledges every job, even one with fewer tasks than
      // workers, and the next job is published only after all have: so
      // seen + 1 is the current job and its fields are stable until then.
      seen += 1;
      if (index < count_) {
        FlushDenormals flush;
        task_(context_, index);
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        { std::lock_guard<std::mutex> lock(mutex_); }
        done_.notify_one();
      }
    }
  }

  std::mutex busy_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::size_t> workers_;
  // Written by the caller before the job is published, read after.
  void (*task_)(void*, std::size_t) = nullptr;
  void* context_ = nullptr;
  std::size_t count_ = 0;
  std::atomic<std::size_t> pending_{0};
  std::atomic<uint64_t> generation_{0};
};

// Leaked on purpose (detached workers may outlive static destructors). A
// forked child has none of the parent's threads: it starts a fresh pool and
// abandons the old one, whose mutexes may have been held at the fork.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool& pool() {
  std::call_once(g_atfork_once, [] {
#ifdef SEGPOST_HAVE_ATFORK
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
#endif
  });
  Pool* p = g_pool.load();
  if (p) return *p;
  Pool* fresh = new Pool();
  if (g_pool.compare_exchange_strong(p, fresh)) return *fresh;
  delete fresh;
  return *p;
}
}  // namespace

bool run_on_pool(std::size_t count, void (*task)(void*, std::size_t), void* context) {
  return pool().run(count, task, context);
}

int get_num_threads() { return g_num_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_num_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

}  // namespace segpost
