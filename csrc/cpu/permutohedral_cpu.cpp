// CPU construction and filtering of the permutohedral lattice.
// Construction follows the steps of Adams et al. 2010 (the permutohedral lattice paper):
// scale, elevate onto the hyperplane x . 1 = 0 in R^{d+1}, find the enclosing
// simplex from the nearest zero-coloured point and the rank of the remainders,
// compute barycentric weights, hash the d+1 vertices.
#include "../permutohedral.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "../parallel.h"
#include "../simplex.h"
#include "../tiles.h"
#include "simd.h"


namespace segpost {

namespace {

// Grain sizes: below these a loop stays on the calling thread.
constexpr int64_t kPointGrain = 4096;
constexpr int64_t kVertexGrain = 1024;
// Splat partitions: points are cut into contiguous partitions of at least
// kPartitionPoints points, at most kMaxPartitions of them: a function of the
// number of points only, never of the thread count. Each partition's update
// runs on one thread, so partitions are small enough for images from 64x64
// up to use every thread (at 16384 points, a 128x128 image ran on one).
constexpr int64_t kMaxPartitions = 4;
constexpr int64_t kPartitionPoints = 2048;
// Points of the sweep after which a vertex's rows count as out of cache
// (corner_fresh): a 64x64 tile's DeepLab appearance rows fill about a
// megabyte, one core's L2.
constexpr int64_t kFreshWindow = 2048;
// Channels are processed in blocks padded to a multiple of 8 floats (one AVX
// register) that fit on the stack.
constexpr int64_t kMaxStackChannels = 64;

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
KeyHash key_hash(const std::vector<double>& extent, int d, double* key_low, double* key_high) {
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

// ---------------------------------------------------------------- construction

// Enclosing simplex of one point (the arithmetic lives in simplex.h, shared
// with the CUDA kernels); compiled per instruction set. D > 0 fixes the
// dimension at compile time, so that the loops (the ranking's d^2 / 2
// comparisons above all) unroll: the images' smoothness (2) and appearance
// (5) kernels.
template <int D>
SEGPOST_INLINE bool find_simplex_fixed(const double* position, int d, int32_t* rem0, int32_t* rank, double* bary) {
  const int dim = D > 0 ? D : d;
  double elevated[PermutohedralLattice::kMaxDim + 1];
  elevate(position, dim, elevated);
  return enclosing_simplex(elevated, dim, rem0, rank, bary);
}

SEGPOST_MULTIVERSION
bool find_simplex(const double* position, int d, int32_t* rem0, int32_t* rank, double* bary) {
  switch (d) {
    case 2: return find_simplex_fixed<2>(position, d, rem0, rank, bary);
    case 5: return find_simplex_fixed<5>(position, d, rem0, rank, bary);
    default: return find_simplex_fixed<0>(position, d, rem0, rank, bary);
  }
}

// ---------------------------------------------------------------- filter kernels
// Vertex rows are padded to a multiple of 8 floats and processed as blocks.
using simd::Block;
using simd::load;
using simd::store;

// Scatter points [begin, end) into `buffer` (rows of `blocks` * 8 floats):
// each values row is read once, sequentially.
SEGPOST_MULTIVERSION
void splat_points(int64_t begin, int64_t end, int d1, int64_t c, int64_t blocks, const int32_t* corner_vertex,
                  const float* corner_weight, const float* values, const float* pre_scale, float* buffer) {
  Block row[kMaxStackChannels / 8];
  const int64_t full = c / 8;
  const int64_t stride = blocks * 8;
  for (int64_t p = begin; p < end; ++p) {
    const float* src = values + p * c;
    for (int64_t b = 0; b < full; ++b) row[b] = load(src + 8 * b);
    if (full < blocks) {
      float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = 8 * full; k < c; ++k) tail[k - 8 * full] = src[k];
      row[full] = load(tail);
    }
    const float scale = pre_scale ? pre_scale[p] : 1.0f;
    for (int r = 0; r < d1; ++r) {
      const float w = scale * corner_weight[p * d1 + r];
      float* dst = buffer + static_cast<int64_t>(corner_vertex[p * d1 + r]) * stride;
      for (int64_t b = 0; b < blocks; ++b) store(dst + 8 * b, load(dst + 8 * b) + w * row[b]);
    }
  }
}

// out[rows[i]] += part[i] for the local rows [begin, end) of one partition.
SEGPOST_MULTIVERSION
void add_partition_rows(int64_t begin, int64_t end, int64_t width, const int32_t* rows, const float* part,
                        float* out) {
  if (width % 8 != 0) {  // narrow rows (1, 2 or 4 floats)
    for (int64_t i = begin; i < end; ++i)
      for (int64_t k = 0; k < width; ++k) out[static_cast<int64_t>(rows[i]) * width + k] += part[i * width + k];
    return;
  }
  for (int64_t i = begin; i < end; ++i) {
    float* dst = out + static_cast<int64_t>(rows[i]) * width;
    const float* src = part + i * width;
    for (int64_t b = 0; b < width; b += 8) store(dst + b, load(dst + b) + load(src + b));
  }
}

// First entry at or after i of a chain array (n entries): a chain's start.
int64_t chain_start(const int32_t* chain, int64_t i, int64_t n) {
  while (i < n && chain[i] > 0) ++i;
  return i;
}

// In-place [1/2, 1, 1/2] blur of the chains in entries [begin, end) of one
// axis's chain array (begin and end are chain starts): each vertex row
// becomes self + (lower + upper) / 2 of the old values, missing neighbours
// zero. The old values of the previous and current vertex ride along in
// registers, so every row is read once and written once. Rows wider than
// kGroup blocks (the mean field's, with many labels) go through kGroup
// blocks at a time. blur_group blurs one group of W blocks: W > 0 is a
// compile-time constant, so that the rows riding along stay in registers
// (0: `width` blocks, through memory).
template <int W>
SEGPOST_INLINE void blur_group(int64_t begin, int64_t end, int64_t width, int64_t stride, const int32_t* chain,
                               float* column) {
  constexpr int64_t kAhead = 12;  // rows prefetched ahead: chain order is random in memory
  constexpr int kSize = W > 0 ? W : 8;
  const int64_t n = W > 0 ? W : width;
  Block lower[kSize], self[kSize];
  for (int64_t i = begin; i < end;) {
    float* row = column + static_cast<int64_t>(-chain[i]) * stride;
    for (int64_t b = 0; b < n; ++b) lower[b] = Block{}, self[b] = load(row + 8 * b);
    for (;;) {
      const bool has_upper = ++i < end && chain[i] > 0;
      if (!has_upper) {
        for (int64_t b = 0; b < n; ++b) store(row + 8 * b, self[b] + 0.5f * (lower[b] + Block{}));
        break;
      }
      float* upper_row = column + static_cast<int64_t>(chain[i]) * stride;
      if (i + kAhead < end) {
        const float* ahead = column + static_cast<int64_t>(std::abs(chain[i + kAhead])) * stride;
        for (int64_t k = 0; k < 8 * n; k += 16) __builtin_prefetch(ahead + k, 1);
        __builtin_prefetch(ahead + 8 * n - 1, 1);
      }
      for (int64_t b = 0; b < n; ++b) {
        const Block upper = load(upper_row + 8 * b);
        store(row + 8 * b, self[b] + 0.5f * (lower[b] + upper));
        lower[b] = self[b];
        self[b] = upper;
      }
      row = upper_row;
    }
  }
}

SEGPOST_MULTIVERSION
void blur_chains(int64_t begin, int64_t end, int64_t blocks, const int32_t* chain, float* buffer) {
  constexpr int64_t kGroup = kMaxStackChannels / 8;
  const int64_t stride = blocks * 8;
  for (int64_t first = 0; first < blocks; first += kGroup) {
    const int64_t width = std::min(kGroup, blocks - first);
    float* column = buffer + 8 * first;
    switch (width) {
      case 1: blur_group<1>(begin, end, width, stride, chain, column); break;
      case 2: blur_group<2>(begin, end, width, stride, chain, column); break;
      case 3: blur_group<3>(begin, end, width, stride, chain, column); break;
      case 4: blur_group<4>(begin, end, width, stride, chain, column); break;
      default: blur_group<0>(begin, end, width, stride, chain, column); break;
    }
  }
}

// blur_group for narrow rows of W floats (1, 2 or 4): the same arithmetic
// per float, the riding values in scalars.
template <int W>
SEGPOST_INLINE void blur_narrow_group(int64_t begin, int64_t end, const int32_t* chain, float* buffer) {
  float lower[W], self[W];
  for (int64_t i = begin; i < end;) {
    float* row = buffer + static_cast<int64_t>(-chain[i]) * W;
    for (int k = 0; k < W; ++k) lower[k] = 0.0f, self[k] = row[k];
    for (;;) {
      const bool has_upper = ++i < end && chain[i] > 0;
      if (!has_upper) {
        for (int k = 0; k < W; ++k) row[k] = self[k] + 0.5f * (lower[k] + 0.0f);
        break;
      }
      float* upper_row = buffer + static_cast<int64_t>(chain[i]) * W;
      for (int k = 0; k < W; ++k) {
        const float upper = upper_row[k];
        row[k] = self[k] + 0.5f * (lower[k] + upper);
        lower[k] = self[k];
        self[k] = upper;
      }
      row = upper_row;
    }
  }
}

SEGPOST_MULTIVERSION
void blur_narrow_chains(int64_t begin, int64_t end, int width, const int32_t* chain, float* buffer) {
  switch (width) {
    case 1: return blur_narrow_group<1>(begin, end, chain, buffer);
    case 2: return blur_narrow_group<2>(begin, end, chain, buffer);
    default: return blur_narrow_group<4>(begin, end, chain, buffer);
  }
}

SEGPOST_MULTIVERSION
void slice_points(int64_t begin, int64_t end, int d1, int64_t c, int64_t blocks, float alpha,
                  const int32_t* corner_vertex, const float* corner_weight, const float* buffer,
                  const float* post_scale, float* out) {
  Block acc[kMaxStackChannels / 8];
  const int64_t full = c / 8;
  const int64_t stride = blocks * 8;
  for (int64_t p = begin; p < end; ++p) {
    for (int64_t b = 0; b < blocks; ++b) acc[b] = Block{};
    const float scale = post_scale ? alpha * post_scale[p] : alpha;
    for (int r = 0; r < d1; ++r) {
      const float w = scale * corner_weight[p * d1 + r];
      const float* src = buffer + static_cast<int64_t>(corner_vertex[p * d1 + r]) * stride;
      for (int64_t b = 0; b < blocks; ++b) acc[b] += w * load(src + 8 * b);
    }
    float* dst = out + p * c;
    for (int64_t b = 0; b < full; ++b) store(dst + 8 * b, acc[b]);
    if (full < blocks) {
      float tail[8];
      store(tail, acc[full]);
      for (int64_t k = 8 * full; k < c; ++k) dst[k] = tail[k - 8 * full];
    }
  }
}

}  // namespace

PermutohedralLattice::PermutohedralLattice(const double* features, int64_t num_points, int dim, int64_t row_length,
                                           const std::function<void()>& between_phases)
    : num_points_(num_points), dim_(dim) {
  build(features, row_length, between_phases);
}

PermutohedralLattice::PermutohedralLattice(const float* features, int64_t num_points, int dim, int64_t row_length,
                                           const std::function<void()>& between_phases)
    : num_points_(num_points), dim_(dim) {
  build(features, row_length, between_phases);
}

template <typename T>
void PermutohedralLattice::build(const T* features, int64_t row_length,
                                 const std::function<void()>& between_phases) {
  const auto phase_done = [&] {
    if (between_phases) between_phases();
  };
  const int64_t num_points = num_points_;
  const int d = dim_;
  if (num_points < 1) throw std::invalid_argument("permutohedral lattice: need at least one point");
  if (d < 1 || d > kMaxDim)
    throw std::invalid_argument("permutohedral lattice: dim must be in [1, " + std::to_string(kMaxDim) +
                                "], got " + std::to_string(d));
  const int d1 = d + 1;
  if (num_points > (std::numeric_limits<int32_t>::max() - 1) / d1)
    throw std::length_error("permutohedral lattice: num_points * (dim + 1) must fit in int32");

  if (row_length < 0 || (row_length > 0 && num_points % row_length != 0))
    throw std::invalid_argument("permutohedral lattice: row_length must divide the number of points (0: no grid)");
  // The partition count depends on the number of points only.
  const int64_t partitions = std::max<int64_t>(1, std::min(kMaxPartitions, num_points / kPartitionPoints));
  partition_vertices_.assign(partitions, {});  // partition_begin/end need the count

  // Visiting order: the mean field's (tiles within each partition) on grids.
  // Vertex ids follow first occurrence in this order.
  PooledVector<int32_t> order;
  if (row_length > kTileColumns) {
    order.resize(num_points);
    int32_t* next = order.data();
    for (int64_t b = 0; b < partitions; ++b)
      for_tiles(partition_begin(b), partition_end(b), row_length, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) *next++ = static_cast<int32_t>(p);
      });
  }
  const int32_t* visit = order.empty() ? nullptr : order.data();

  const std::vector<Range> chunks = split_range(num_points, kPointGrain);
  const std::size_t num_chunks = chunks.size();

  // Per-axis minimum and maximum (exact whatever the chunking): the minimum
  // brings the features near zero, the span bounds the keys (key_hash).
  std::vector<double> origin(static_cast<std::size_t>(d) * num_chunks), top(origin.size());
  run_chunks(chunks, [&](std::size_t chunk, int64_t begin, int64_t end) {
    // In local arrays: the chunks' results share a cache line.
    T lo[kMaxDim], hi[kMaxDim];
    for (int i = 0; i < d; ++i) lo[i] = hi[i] = features[begin * d + i];
    for (int64_t p = begin; p < end; ++p)
      for (int i = 0; i < d; ++i) {
        lo[i] = std::min(lo[i], features[p * d + i]);
        hi[i] = std::max(hi[i], features[p * d + i]);
      }
    for (int i = 0; i < d; ++i) origin[chunk * d + i] = static_cast<double>(lo[i]), top[chunk * d + i] = hi[i];
  });
  for (std::size_t chunk = 1; chunk < num_chunks; ++chunk)
    for (int i = 0; i < d; ++i) {
      origin[i] = std::min(origin[i], origin[chunk * d + i]);
      top[i] = std::max(top[i], top[chunk * d + i]);
    }

  // Scaling that makes the lattice blur a unit-variance Gaussian.
  std::vector<double> scale(d);
  const double inv_std_dev = std::sqrt(2.0 / 3.0) * d1;
  for (int i = 0; i < d; ++i) scale[i] = inv_std_dev / std::sqrt((i + 1.0) * (i + 2.0));
  // Translating feature i by a multiple of (d+1) / scale[i] moves every
  // elevated point by a lattice vector, (d+1) * (1, .., 1, -(i+1), 0, .., 0):
  // the lattice maps onto itself and the filter is unchanged. Shifting the
  // origin by such periods keeps keys small (no int32 overflow, full double
  // precision for far-off features) while giving exactly the reference
  // implementation's lattice alignment.
  for (int i = 0; i < d; ++i) {
    const double period = d1 / scale[i];
    origin[i] = std::floor(origin[i] / period) * period;
  }

  const std::size_t corners = static_cast<std::size_t>(num_points) * d1;
  corner_weight_.resize(corners);
  corner_vertex_.resize(corners);

  std::atomic<bool> overflow{false};
  // A vertex's upper neighbour along an axis is the key + 1, less d+1 on the
  // axis's own coordinate (none for the implied last one): lin() moves by a
  // constant, upper_step[axis]. From simplex vertex r - 1 to vertex r is
  // such a step, along the axis of the coordinate ranked d + 1 - r.
  std::vector<double> extent(d);
  for (int i = 0; i < d; ++i) extent[i] = (top[i] - origin[i]) * scale[i];
  double key_low[kMaxDim], key_high[kMaxDim];
  const KeyHash hash = key_hash(extent, d, key_low, key_high);
  exact_keys_ = hash.exact;
  uint64_t coefficient_sum = 0;  // lin() of (1, .., 1)
  for (int i = 0; i < d; ++i) coefficient_sum += hash.c[i];
  uint64_t upper_step[kMaxDim + 1];
  for (int axis = 0; axis <= d; ++axis) upper_step[axis] = coefficient_sum - (axis < d ? d1 * hash.c[axis] : 0);
  // Exact keys rely on the bounds: a simplex outside them is a bug, not a result.
  std::atomic<bool> outside{false};

  // Pass 1, parallel over point chunks (at most one per thread): simplex,
  // weights, and vertex keys hashed into a table per chunk (local ids in
  // corner_vertex_ for now). Pipelined: a point's simplex is found and the
  // table slots of its vertices prefetched kLag points before they are
  // inserted, so that the slots' cache misses overlap with other work.
  std::vector<std::unique_ptr<KeyTable>> tables(num_chunks);
  phase_done();
  run_chunks(chunks, [&](std::size_t chunk, int64_t begin, int64_t end) {
    tables[chunk] = std::make_unique<KeyTable>(d, hash.exact, (end - begin) * d1 / 4 + 64);
    KeyTable& table = *tables[chunk];
    constexpr int64_t kLag = 4;
    enum Kind { kSkipped, kSameAsPrevious, kHashed };
    struct Pending {
      int64_t point;
      Kind kind;
      uint64_t linear[kMaxDim + 1];
      int32_t rem0[kMaxDim + 1], rank[kMaxDim + 1];  // the keys, when lin() is not exact
    };
    Pending pending[kLag];
    double position[kMaxDim];
    double bary[kMaxDim + 2];
    int32_t rem0[kMaxDim + 1], rank[kMaxDim + 1];
    int32_t previous_rem0[kMaxDim + 1], previous_rank[kMaxDim + 1];
    bool have_previous = false;

    // Simplex and weights of point i; its vertices' lin() values, slots prefetched.
    auto locate = [&](int64_t i, Pending& e) {
      const int64_t p = visit ? visit[i] : i;
      e.point = p;
      const T* f = features + p * d;
      for (int k = 0; k < d; ++k) position[k] = (static_cast<double>(f[k]) - origin[k]) * scale[k];
      float* weight = corner_weight_.data() + p * d1;
      if (!find_simplex(position, d, rem0, rank, bary)) {  // reported after the loop
        overflow.store(true);
        int32_t* vertex = corner_vertex_.data() + p * d1;
        for (int r = 0; r <= d; ++r) weight[r] = 0.0f, vertex[r] = 0;
        have_previous = false;
        e.kind = kSkipped;
        return;
      }
      for (int r = 0; r <= d; ++r) weight[r] = static_cast<float>(bary[r]);
      // Neighbouring points (pixels in raster order) often share a simplex:
      // then the vertex ids are the previous point's, with no hashing.
      bool same = have_previous;
      for (int k = 0; same && k <= d; ++k) same = rem0[k] == previous_rem0[k] && rank[k] == previous_rank[k];
      if (same) {
        e.kind = kSameAsPrevious;
        return;
      }
      e.kind = kHashed;
      // Vertex r's key is rem0 + r, less d+1 on the coordinates ranked
      // above d - r: each vertex is the previous one's upper neighbour.
      int32_t by_rank[kMaxDim + 1];
      for (int k = 0; k <= d; ++k) by_rank[rank[k]] = k;
      uint64_t linear = hash.linear(rem0, d);
      for (int r = 0; r <= d; ++r) {
        if (r > 0) linear += upper_step[by_rank[d + 1 - r]];
        e.linear[r] = linear;
        table.prefetch(linear);
      }
      if (hash.exact) {
        bool inside = true;  // vertices within d+1 of rem0, their neighbours 2(d+1)
        for (int k = 0; k < d; ++k) inside &= rem0[k] - 2 * d1 >= key_low[k] && rem0[k] + 2 * d1 <= key_high[k];
        if (!inside) outside.store(true);
      } else {
        for (int k = 0; k <= d; ++k) e.rem0[k] = rem0[k], e.rank[k] = rank[k];
      }
      for (int k = 0; k <= d; ++k) previous_rem0[k] = rem0[k], previous_rank[k] = rank[k];
      have_previous = true;
    };

    // Vertex ids of a located point, in point order.
    const int32_t* previous_vertex = nullptr;
    auto insert = [&](const Pending& e) {
      int32_t* vertex = corner_vertex_.data() + e.point * d1;
      if (e.kind == kSkipped) return;
      if (e.kind == kSameAsPrevious) {
        for (int r = 0; r <= d; ++r) vertex[r] = previous_vertex[r];
      } else if (hash.exact) {
        for (int r = 0; r <= d; ++r) vertex[r] = table.insert(nullptr, e.linear[r]);
      } else {
        int32_t key[kMaxDim];
        for (int r = 0; r <= d; ++r) {
          vertex_key(e.rem0, e.rank, d, r, key);
          vertex[r] = table.insert(key, e.linear[r]);
        }
      }
      previous_vertex = vertex;
    };

    for (int64_t i = begin; i < end + kLag; ++i) {
      if (i - kLag >= begin) insert(pending[(i - kLag) % kLag]);
      if (i < end) locate(i, pending[i % kLag]);
    }
  });
  if (overflow.load())
    throw std::overflow_error("permutohedral lattice: features span too large a range for int32 lattice keys");
  if (outside.load()) throw std::logic_error("permutohedral lattice: a vertex key fell outside its bounds (a bug)");

  // Merge the chunk tables into the first in chunk order. Each chunk lists
  // its keys in order of first occurrence, so the global ids equal those of
  // one sequential pass in point order: the numbering does not depend on the
  // thread count. The first chunk's ids are already global.
  KeyTable& table = *tables[0];
  int64_t listed = 0;
  for (const auto& chunk_table : tables) listed += chunk_table->size();
  table.reserve(listed);  // an upper bound on the vertex count: no regrowth while merging
  std::vector<PooledVector<int32_t>> to_global(num_chunks);
  for (std::size_t chunk = 1; chunk < num_chunks; ++chunk) {
    const KeyTable& local = *tables[chunk];
    to_global[chunk].resize(local.size());
    for (int64_t id = 0; id < local.size(); ++id)
      to_global[chunk][id] = table.insert(local.key(id), local.linear(id)) + 1;
    tables[chunk].reset();
  }
  phase_done();
  // Vertex rows are numbered from 1 (global id + 1).
  run_chunks(chunks, [&](std::size_t chunk, int64_t begin, int64_t end) {
    const int32_t* map = to_global[chunk].data();
    for (int64_t i = begin; i < end; ++i) {
      int32_t* vertex = corner_vertex_.data() + (visit ? visit[i] : i) * d1;
      if (chunk == 0)
        for (int r = 0; r <= d; ++r) vertex[r] += 1;
      else
        for (int r = 0; r <= d; ++r) vertex[r] = map[vertex[r]];
    }
  });
  num_vertices_ = table.size();
  const int64_t m = num_vertices_;

  // Blur neighbours: read-only lookups, parallel over vertices. Only the
  // lower neighbour is looked up: u = lo(v) along an axis exactly when
  // v = hi(u) (a lattice translation), so v is also recorded as u's upper
  // neighbour. The translation is one-to-one, so no two vertices write the
  // same slot.
  // Per axis, each vertex's lower and upper neighbour (id + 1, 0 for none),
  // in separate arrays: the chain walk below reads `upper` in random order,
  // and alone it is half the bytes to keep in cache.
  PooledVector<int32_t> lower(static_cast<std::size_t>(d1) * m, 0), upper(lower.size(), 0);
  phase_done();
  parallel_for(m, kVertexGrain, [&](int64_t begin, int64_t end) {
    // The lookups ahead are known: their slots (a cache miss each, the
    // table being larger than the cache) are prefetched kAhead vertices early.
    constexpr int64_t kAhead = 8;
    int32_t lo[kMaxDim], hi[kMaxDim];
    for (int64_t v = begin; v < end; ++v) {
      if (v + kAhead < end)
        for (int axis = 0; axis <= d; ++axis) table.prefetch(table.linear(v + kAhead) - upper_step[axis]);
      const int32_t* key = table.key(v);  // null with exact keys: lin() alone
      for (int axis = 0; axis <= d; ++axis) {
        if (key) neighbour_keys(key, d, axis, lo, hi);
        const std::size_t offset = static_cast<std::size_t>(axis) * m;
        const int32_t u = table.find(lo, table.linear(v) - upper_step[axis]);
        lower[offset + v] = u + 1;
        if (u >= 0) upper[offset + u] = static_cast<int32_t>(v + 1);
      }
    }
  });

  // Blur chains: per axis, from each vertex without a lower neighbour, up
  // through the upper neighbours. Every vertex lies on exactly one chain
  // (lattice translations are one-to-one and never cycle); chains follow
  // the order of their first vertices, a function of the lattice alone.
  blur_chain_.resize(static_cast<std::size_t>(d1) * m);
  parallel_for(d1, 1, [&](int64_t first, int64_t last) {
    for (int64_t axis = first; axis < last; ++axis) {
      const int32_t* axis_lower = lower.data() + static_cast<std::size_t>(axis) * m;
      const int32_t* axis_upper = upper.data() + static_cast<std::size_t>(axis) * m;
      int32_t* chain = blur_chain_.data() + static_cast<std::size_t>(axis) * m;
      for (int64_t v = 0; v < m; ++v) {
        if (axis_lower[v] != 0) continue;
        *chain++ = -static_cast<int32_t>(v + 1);
        for (int32_t u = axis_upper[v]; u != 0; u = axis_upper[u - 1]) *chain++ = u;
      }
    }
  });

  // Splat partitions. Vertex ids follow first occurrence in the visiting
  // order, which runs through the partitions in turn, so the vertices a
  // partition reaches first are the rows [first_row[b], first_row[b + 1]):
  // it owns them and scatters into them directly. Each vertex it shares with
  // an earlier partition gets a private row after the vertex rows, added in
  // partition order by gather_partitions. Only vertices near partition
  // boundaries are shared.
  std::vector<int32_t> first_row(partitions + 1, 1);
  phase_done();
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      int32_t top = 0;
      const std::size_t first_corner = partition_begin(b) * d1, end_corner = partition_end(b) * d1;
      for (std::size_t c = first_corner; c < end_corner; ++c)
        top = std::max(top, corner_vertex_[c]);
      first_row[b + 1] = top + 1;
    }
  });
  for (int64_t b = 1; b <= partitions; ++b) first_row[b] = std::max(first_row[b], first_row[b - 1]);
  // Private rows are numbered per partition first (as -1 - index), then
  // offset once every partition's count is known.
  corner_local_.resize(corners);
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    std::vector<int32_t> private_index(m + 1, -1);
    for (int64_t b = first; b < last; ++b) {
      std::vector<int32_t>& shared = partition_vertices_[b];
      // Bounds in locals: the stores below could alias them, and reloading
      // partition_end costs an integer division per corner.
      const int32_t owned = first_row[b];
      const std::size_t first_corner = partition_begin(b) * d1, end_corner = partition_end(b) * d1;
      for (std::size_t c = first_corner; c < end_corner; ++c) {
        const int32_t v = corner_vertex_[c];
        if (v >= owned) {
          corner_local_[c] = v;
          continue;
        }
        if (private_index[v] < 0) private_index[v] = static_cast<int32_t>(shared.size()), shared.push_back(v);
        corner_local_[c] = -1 - private_index[v];
      }
      for (const int32_t v : shared) private_index[v] = -1;
    }
  });
  partition_offset_.assign(partitions + 1, m + 1);
  for (int64_t b = 0; b < partitions; ++b)
    partition_offset_[b + 1] = partition_offset_[b] + static_cast<int64_t>(partition_vertices_[b].size());
  if (partition_offset_[partitions] >= std::numeric_limits<int32_t>::max())
    throw std::length_error("permutohedral lattice: too many splat rows for int32 indices");
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int32_t offset = static_cast<int32_t>(partition_offset_[b]);
      const std::size_t first_corner = partition_begin(b) * d1, end_corner = partition_end(b) * d1;
      for (std::size_t c = first_corner; c < end_corner; ++c)
        if (corner_local_[c] < 0) corner_local_[c] = offset - 1 - corner_local_[c];
    }
  });
  // Fresh corners: per point, bit r set when the sweep (visiting order,
  // partition by partition) has not touched corner r's vertex in the
  // kFreshWindow points before: its rows have likely left the core's cache,
  // and the mean field prefetches them a few points ahead. Only these
  // (about 0.75 of a DeepLab appearance simplex's 6 corners, 0.15 of a
  // smoothness simplex's 3), not every corner: prefetching every row cost
  // more instructions than it saved. A hint only; no result depends on it.
  corner_fresh_.resize(num_points_);
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    std::vector<int64_t> last_seen(m + 1);
    for (int64_t b = first; b < last; ++b) {
      std::fill(last_seen.begin(), last_seen.end(), partition_begin(b) - kFreshWindow - 1);
      for (int64_t i = partition_begin(b); i < partition_end(b); ++i) {
        const int64_t p = visit ? visit[i] : i;
        const int32_t* vertex = corner_vertex_.data() + p * d1;
        unsigned fresh = 0;
        for (int r = 0; r < std::min(d1, 8); ++r) {
          if (last_seen[vertex[r]] < i - kFreshWindow) fresh |= 1u << r;
          last_seen[vertex[r]] = i;
        }
        corner_fresh_[p] = static_cast<uint8_t>(fresh);
      }
    }
  });
}

