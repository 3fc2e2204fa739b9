#include "memory_pool.h"

#include <algorithm>
#include <cstdlib>
#include <list>
#include <mutex>
#include <new>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#define SEGPOST_HAVE_MMAP 1
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define SEGPOST_HAVE_ATFORK 1
#endif

namespace segpost {

namespace {

constexpr std::size_t kHugePage = std::size_t(2) << 20;

struct Block {
  void* ptr;
  std::size_t capacity;
};

struct Pool {
  std::mutex mutex;
  std::list<Block> free_blocks;  // most recently freed first
  std::unordered_map<void*, std::size_t> capacity_of;  // every live pooled block
  std::size_t cached = 0;
  std::size_t limit = std::size_t(1) << 30;
};

// Leaked on purpose: buffers may be freed during interpreter shutdown, after
// static destructors would have run. fork() takes the mutex first and both
// processes release it after: a child forked while another thread was
// allocating (a DataLoader worker started mid-batch) would otherwise inherit
// it locked forever, and find the lists half-updated.
Pool& pool() {
  static Pool* instance = [] {
    Pool* p = new Pool();
#ifdef SEGPOST_HAVE_ATFORK
    pthread_atfork([] { pool().mutex.lock(); }, [] { pool().mutex.unlock(); }, [] { pool().mutex.unlock(); });
#endif
    return p;
  }();
  return *instance;
}

// A new block of at least `bytes`, 2 MiB-aligned and eligible for huge pages.
Block map_block(std::size_t bytes) {
  const std::size_t capacity = (bytes + kHugePage - 1) / kHugePage * kHugePage;
#ifdef SEGPOST_HAVE_MMAP
  void* raw = mmap(nullptr, capacity + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw AllocationFailed(capacity);
  // Trim to a 2 MiB-aligned range so that huge pages can back all of it.
  const auto start = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) munmap(raw, aligned - start);
  const std::size_t tail = (start + capacity + kHugePage) - (aligned + capacity);
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + capacity), tail);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  madvise(p, capacity, MADV_HUGEPAGE);
#endif
  return {p, capacity};
#else
  void* p = std::aligned_alloc(kHugePage, capacity);
  if (!p) throw AllocationFailed(capacity);
  return {p, capacity};
#endif
}

void unmap_block(const Block& block) noexcept {
#ifdef SEGPOST_HAVE_MMAP
  munmap(block.ptr, block.capacity);
#else
  std::free(block.ptr);
#endif
}

// Frees the oldest cached blocks until the cache fits `limit`; call locked.
void trim_locked(Pool& p, std::size_t limit, std::vector<Block>& to_unmap) {
  while (p.cached > limit && !p.free_blocks.empty()) {
    to_unmap.push_back(p.free_blocks.back());
    p.cached -= p.free_blocks.back().capacity;
    p.free_blocks.pop_back();
  }
}

}  // namespace

void* pool_allocate(std::size_t bytes) {
  if (bytes < kMinPooledBytes) return ::operator new(bytes);
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    // Smallest cached block that fits without wasting more than half of it.
    auto best = p.free_blocks.end();
    for (auto it = p.free_blocks.begin(); it != p.free_blocks.end(); ++it)
      if (it->capacity >= bytes && it->capacity / 2 <= bytes && (best == p.free_blocks.end() || it->capacity < best->capacity))
        best = it;
    if (best != p.free_blocks.end()) {
      const Block block = *best;
      p.free_blocks.erase(best);
      p.cached -= block.capacity;
      p.capacity_of[block.ptr] = block.capacity;
      return block.ptr;
    }
  }
  const Block block = map_block(bytes);
  std::lock_guard<std::mutex> lock(pool().mutex);
  p.capacity_of[block.ptr] = block.capacity;
  return block.ptr;
}

void pool_deallocate(void* ptr, std::size_t bytes) noexcept {
  if (!ptr) return;
  if (bytes < kMinPooledBytes) return ::operator delete(ptr);
  Pool& p = pool();
  std::vector<Block> to_unmap;
  {
    std::lock_guard<std::mutex> lock(p.mutex);
    const auto it = p.capacity_of.find(ptr);
    const Block block{ptr, it->second};
    p.capacity_of.erase(it);
    if (block.capacity <= p.limit) {
      p.free_blocks.push_front(block);
      p.cached += block.capacity;
      trim_locked(p, p.limit, to_unmap);
    } else {
      to_unmap.push_back(block);
    }
  }
  for (const Block& block : to_unmap) unmap_block(block);
}

std::size_t pool_cached_bytes() {
  std::lock_guard<std::mutex> lock(pool().mutex);
  return pool().cached;
}

std::size_t pool_cache_limit() {
  std::lock_guard<std::mutex> lock(pool().mutex);
  return pool().limit;
}

void set_pool_cache_limit(std::size_t bytes) {
  std::vector<Block> to_unmap;
  {
    std::lock_guard<std::mutex> lock(pool().mutex);
    pool().limit = bytes;
    trim_locked(pool(), bytes, to_unmap);
  }
  for (const Block& block : to_unmap) unmap_block(block);
}

void pool_release_cached() {
  std::vector<Block> to_unmap;
  {
    std::lock_guard<std::mutex> lock(pool().mutex);
    trim_locked(pool(), 0, to_unmap);
  }
  for (const Block& block : to_unmap) unmap_block(block);
}

}  // namespace segpost
