// The exact Gaussian kernel of a regular grid, filtered separably: one 1-D
// convolution per axis, zero outside the grid.
//
// The smoothness kernel k(i, j) = exp(-|p_i - p_j|^2 / 2) on grid positions
// p = index * spacing / sigma is a product over the axes, so K v is three
// (two) 1-D convolutions, with taps w_a(t) = exp(-(t step_a)^2 / 2) for
// |t| <= R_a (the caller's truncation; segpost.lattice.grid_gaussian.separable_taps
// computes them, for this class and the torch filter alike). Where a volume's
// kernel spans a few voxels this is both exact and cheaper than the
// permutohedral lattice's approximation of it: no lattice to build (a
// volume's has more vertices than voxels) and one row per point to slice.
//
// To the mean field (mean_field.h) it looks like a lattice whose vertices are
// the points: each point's own row (identity corners, weight 1), blurred by
// the convolutions. Every output is a fixed sum in a fixed order, whatever the
// thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "memory_pool.h"

namespace segpost {

class SeparableGaussian {
 public:
  // shape: the grid's sizes, first axis first (points in row-major order);
  // taps[a]: w_a(0), ..., w_a(R_a) for axis a, R_a < shape[a].
  SeparableGaussian(std::vector<int64_t> shape, std::vector<std::vector<float>> taps);

  // out = K values: (num_points, channels) row-major each; out may alias values.
  void filter(const float* values, int64_t channels, float* out) const;
  // K applied in place to rows of `stride` floats (the mean field's buffer).
  void blur(float* rows, int64_t stride) const;

  // The mean field's view of the points as vertices: point p's row is p.
  const int32_t* corner_vertex() const { return identity_.data(); }
  const float* corner_weight() const { return unit_weight_.data(); }
  const uint8_t* corner_fresh() const { return not_fresh_.data(); }

  int64_t num_points() const { return num_points_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  const std::vector<std::vector<float>>& taps() const { return taps_; }
  std::size_t nbytes() const;

 private:
  void blur_last_axis(float* rows, int64_t stride) const;
  void blur_axis(float* rows, int64_t stride, int axis) const;

  std::vector<int64_t> shape_;
  std::vector<std::vector<float>> taps_;
  int64_t num_points_;
  PooledVector<int32_t> identity_;
  PooledVector<float> unit_weight_;
  PooledVector<uint8_t> not_fresh_;
};

}  // namespace segpost
