// CPU filtering on the permutohedral lattice: splat (each point scatters its
// values into its simplex's vertex rows), blur ([1/2, 1, 1/2] along each
// lattice axis, walking the chains of neighbours), slice (barycentric
// interpolation back at the points). Splat and slice are rows.h's scatter and
// slice; the blur is one chain walk whose row policy is wide (blocks of 8
// floats) or narrow (1, 2 or 4 floats).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "../../parallel.h"
#include "../../permutohedral.h"
#include "../rows.h"
#include "../simd.h"
#include "sizes.h"

namespace segpost {

using namespace lattice_detail;

namespace {

using simd::Block;
using simd::load;
using simd::store;

// Scatter points [begin, end) into `buffer` (rows of `blocks` * 8 floats):
// each values row is read once, sequentially.
SEGPOST_MULTIVERSION
void splat_points(int64_t begin, int64_t end, rows::Corners corners, int64_t c, int64_t blocks, const float* values,
                  const float* pre_scale, float* buffer) {
  const rows::Wide<0> layout(blocks);
  rows::Row<0> row = layout.accumulator();
  for (int64_t p = begin; p < end; ++p) {
    for (int64_t b = 0; b < blocks; ++b) row[b] = rows::load_labels(values + p * c, b, c);
    rows::scatter<0>(layout, corners, p, pre_scale ? pre_scale[p] : 1.0f, buffer, row);
  }
}

SEGPOST_MULTIVERSION
void slice_points(int64_t begin, int64_t end, rows::Corners corners, int64_t c, int64_t blocks, float alpha,
                  const float* buffer, const float* post_scale, float* out) {
  const rows::Wide<0> layout(blocks);
  rows::Row<0> acc = layout.accumulator();
  for (int64_t p = begin; p < end; ++p) {
    rows::zero(acc);
    rows::slice<0>(layout, corners, p, post_scale ? alpha * post_scale[p] : alpha, buffer, acc);
    for (int64_t b = 0; b < blocks; ++b) rows::store_labels(out + p * c, b, c, acc[b]);
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
// zero. The old values of the previous and current vertex ride along (in
// registers), so every row is read once and written once. How they ride is
// the row policy's: WideRows or NarrowRows below.
template <class Rows>
SEGPOST_INLINE void walk_chains(int64_t begin, int64_t end, const int32_t* chain, float* column, const Rows& rows) {
  typename Rows::Riding lower, self;
  for (int64_t i = begin; i < end;) {
    float* row = column + static_cast<int64_t>(-chain[i]) * rows.stride;
    rows.start(row, lower, self);
    for (;;) {
      const bool has_upper = ++i < end && chain[i] > 0;
      if (!has_upper) {
        rows.finish(row, lower, self);
        break;
      }
      float* upper_row = column + static_cast<int64_t>(chain[i]) * rows.stride;
      rows.prefetch(column, chain, i, end);
      rows.step(row, upper_row, lower, self);
      row = upper_row;
    }
  }
}

// A group of W blocks of 8 floats of rows `stride` floats apart: W > 0 is a
// compile-time constant, so that the riding rows stay in registers (0:
// `count` blocks, at most 8, through memory). Chain order is random in
// memory: rows kAhead entries ahead are prefetched.
template <int W>
struct WideRows {
  static constexpr int64_t kAhead = 12;
  struct Riding {
    Block v[W > 0 ? W : 8];
  };
  int64_t count, stride;
  SEGPOST_INLINE int64_t n() const { return W > 0 ? W : count; }
  SEGPOST_INLINE void start(const float* row, Riding& lower, Riding& self) const {
    for (int64_t b = 0; b < n(); ++b) lower.v[b] = Block{}, self.v[b] = load(row + 8 * b);
  }
  SEGPOST_INLINE void finish(float* row, const Riding& lower, const Riding& self) const {
    for (int64_t b = 0; b < n(); ++b) store(row + 8 * b, self.v[b] + 0.5f * (lower.v[b] + Block{}));
  }
  SEGPOST_INLINE void prefetch(const float* column, const int32_t* chain, int64_t i, int64_t end) const {
    if (i + kAhead >= end) return;
    const float* ahead = column + static_cast<int64_t>(std::abs(chain[i + kAhead])) * stride;
    for (int64_t k = 0; k < 8 * n(); k += 16) __builtin_prefetch(ahead + k, 1);
    __builtin_prefetch(ahead + 8 * n() - 1, 1);
  }
  SEGPOST_INLINE void step(float* row, const float* upper_row, Riding& lower, Riding& self) const {
    for (int64_t b = 0; b < n(); ++b) {
      const Block upper = load(upper_row + 8 * b);
      store(row + 8 * b, self.v[b] + 0.5f * (lower.v[b] + upper));
      lower.v[b] = self.v[b];
      self.v[b] = upper;
    }
  }
};

// Rows of W = 1, 2 or 4 floats: the same arithmetic per float, riding in
// scalars. A volume's lattices hold millions of vertices, far beyond the
// caches: then (`far`) rows kAhead entries ahead are prefetched, as for wide
// rows (an image's few labels' rows stay in cache, where prefetches only
// cost).
template <int W>
struct NarrowRows {
  static constexpr int64_t kAhead = 32;
  struct Riding {
    float v[W];
  };
  static constexpr int64_t stride = W;
  bool far;
  SEGPOST_INLINE void start(const float* row, Riding& lower, Riding& self) const {
    for (int k = 0; k < W; ++k) lower.v[k] = 0.0f, self.v[k] = row[k];
  }
  SEGPOST_INLINE void finish(float* row, const Riding& lower, const Riding& self) const {
    for (int k = 0; k < W; ++k) row[k] = self.v[k] + 0.5f * (lower.v[k] + 0.0f);
  }
  SEGPOST_INLINE void prefetch(const float* column, const int32_t* chain, int64_t i, int64_t end) const {
    if (far && i + kAhead < end) __builtin_prefetch(column + static_cast<int64_t>(std::abs(chain[i + kAhead])) * W, 1);
  }
  SEGPOST_INLINE void step(float* row, const float* upper_row, Riding& lower, Riding& self) const {
    for (int k = 0; k < W; ++k) {
      const float upper = upper_row[k];
      row[k] = self.v[k] + 0.5f * (lower.v[k] + upper);
      lower.v[k] = self.v[k];
      self.v[k] = upper;
    }
  }
};

// Rows wider than kGroup blocks (the mean field's, with many labels) go
// through kGroup blocks at a time.
SEGPOST_MULTIVERSION
void blur_chains(int64_t begin, int64_t end, int64_t blocks, const int32_t* chain, float* buffer) {
  constexpr int64_t kGroup = kMaxStackChannels / 8;
  const int64_t stride = blocks * 8;
  for (int64_t first = 0; first < blocks; first += kGroup) {
    const int64_t width = std::min(kGroup, blocks - first);
    float* column = buffer + 8 * first;
    switch (width) {
      case 1: walk_chains(begin, end, chain, column, WideRows<1>{width, stride}); break;
      case 2: walk_chains(begin, end, chain, column, WideRows<2>{width, stride}); break;
      case 3: walk_chains(begin, end, chain, column, WideRows<3>{width, stride}); break;
      case 4: walk_chains(begin, end, chain, column, WideRows<4>{width, stride}); break;
      default: walk_chains(begin, end, chain, column, WideRows<0>{width, stride}); break;
    }
  }
}

SEGPOST_MULTIVERSION
void blur_narrow_chains(int64_t begin, int64_t end, int width, const int32_t* chain, float* buffer, bool far) {
  switch (width) {
    case 1: return walk_chains(begin, end, chain, buffer, NarrowRows<1>{far});
    case 2: return walk_chains(begin, end, chain, buffer, NarrowRows<2>{far});
    default: return walk_chains(begin, end, chain, buffer, NarrowRows<4>{far});
  }
}

}  // namespace

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
  const rows::Corners scattered{corner_local_.data(), corner_weight_.data(), d1};
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b)
      splat_points(partition_begin(b), partition_end(b), scattered, c, blocks, values, pre_scale, current);
  });
  gather_partitions(current, stride);
  blur(current, stride, transpose);
  const float* result = current;

  // Slice: barycentric interpolation, scaled by the lattice's constant.
  const float scale = alpha();
  const rows::Corners sliced{corner_vertex_.data(), corner_weight_.data(), d1};
  parallel_for(num_points_, kPointGrain, [&](int64_t begin, int64_t end) {
    slice_points(begin, end, sliced, c, blocks, scale, result, post_scale, out);
  });
}