void PermutohedralLattice::filter(const float* values, int64_t channels, float* out, bool transpose,
                                  const float* pre_scale, const float* post_scale) const {
  // Wide signals go through in blocks of channels so that a row fits on the stack.
  if (channels > kMaxStackChannels) {
    const int64_t n = num_points_;
    std::vector<float> in_block(static_cast<std::size_t>(n) * kMaxStackChannels);
    std::vector<float> out_block(in_block.size());
    for (int64_t first = 0; first < channels; first += kMaxStackChannels) {
      const int64_t width = std::min(kMaxStackChannels, channels - first);
      for (int64_t p = 0; p < n; ++p)
        std::copy(values + p * channels + first, values + p * channels + first + width,
                  in_block.begin() + p * width);
      filter(in_block.data(), width, out_block.data(), transpose, pre_scale, post_scale);
      for (int64_t p = 0; p < n; ++p)
        std::copy(out_block.begin() + p * width, out_block.begin() + (p + 1) * width, out + p * channels + first);
    }
    return;
  }
  const int d = dim_;
  const int d1 = d + 1;
  const int64_t c = channels;
  const int64_t blocks = (c + 7) / 8;
  const int64_t stride = blocks * 8;

  // Scratch: the splat buffer (vertex rows, then the partitions' private
  // rows), blurred in place.
  const std::size_t splat_floats = static_cast<std::size_t>(splat_rows()) * stride;
  std::unique_lock<std::mutex> lock(scratch_mutex_, std::try_to_lock);
  PooledVector<float> own_scratch;
  PooledVector<float>& scratch = lock.owns_lock() ? scratch_ : own_scratch;
  if (scratch.size() < splat_floats) scratch.resize(splat_floats);
  float* current = scratch.data();
  zero_rows(current, splat_rows(), stride);
  const int64_t partitions = num_partitions();
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b)
      splat_points(partition_begin(b), partition_end(b), d1, c, blocks, corner_local_.data(), corner_weight_.data(),
                   values, pre_scale, current);
  });
  gather_partitions(current, stride);
  blur(current, stride, transpose);
  const float* result = current;

  // Slice: barycentric interpolation, scaled by the lattice's constant.
  const float scale = alpha();
  parallel_for(num_points_, kPointGrain, [&](int64_t begin, int64_t end) {
    slice_points(begin, end, d1, c, blocks, scale, corner_vertex_.data(), corner_weight_.data(), result,
                 post_scale, out);
  });
}

