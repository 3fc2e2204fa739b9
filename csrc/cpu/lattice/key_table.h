// The lattice construction's key table: keys of lattice vertices (d integer
// coordinates; the last is implied by the zero sum) to dense vertex ids in
// order of first insertion, with the hash that makes it fast.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "../../memory_pool.h"
#include "../../permutohedral.h"
#include "../../simplex.h"

namespace segpost {
namespace lattice_detail {

// Keys are hashed in two steps: a linear form lin(key) = sum_i C_i key_i
// (mod 2^64), then mix_hash (simplex.h) for the slot. Being linear, lin()
// follows a key's moves: the d+1 vertices of a simplex and a vertex's blur
// neighbours differ by fixed steps, so their hashes are updated in O(1)
// instead of rehashing d coordinates.
//
// When the keys' bounding box (known from the features' ranges) has fewer
// than 2^62 points, C_i are mixed-radix place values: lin() is then one-to-one
// on the box, an exact packed key, and the table compares it alone, never
// reading stored keys (a second cache miss per probe). Otherwise C_i are
// fixed odd constants (splitmix64 of i + 1) and keys are compared in full.
constexpr uint64_t key_coefficient(int i) {
  uint64_t z = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) | 1u;
}

struct KeyHash {
  uint64_t c[PermutohedralLattice::kMaxDim];
  bool exact = false;  // lin() is one-to-one on every key the lattice meets
  uint64_t linear(const int32_t* key, int d) const {
    uint64_t h = 0;
    for (int i = 0; i < d; ++i) h += c[i] * static_cast<uint64_t>(static_cast<int64_t>(key[i]));
    return h;
  }
  static uint64_t slot(uint64_t linear) { return mix_hash(linear); }
};

// Open-addressing hash table from d-dimensional integer keys (the last lattice
// coordinate is implied by the zero sum) to dense ids in insertion order.
// Callers pass each key's lin() value along with it, and the key itself
// unless lin() is exact (then `key` may be null). A slot holds the id and
// the lin() value: a probe reads a stored key (a second cache miss) only
// when the lin() values agree, and with exact keys never.
class KeyTable {
 public:
  KeyTable(int key_size, bool exact, int64_t expected) : key_size_(key_size), exact_(exact) {
    std::size_t capacity = 256;
    while (capacity < static_cast<std::size_t>(expected) * 2) capacity <<= 1;
    slots_.assign(capacity, Slot{0, -1});
    mask_ = capacity - 1;
  }

  int64_t size() const { return size_; }

  int32_t insert(const int32_t* key, uint64_t linear) {
    if (static_cast<std::size_t>(size_ + 1) * 2 > slots_.size()) grow();
    for (std::size_t slot = KeyHash::slot(linear) & mask_;; slot = (slot + 1) & mask_) {
      Slot& entry = slots_[slot];
      if (entry.id < 0) {
        if (size_ >= std::numeric_limits<int32_t>::max() - 1)
          throw std::length_error("permutohedral lattice: too many vertices for int32 indices");
        entry = Slot{linear, static_cast<int32_t>(size_)};
        if (!exact_) keys_.insert(keys_.end(), key, key + key_size_);
        linears_.push_back(linear);
        return static_cast<int32_t>(size_++);
      }
      if (entry.linear == linear && (exact_ || equal(entry.id, key))) return entry.id;
    }
  }

  // Prefetches the slot where find(key, linear) starts.
  void prefetch(uint64_t linear) const { __builtin_prefetch(slots_.data() + (KeyHash::slot(linear) & mask_)); }

  int32_t find(const int32_t* key, uint64_t linear) const {
    for (std::size_t slot = KeyHash::slot(linear) & mask_;; slot = (slot + 1) & mask_) {
      const Slot& entry = slots_[slot];
      if (entry.id < 0) return -1;
      if (entry.linear == linear && (exact_ || equal(entry.id, key))) return entry.id;
    }
  }

  // Stored key of an id: only when lin() is not exact (else null).
  const int32_t* key(int64_t id) const { return exact_ ? nullptr : keys_.data() + id * key_size_; }
  uint64_t linear(int64_t id) const { return linears_[id]; }

  // Makes room for `count` keys in all, so that inserting them never regrows.
  void reserve(int64_t count) {
    while (static_cast<std::size_t>(count) * 2 > slots_.size()) grow();
  }

 private:
  struct Slot {
    uint64_t linear;
    int32_t id;  // -1: empty
  };

  bool equal(int32_t id, const int32_t* key) const {
    const int32_t* stored = keys_.data() + static_cast<int64_t>(id) * key_size_;
    for (int i = 0; i < key_size_; ++i)
      if (stored[i] != key[i]) return false;
    return true;
  }

  void grow() {
    PooledVector<Slot> bigger(slots_.size() * 2, Slot{0, -1});
    const std::size_t mask = bigger.size() - 1;
    for (int64_t id = 0; id < size_; ++id) {
      std::size_t slot = KeyHash::slot(linears_[id]) & mask;
      while (bigger[slot].id >= 0) slot = (slot + 1) & mask;
      bigger[slot] = Slot{linears_[id], static_cast<int32_t>(id)};
    }
    slots_.swap(bigger);
    mask_ = mask;
  }

  int key_size_;
  bool exact_;
  int64_t size_ = 0;
  std::size_t mask_ = 0;
  PooledVector<Slot> slots_;
  PooledVector<int32_t> keys_;
  PooledVector<uint64_t> linears_;
};

// The key hash for a lattice whose d features, shifted to `origin` and
// scaled, span [0, extent_i]: exact (mixed-radix) when the keys' bounding box
// allows. Elevated coordinate j >= 1 is sum_{i >= j} x_i - j x_{j-1}, and
// coordinate 0 is sum_i x_i; vertex keys lie within 2(d+1) of it and blur
// neighbours d further, inside the margin below.
inline KeyHash key_hash(const std::vector<double>& extent, int d, double* key_low, double* key_high) {
  KeyHash hash;
  for (int i = 0; i < d; ++i) hash.c[i] = key_coefficient(i);
  const double margin = 4.0 * (d + 1) + 2.0;
  constexpr uint64_t kLimit = uint64_t{1} << 62;
  uint64_t place = 1;  // product of the ranges so far, below kLimit
  uint64_t radix[PermutohedralLattice::kMaxDim];
  for (int j = 0; j < d; ++j) {
    double lo = 0.0, hi = 0.0;
    for (int i = j; i < d; ++i) hi += extent[i];
    if (j > 0) lo = -j * extent[j - 1];
    key_low[j] = std::floor(lo - margin);
    key_high[j] = std::ceil(hi + margin);
    const double range = key_high[j] - key_low[j] + 1.0;
    if (!(range < 1.0e18) || static_cast<uint64_t>(range) > kLimit / place) return hash;
    radix[j] = place;
    place *= static_cast<uint64_t>(range);
  }
  for (int j = 0; j < d; ++j) hash.c[j] = radix[j];
  hash.exact = true;
  return hash;
}

}  // namespace lattice_detail
}  // namespace segpost
