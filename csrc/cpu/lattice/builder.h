// The permutohedral lattice's construction as named steps (Builder): the
// state that passes between them and their order. T-dependent steps (those
// that read the features) are in build.cpp, the steps that link the
// vertices for filtering in links.cpp.
#pragma once

#include <cstdint>
#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "../../parallel.h"
#include "../../permutohedral.h"
#include "key_table.h"

namespace segpost {

struct PermutohedralLattice::Builder {
  PermutohedralLattice& lattice;
  const int64_t num_points;
  const int d, d1;
  std::vector<Range> chunks;
  // Visiting order (null: point order); vertex ids follow first occurrence in it.
  PooledVector<int32_t> order;
  const int32_t* visit = nullptr;
  // Per axis: the origin (moved by whole periods), the largest feature, the scale.
  std::vector<double> origin, top, scale;
  lattice_detail::KeyHash hash;
  double key_low[kMaxDim], key_high[kMaxDim];
  // lin() of a vertex's upper neighbour along each axis, less the vertex's.
  uint64_t upper_step[kMaxDim + 1];
  // One table per chunk; after merge_tables the first holds every vertex.
  std::vector<std::unique_ptr<lattice_detail::KeyTable>> tables;
  // Per axis, each vertex's lower and upper neighbour (id + 1, 0 for none),
  // in separate arrays: the chain walk reads `upper` in random order, and
  // alone it is half the bytes to keep in cache.
  PooledVector<int32_t> lower, upper;

  explicit Builder(PermutohedralLattice& l) : lattice(l), num_points(l.num_points_), d(l.dim_), d1(l.dim_ + 1) {}

  // The steps, in order (PermutohedralLattice::build); between_phases may
  // run between them.
  void check_sizes(int64_t row_length) const;
  void visiting_order(int64_t row_length);
  template <typename T>
  void bounds(const T* features);
  void scaling_and_hash();
  template <typename T>
  void hash_points(const T* features);
  void merge_tables(const std::function<void()>& phase_done);
  void neighbours();
  void chains();
  void partitions();
  void fresh_corners();

 private:
  template <typename T>
  void hash_chunk(const T* features, lattice_detail::KeyTable& table, int64_t begin, int64_t end,
                  std::atomic<bool>& overflow, std::atomic<bool>& outside);
};

}  // namespace segpost