void PermutohedralLattice::filter_ones(float* out) const {
  const int d1 = dim_ + 1;
  const int64_t partitions = num_partitions();
  // Splat: each partition adds its corners' weights into the splat buffer
  // (its own vertices' rows and its private rows), then the private rows are
  // gathered in partition order, as for wide rows.
  std::vector<float> current(splat_rows(), 0.0f);
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const std::size_t first_corner = partition_begin(b) * d1, end_corner = partition_end(b) * d1;
      for (std::size_t c = first_corner; c < end_corner; ++c) current[corner_local_[c]] += corner_weight_[c];
    }
  });
  gather_partitions(current.data(), 1);
  blur(current.data(), 1, false);
  const float scale = alpha();
  parallel_for(num_points_, kPointGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float sum = 0.0f;
      for (int r = 0; r < d1; ++r) sum += scale * corner_weight_[p * d1 + r] * current[corner_vertex_[p * d1 + r]];
      out[p] = sum;
    }
  });
}

float PermutohedralLattice::alpha() const { return static_cast<float>(1.0 / (1.0 + std::pow(2.0, -dim_))); }

void PermutohedralLattice::gather_partitions(float* buffer, int64_t width) const {
  // One partition at a time: within a partition the private rows belong to
  // distinct vertices, so they split across threads and every vertex still
  // sums its partitions in partition order.
  for (int64_t b = 0; b < num_partitions(); ++b) {
    const int32_t* rows = partition_vertices_[b].data();
    const float* part = buffer + partition_offset_[b] * width;
    parallel_for(partition_rows(b), kVertexGrain, [&](int64_t begin, int64_t end) {
      add_partition_rows(begin, end, width, rows, part, buffer);
    });
  }
}

