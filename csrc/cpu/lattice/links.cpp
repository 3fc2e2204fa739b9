// The lattice construction's last steps (builder.h): linking the vertices
// for filtering. Blur neighbours and their chains, the splat partitions and
// the corners worth prefetching.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <utility>

#include "../../parallel.h"
#include "builder.h"
#include "sizes.h"

namespace segpost {

using namespace lattice_detail;

// Blur neighbours: read-only lookups, parallel over vertices. Only the
// lower neighbour is looked up: u = lo(v) along an axis exactly when
// v = hi(u) (a lattice translation), so v is also recorded as u's upper
// neighbour. The translation is one-to-one, so no two vertices write the
// same slot.
void PermutohedralLattice::Builder::neighbours() {
  const int64_t m = lattice.num_vertices_;
  const KeyTable& table = *tables[0];
  lower.assign(static_cast<std::size_t>(d1) * m, 0);
  upper.assign(lower.size(), 0);
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
  tables.clear();
}

// Blur chains: per axis, from each vertex without a lower neighbour, up
// through the upper neighbours. Every vertex lies on exactly one chain
// (lattice translations are one-to-one and never cycle); chains follow
// the order of their first vertices, a function of the lattice alone.
void PermutohedralLattice::Builder::chains() {
  const int64_t m = lattice.num_vertices_;
  lattice.blur_chain_.resize(static_cast<std::size_t>(d1) * m);
  parallel_for(d1, 1, [&](int64_t first, int64_t last) {
    for (int64_t axis = first; axis < last; ++axis) {
      const int32_t* axis_lower = lower.data() + static_cast<std::size_t>(axis) * m;
      const int32_t* axis_upper = upper.data() + static_cast<std::size_t>(axis) * m;
      int32_t* chain = lattice.blur_chain_.data() + static_cast<std::size_t>(axis) * m;
      for (int64_t v = 0; v < m; ++v) {
        if (axis_lower[v] != 0) continue;
        *chain++ = -static_cast<int32_t>(v + 1);
        for (int32_t u = axis_upper[v]; u != 0; u = axis_upper[u - 1]) *chain++ = u;
      }
    }
  });
}

// Splat partitions. Vertex ids follow first occurrence in the visiting
// order, which runs through the partitions in turn, so the vertices a
// partition reaches first are the rows [first_row[b], first_row[b + 1]):
// it owns them and scatters into them directly. Each vertex it shares with
// an earlier partition gets a private row after the vertex rows, added in
// partition order by gather_partitions. Only vertices near partition
// boundaries are shared.
void PermutohedralLattice::Builder::partitions() {
  const int64_t m = lattice.num_vertices_;
  const int64_t partitions = lattice.num_partitions();
  const auto corners_of = [&](int64_t b) {
    return std::make_pair(lattice.partition_begin(b) * d1, lattice.partition_end(b) * d1);
  };
  const int32_t* corner_vertex = lattice.corner_vertex_.data();
  std::vector<int32_t> first_row(partitions + 1, 1);
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      int32_t highest = 0;
      const auto [first_corner, end_corner] = corners_of(b);
      for (int64_t c = first_corner; c < end_corner; ++c) highest = std::max(highest, corner_vertex[c]);
      first_row[b + 1] = highest + 1;
    }
  });
  for (int64_t b = 1; b <= partitions; ++b) first_row[b] = std::max(first_row[b], first_row[b - 1]);
  // Private rows are numbered per partition first (as -1 - index), then
  // offset once every partition's count is known.
  lattice.corner_local_.resize(static_cast<std::size_t>(num_points) * d1);
  int32_t* corner_local = lattice.corner_local_.data();
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    std::vector<int32_t> private_index(m + 1, -1);
    for (int64_t b = first; b < last; ++b) {
      std::vector<int32_t>& shared = lattice.partition_vertices_[b];
      // Bounds in locals: the stores below could alias them, and reloading
      // partition_end costs an integer division per corner.
      const int32_t owned = first_row[b];
      const auto [first_corner, end_corner] = corners_of(b);
      for (int64_t c = first_corner; c < end_corner; ++c) {
        const int32_t v = corner_vertex[c];
        if (v >= owned) {
          corner_local[c] = v;
          continue;
        }
        if (private_index[v] < 0) private_index[v] = static_cast<int32_t>(shared.size()), shared.push_back(v);
        corner_local[c] = -1 - private_index[v];
      }
      for (const int32_t v : shared) private_index[v] = -1;
    }
  });
  std::vector<int64_t>& offset = lattice.partition_offset_;
  offset.assign(partitions + 1, m + 1);
  for (int64_t b = 0; b < partitions; ++b)
    offset[b + 1] = offset[b] + static_cast<int64_t>(lattice.partition_vertices_[b].size());
  if (offset[partitions] >= std::numeric_limits<int32_t>::max())
    throw std::length_error("permutohedral lattice: too many splat rows for int32 indices");
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int32_t base = static_cast<int32_t>(offset[b]);
      const auto [first_corner, end_corner] = corners_of(b);
      for (int64_t c = first_corner; c < end_corner; ++c)
        if (corner_local[c] < 0) corner_local[c] = base - 1 - corner_local[c];
    }
  });
}

// Fresh corners: per point, bit r set when the sweep (visiting order,
// partition by partition) has not touched corner r's vertex in the
// kFreshWindow points before: its rows have likely left the core's cache,
// and the mean field prefetches them a few points ahead. Only these
// (about 0.75 of a DeepLab appearance simplex's 6 corners, 0.15 of a
// smoothness simplex's 3), not every corner: prefetching every row cost
// more instructions than it saved. A hint only; no result depends on it.
void PermutohedralLattice::Builder::fresh_corners() {
  const int64_t m = lattice.num_vertices_;
  lattice.corner_fresh_.resize(num_points);
  parallel_for(lattice.num_partitions(), 1, [&](int64_t first, int64_t last) {
    std::vector<int64_t> last_seen(m + 1);
    for (int64_t b = first; b < last; ++b) {
      const int64_t begin = lattice.partition_begin(b), end = lattice.partition_end(b);
      std::fill(last_seen.begin(), last_seen.end(), begin - kFreshWindow - 1);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t p = visit ? visit[i] : i;
        const int32_t* vertex = lattice.corner_vertex_.data() + p * d1;
        unsigned fresh = 0;
        for (int r = 0; r < std::min(d1, 8); ++r) {
          if (last_seen[vertex[r]] < i - kFreshWindow) fresh |= 1u << r;
          last_seen[vertex[r]] = i;
        }
        lattice.corner_fresh_[p] = static_cast<uint8_t>(fresh);
      }
    }
  });
}

}  // namespace segpost
