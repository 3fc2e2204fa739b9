// CPU construction of the permutohedral lattice, following the steps of Adams
// et al. 2010: scale, elevate onto the hyperplane x . 1 = 0 in R^{d+1}, find
// the enclosing simplex from the nearest zero-coloured point and the rank of
// the remainders, compute barycentric weights, hash the d+1 vertices. Then
// what filtering needs: blur neighbours as chains, splat partitions, and the
// corners worth prefetching. Each step is one member of Builder, in order.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "../../parallel.h"
#include "../../permutohedral.h"
#include "../../simplex.h"
#include "../../tiles.h"
#include "../simd.h"
#include "builder.h"
#include "key_table.h"
#include "sizes.h"

namespace segpost {

using namespace lattice_detail;

namespace {

// Enclosing simplex of one point (the arithmetic lives in simplex.h, shared
// with the CUDA kernels); compiled per instruction set. D > 0 fixes the
// dimension at compile time, so that the loops (the ranking's d^2 / 2
// comparisons above all) unroll: the images' smoothness (2) and appearance
// (5) kernels, and a volume's (3; 4 with a one-channel scan).
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
    case 3: return find_simplex_fixed<3>(position, d, rem0, rank, bary);
    case 4: return find_simplex_fixed<4>(position, d, rem0, rank, bary);
    case 5: return find_simplex_fixed<5>(position, d, rem0, rank, bary);
    default: return find_simplex_fixed<0>(position, d, rem0, rank, bary);
  }
}

}  // namespace

void PermutohedralLattice::Builder::check_sizes(int64_t row_length) const {
  if (num_points < 1) throw std::invalid_argument("permutohedral lattice: need at least one point");
  if (d < 1 || d > kMaxDim)
    throw std::invalid_argument("permutohedral lattice: dim must be in [1, " + std::to_string(kMaxDim) +
                                "], got " + std::to_string(d));
  if (num_points > (std::numeric_limits<int32_t>::max() - 1) / d1)
    throw std::length_error("permutohedral lattice: num_points * (dim + 1) must fit in int32");
  if (row_length < 0 || (row_length > 0 && num_points % row_length != 0))
    throw std::invalid_argument("permutohedral lattice: row_length must divide the number of points (0: no grid)");
}

// The partitions (a function of the number of points only) and the
// visiting order: the mean field's, tiles within each partition, on grids.
void PermutohedralLattice::Builder::visiting_order(int64_t row_length) {
  const int64_t partitions = splat_partitions(num_points);
  lattice.partition_vertices_.assign(partitions, {});  // partition_begin/end need the count
  if (row_length > kTileColumns) {
    order.resize(num_points);
    int32_t* next = order.data();
    for (int64_t b = 0; b < partitions; ++b)
      for_tiles(lattice.partition_begin(b), lattice.partition_end(b), row_length, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) *next++ = static_cast<int32_t>(p);
      });
  }
  visit = order.empty() ? nullptr : order.data();
  chunks = split_range(num_points, kPointGrain);
}

// Per-axis minimum and maximum (exact whatever the chunking): the minimum
// brings the features near zero, the span bounds the keys (key_hash).
template <typename T>
void PermutohedralLattice::Builder::bounds(const T* features) {
  const std::size_t num_chunks = chunks.size();
  origin.assign(static_cast<std::size_t>(d) * num_chunks, 0.0);
  top.assign(origin.size(), 0.0);
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
  origin.resize(d);
  top.resize(d);
}

// The scaling that makes the lattice blur a unit-variance Gaussian, the
// origin moved by whole periods, and the key hash for the keys' range.
void PermutohedralLattice::Builder::scaling_and_hash() {
  scale.resize(d);
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
    const double lowest = origin[i];
    const double shifted = std::floor(lowest / period) * period;
    // Far from zero (lowest / period beyond 2^52) that product rounds: it can
    // land above the lowest feature (keys below their bounds) or off the
    // periods. There the features' own spacing exceeds a period, so the
    // alignment means nothing: the lowest feature is the origin (and every
    // feature minus it is exact, by Sterbenz's lemma).
    origin[i] = shifted <= lowest && lowest - shifted < period ? shifted : lowest;
  }
  std::vector<double> extent(d);
  for (int i = 0; i < d; ++i) extent[i] = (top[i] - origin[i]) * scale[i];
  hash = key_hash(extent, d, key_low, key_high);
  lattice.exact_keys_ = hash.exact;
  // A vertex's upper neighbour along an axis is the key + 1, less d+1 on the
  // axis's own coordinate (none for the implied last one): lin() moves by a
  // constant, upper_step[axis]. From simplex vertex r - 1 to vertex r is
  // such a step, along the axis of the coordinate ranked d + 1 - r.
  uint64_t coefficient_sum = 0;  // lin() of (1, .., 1)
  for (int i = 0; i < d; ++i) coefficient_sum += hash.c[i];
  for (int axis = 0; axis <= d; ++axis) upper_step[axis] = coefficient_sum - (axis < d ? d1 * hash.c[axis] : 0);
}