void PermutohedralLattice::filter_ones(float* out) const {
  const int d1 = dim_ + 1;
  const int64_t partitions = num_partitions();
  const rows::Scalar layout;
  // Splat: each partition adds its corners' weights into the splat buffer
  // (its own vertices' rows and its private rows), then the private rows are
  // gathered in partition order, as for wide rows.
  std::vector<float> current(splat_rows(), 0.0f);
  const rows::Corners scattered{corner_local_.data(), corner_weight_.data(), d1};
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b)
      for (int64_t p = partition_begin(b); p < partition_end(b); ++p)
        rows::scatter<0>(layout, scattered, p, 1.0f, current.data(), rows::Scalar::Acc{1.0f});
  });
  gather_partitions(current.data(), 1);
  blur(current.data(), 1, false);
  const float scale = alpha();
  const rows::Corners sliced{corner_vertex_.data(), corner_weight_.data(), d1};
  parallel_for(num_points_, kPointGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      rows::Scalar::Acc sum = layout.accumulator();
      rows::slice<0>(layout, sliced, p, scale, current.data(), sum);
      out[p] = sum.value;
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
  // Narrow rows are prefetched when the buffer is well beyond a core's caches.
  constexpr int64_t kFarBytes = int64_t{8} << 20;
  const bool far = num_vertices_ * width * static_cast<int64_t>(sizeof(float)) > kFarBytes;
  // [1/2, 1, 1/2] along each lattice axis; reversed order is the adjoint.
  for (int step = 0; step <= dim_; ++step) {
    for_chains(transpose ? dim_ - step : step, [&](const int32_t* chain, int64_t begin, int64_t end) {
      if (width % 8 == 0)
        blur_chains(begin, end, width / 8, chain, buffer);
      else
        blur_narrow_chains(begin, end, static_cast<int>(width), chain, buffer, far);
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
