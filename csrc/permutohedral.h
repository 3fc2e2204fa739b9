// Permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) for fast
// high-dimensional Gaussian filtering.
//
// "Build once, filter many": construction hashes every simplex vertex once and
// stores, per point, its d+1 vertex indices and barycentric weights (splat and
// slice become a fixed sparse matrix) and, per lattice axis, the vertices in
// chains of blur neighbours. Filtering then does no hashing at all.
//
// Determinism: vertex ids follow the order of first occurrence in visiting
// order (point order, or tile order on grids; per-chunk tables merged in
// chunk order), and splatting scatters a fixed,
// thread-independent partition of the points into one buffer each, summed in
// partition order. Results are bit-for-bit identical for any thread count.
//
// Vertex indices are stored shifted by +1: row 0 of every vertex buffer is a
// spare row that nothing writes.
//
// This header is plain C++ (no Python, no torch) so that every binding and
// every device shares it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include "memory_pool.h"

namespace segpost {

class PermutohedralLattice {
 public:
  static constexpr int kMaxDim = 64;

  // features: (num_points, dim) row-major, already divided by the bandwidths.
  // They are first translated towards zero by whole lattice periods (in
  // double precision), which leaves the filter unchanged. Throws
  // std::invalid_argument on bad sizes and std::overflow_error when the
  // lattice keys would not fit in int32. row_length > 0 says the points are
  // a grid with rows of that many points (it must divide num_points): the
  // vertices are then numbered in the tile order of tiles.h, the order the
  // mean field sweeps, so a tile's vertex rows lie close together in memory.
  // The numbering changes no result, only where rows live.
  // between_phases, if set, is called between the build's phases; whatever
  // it throws (the binding's KeyboardInterrupt) ends the build there.
  PermutohedralLattice(const double* features, int64_t num_points, int dim, int64_t row_length = 0,
                       const std::function<void()>& between_phases = {});
  PermutohedralLattice(const float* features, int64_t num_points, int dim, int64_t row_length = 0,
                       const std::function<void()>& between_phases = {});

  // values, out: (num_points, channels) row-major float32; `out` may not alias
  // `values`. transpose=true applies the exact adjoint (blur axes reversed).
  // Non-null `pre_scale` / `post_scale` (num_points) multiply each input row
  // before splatting / each output row after slicing (kernel normalisations).
  void filter(const float* values, int64_t channels, float* out, bool transpose,
              const float* pre_scale = nullptr, const float* post_scale = nullptr) const;

  // out (num_points) = the filter applied to a signal of ones, K 1: the
  // kernel normalisations' input. A scalar pass, 8x less work than filter()
  // with one channel (which pads rows to 8 floats).
  void filter_ones(float* out) const;

  // Building blocks for fused loops (the dense CRF's mean field).
  //
  // Splatting is a scatter over a fixed partition of the points into
  // contiguous ranges (its count depends on the number of points only, never
  // on the thread count) into one splat buffer of splat_rows() rows: first
  // one row per vertex (shifted by one; row 0 spare), owned by the first
  // partition that touches the vertex, then each partition's private rows
  // for the vertices it shares with earlier partitions. corner_local() is
  // each corner's row in that buffer, so partitions scatter in parallel
  // without conflicts; `gather_partitions` then adds the private rows into
  // the vertex rows in partition order.
  const int32_t* corner_vertex() const { return corner_vertex_.data(); }
  const int32_t* corner_local() const { return corner_local_.data(); }
  const float* corner_weight() const { return corner_weight_.data(); }
  // (num_points): bit r (r < 8) set when the sweep in visiting order has not
  // touched corner r's vertex for a while (its rows are likely out of the
  // core's cache): which rows the mean field prefetches. A hint only.
  const uint8_t* corner_fresh() const { return corner_fresh_.data(); }
  int64_t num_partitions() const { return static_cast<int64_t>(partition_vertices_.size()); }
  int64_t partition_begin(int64_t b) const { return num_points_ * b / num_partitions(); }
  int64_t partition_end(int64_t b) const { return num_points_ * (b + 1) / num_partitions(); }
  // Private rows of partition b (vertices it shares with earlier partitions).
  int64_t partition_rows(int64_t b) const { return static_cast<int64_t>(partition_vertices_[b].size()); }
  // Rows of the splat buffer: the vertex rows and every private row.
  int64_t splat_rows() const { return partition_offset_.back(); }
  // Slice scale: 1 / (1 + 2^-d).
  float alpha() const;
  // Adds the private rows of a splat buffer (splat_rows() rows of `width`
  // floats: a multiple of 8, or 1, 2 or 4) into their vertex rows, in
  // partition order.
  void gather_partitions(float* buffer, int64_t width) const;
  // Zeroes `rows` rows of `stride` floats, in parallel.
  static void zero_rows(float* buffer, int64_t rows, int64_t stride);
  // Blurs `buffer` (rows of `width` floats, as for gather_partitions) along
  // every lattice axis, in place. Narrow rows serve few channels (the mean
  // field with at most 4 labels, the normalisation's one): rows padded to
  // 8 floats would move 2-8x the bytes.
  void blur(float* buffer, int64_t width, bool transpose) const;

  int64_t num_points() const { return num_points_; }
  int dim() const { return dim_; }
  int64_t num_vertices() const { return num_vertices_; }
  // Whether construction hashed exact packed keys (the keys' bounding box
  // fits 62 bits) rather than comparing stored keys: the same lattice either
  // way; exposed so that tests can see both paths taken.
  bool exact_keys() const { return exact_keys_; }
  // Bytes held by the lattice (not counting the scratch of a filter call).
  std::size_t nbytes() const;

 private:
  // The construction's steps (cpu/lattice/builder.h).
  struct Builder;
  template <typename T>
  void build(const T* features, int64_t row_length, const std::function<void()>& between_phases);
  // Calls fn(chain, begin, end) in parallel on ranges of whole chains of
  // axis `axis` that cover its chain array.
  template <class F>
  void for_chains(int axis, const F& fn) const;

  int64_t num_points_;
  int dim_;
  int64_t num_vertices_ = 0;
  bool exact_keys_ = false;
  // (num_points, dim+1): shifted vertex index and barycentric weight of each
  // corner of the point's enclosing simplex.
  PooledVector<int32_t> corner_vertex_;
  PooledVector<float> corner_weight_;
  // (num_points, dim+1): the corner's row in the splat buffer.
  PooledVector<int32_t> corner_local_;
  // (num_points): corner_fresh().
  PooledVector<uint8_t> corner_fresh_;
  // Per partition: the shifted vertex index of each private row, and the
  // first private row of each partition in the splat buffer (num_partitions
  // + 1 entries; the first is num_vertices + 1, the last splat_rows()).
  std::vector<std::vector<int32_t>> partition_vertices_;
  std::vector<int64_t> partition_offset_;
  // (dim+1, num_vertices): per lattice axis, every vertex (shifted index)
  // once, in chains of neighbours along the axis (each vertex's upper
  // neighbour follows it); a chain's first vertex is stored negated. The blur
  // walks the chains and updates the buffer in place: one pass over one
  // buffer per axis, where a lower/upper neighbour table needs a second
  // buffer and reads every row again as a neighbour.
  PooledVector<int32_t> blur_chain_;
  // Filter scratch kept between calls: fresh multi-megabyte buffers would
  // page-fault on every call, which costs more than the blur itself. A call
  // that finds it in use by another thread allocates its own.
  mutable std::mutex scratch_mutex_;
  mutable PooledVector<float> scratch_;
};

}  // namespace segpost