// Pass 1, parallel over point chunks (at most one per thread): simplex,
// weights, and vertex keys hashed into a table per chunk (local ids in
// corner_vertex_ for now). Pipelined: a point's simplex is found and the
// table slots of its vertices prefetched kLag points before they are
// inserted, so that the slots' cache misses overlap with other work.
template <typename T>
void PermutohedralLattice::Builder::hash_points(const T* features) {
  const std::size_t corners = static_cast<std::size_t>(num_points) * d1;
  lattice.corner_weight_.resize(corners);
  lattice.corner_vertex_.resize(corners);
  std::atomic<bool> overflow{false};
  // Exact keys rely on the bounds: a simplex outside them is a bug, not a result.
  std::atomic<bool> outside{false};
  tables.resize(chunks.size());
  run_chunks(chunks, [&](std::size_t chunk, int64_t begin, int64_t end) {
    tables[chunk] = std::make_unique<KeyTable>(d, hash.exact, (end - begin) * d1 / 4 + 64);
    hash_chunk(features, *tables[chunk], begin, end, overflow, outside);
  });
  if (overflow.load())
    throw std::overflow_error("permutohedral lattice: features span too large a range for int32 lattice keys");
  if (outside.load()) throw std::logic_error("permutohedral lattice: a vertex key fell outside its bounds (a bug)");
}

template <typename T>
void PermutohedralLattice::Builder::hash_chunk(const T* features, KeyTable& table, int64_t begin, int64_t end,
                                             std::atomic<bool>& overflow, std::atomic<bool>& outside) {
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
    float* weight = lattice.corner_weight_.data() + p * d1;
    if (!find_simplex(position, d, rem0, rank, bary)) {  // reported after the loop
      overflow.store(true);
      int32_t* vertex = lattice.corner_vertex_.data() + p * d1;
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
    int32_t* vertex = lattice.corner_vertex_.data() + e.point * d1;
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
}

// Merges the chunk tables into the first in chunk order and renumbers the
// corners globally, from 1. Each chunk lists its keys in order of first
// occurrence, so the global ids equal those of one sequential pass in
// point order: the numbering does not depend on the thread count. The
// first chunk's ids are already global.
void PermutohedralLattice::Builder::merge_tables(const std::function<void()>& phase_done) {
  const std::size_t num_chunks = chunks.size();
  KeyTable& table = *tables[0];
  int64_t listed = 0;
  for (const auto& chunk_table : tables) listed += chunk_table->size();
  table.reserve(listed);  // an upper bound on the vertex count: no regrowth while merging
  std::vector<PooledVector<int32_t>> to_global(num_chunks);
  for (std::size_t chunk = 1; chunk < num_chunks; ++chunk) {
    const KeyTable& local = *tables[chunk];
    to_global[chunk].resize(local.size());
    // The first table is far beyond the caches (a volume's is tens of MiB):
    // its slots are fetched ahead, as the keys to come are known.
    constexpr int64_t kAhead = 16;
    for (int64_t id = 0; id < local.size(); ++id) {
      if (id + kAhead < local.size()) table.prefetch(local.linear(id + kAhead));
      to_global[chunk][id] = table.insert(local.key(id), local.linear(id)) + 1;
    }
    tables[chunk].reset();
  }
  phase_done();
  run_chunks(chunks, [&](std::size_t chunk, int64_t begin, int64_t end) {
    const int32_t* map = to_global[chunk].data();
    for (int64_t i = begin; i < end; ++i) {
      int32_t* vertex = lattice.corner_vertex_.data() + (visit ? visit[i] : i) * d1;
      if (chunk == 0)
        for (int r = 0; r <= d; ++r) vertex[r] += 1;
      else
        for (int r = 0; r <= d; ++r) vertex[r] = map[vertex[r]];
    }
  });
  lattice.num_vertices_ = table.size();
}


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
  Builder builder(*this);
  builder.check_sizes(row_length);
  builder.visiting_order(row_length);
  builder.bounds(features);
  builder.scaling_and_hash();
  phase_done();
  builder.hash_points(features);
  builder.merge_tables(phase_done);
  phase_done();
  builder.neighbours();
  builder.chains();
  phase_done();
  builder.partitions();
  builder.fresh_corners();
}

}  // namespace segpost