void PermutohedralLattice::zero_rows(float* buffer, int64_t rows, int64_t stride) {
  parallel_for(rows, 4 * kVertexGrain, [&](int64_t begin, int64_t end) {
    std::fill(buffer + begin * stride, buffer + end * stride, 0.0f);
  });
}

template <class F>
void PermutohedralLattice::for_chains(int axis, const F& fn) const {
  // Threads take ranges of entries moved forward to chain starts, so every
  // chain is one thread's; no vertex's arithmetic depends on the split.
  const int64_t m = num_vertices_;
  const int32_t* chain = blur_chain_.data() + static_cast<std::size_t>(axis) * m;
  parallel_for(m, kVertexGrain, [&](int64_t begin, int64_t end) {
    const int64_t first = chain_start(chain, begin, m), last = chain_start(chain, end, m);
    if (first < last) fn(chain, first, last);
  });
}

void PermutohedralLattice::blur(float* buffer, int64_t width, bool transpose) const {
  // [1/2, 1, 1/2] along each lattice axis; reversed order is the adjoint.
  for (int step = 0; step <= dim_; ++step) {
    for_chains(transpose ? dim_ - step : step, [&](const int32_t* chain, int64_t begin, int64_t end) {
      if (width % 8 == 0)
        blur_chains(begin, end, width / 8, chain, buffer);
      else
        blur_narrow_chains(begin, end, static_cast<int>(width), chain, buffer);
    });
  }
}

std::size_t PermutohedralLattice::nbytes() const {
  std::size_t partition_bytes = 0;
  for (const auto& rows : partition_vertices_) partition_bytes += rows.size() * sizeof(int32_t);
  return corner_vertex_.size() * sizeof(int32_t) + corner_local_.size() * sizeof(int32_t) +
         corner_weight_.size() * sizeof(float) + corner_fresh_.size() + blur_chain_.size() * sizeof(int32_t) +
         partition_bytes;
}

}  // namespace segpost
