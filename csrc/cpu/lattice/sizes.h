// Sizes shared by the lattice's construction and its filter: how work is cut
// (grains, splat partitions) and how wide a row goes through the stack.
#pragma once

#include <algorithm>
#include <cstdint>

namespace segpost {
namespace lattice_detail {

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
// Their number; partition b is the points [N b / P, N (b + 1) / P).
inline int64_t splat_partitions(int64_t num_points) {
  return std::max<int64_t>(1, std::min(kMaxPartitions, num_points / kPartitionPoints));
}
// Points of the sweep after which a vertex's rows count as out of cache
// (corner_fresh): a 64x64 tile's DeepLab appearance rows fill about a
// megabyte, one core's L2.
constexpr int64_t kFreshWindow = 2048;
// Channels are processed in blocks padded to a multiple of 8 floats (one AVX
// register) that fit on the stack.
constexpr int64_t kMaxStackChannels = 64;

}  // namespace lattice_detail
}  // namespace segpost
