// A process-wide cache of large, recently freed buffers for the CPU kernels.
//
// A CRF on a 512x512 image allocates ~100 MB of lattice tables, splat buffers
// and outputs, and frees them when it is done. Fresh memory from the OS is
// faulted in 4 KiB pages on first touch: ~25,000 page faults, costing more
// than two mean-field iterations. Blocks of at least kMinPooledBytes come from
// here instead: freed blocks are kept (up to a byte cap) and handed to the
// next request of a similar size, already faulted in; new blocks are mapped
// with transparent huge pages where the kernel allows it (512x fewer faults).
// Small blocks go to the ordinary allocator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

namespace segpost {

constexpr std::size_t kMinPooledBytes = std::size_t(1) << 20;

// A failed allocation of a large block, with its size: the bindings turn it
// (and any other std::bad_alloc) into a MemoryError that says what to do.
class AllocationFailed : public std::bad_alloc {
 public:
  explicit AllocationFailed(std::size_t bytes) : bytes_(bytes) {}
  std::size_t bytes() const noexcept { return bytes_; }
  const char* what() const noexcept override { return "segpost: a large allocation failed"; }

 private:
  std::size_t bytes_;
};

void* pool_allocate(std::size_t bytes);
void pool_deallocate(void* p, std::size_t bytes) noexcept;

// Bytes held in the cache (free blocks) and the cap beyond which the oldest
// free blocks are returned to the OS.
std::size_t pool_cached_bytes();
std::size_t pool_cache_limit();
void set_pool_cache_limit(std::size_t bytes);
// Returns every cached free block to the OS.
void pool_release_cached();

template <class T>
struct PoolAllocator {
  using value_type = T;
  PoolAllocator() noexcept = default;
  template <class U>
  PoolAllocator(const PoolAllocator<U>&) noexcept {}
  T* allocate(std::size_t n) { return static_cast<T*>(pool_allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t n) noexcept { pool_deallocate(p, n * sizeof(T)); }
  template <class U>
  bool operator==(const PoolAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const PoolAllocator<U>&) const noexcept { return false; }
};

template <class T>
using PooledVector = std::vector<T, PoolAllocator<T>>;

// A PoolAllocator whose resize() leaves new elements uninitialised (no
// zero fill): for scratch that is always written before it is read, where
// filling tens of megabytes on one thread would cost milliseconds.
template <class T>
struct UninitializedPoolAllocator : PoolAllocator<T> {
  template <class U>
  struct rebind {
    using other = UninitializedPoolAllocator<U>;
  };
  UninitializedPoolAllocator() noexcept = default;
  template <class U>
  UninitializedPoolAllocator(const UninitializedPoolAllocator<U>&) noexcept {}
  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

template <class T>
using ScratchVector = std::vector<T, UninitializedPoolAllocator<T>>;

}  // namespace segpost
