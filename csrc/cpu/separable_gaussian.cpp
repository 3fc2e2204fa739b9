// CPU filtering of the exact grid Gaussian (separable_gaussian.h): one 1-D
// convolution per axis, in place, the last axis first.
//
// Every output value is the same sum whichever pass computes it: 0, then
// w(t) * input(t) added for t = -R .. R in that order, the taps that fall
// outside the grid left out. So the result does not depend on how the work
// is cut (threads, chunks), only on the grid and the taps.
#include "../separable_gaussian.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "../parallel.h"
#include "simd.h"

namespace segpost {

namespace {

// Floats of a slab column processed at a time by the passes along the first
// axes: (taps) rows of this many floats stay in L1/L2 while they are summed.
constexpr int64_t kColumnFloats = 1024;
constexpr int64_t kRowGrain = 16;

// dst[i] += w * src[i] for i < n: one tap of a convolution.
SEGPOST_MULTIVERSION
void add_scaled(float* dst, const float* src, float w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += w * src[i];
}

// The convolution of one line of `length` points of `width` contiguous floats
// each (a grid row: width = the row stride; a slab column: a chunk of the
// points after the axis), from `line` (not aliasing `out`). Points t apart
// are t * pitch floats apart in `line`, pitch >= width.
void convolve_line(const float* line, int64_t length, int64_t width, int64_t pitch, const std::vector<float>& taps,
                   float* out, int64_t out_pitch) {
  const int64_t radius = static_cast<int64_t>(taps.size()) - 1;
  for (int64_t c = 0; c < length; ++c) {
    float* d = out + c * out_pitch;
    std::fill(d, d + width, 0.0f);
    for (int64_t t = std::max(-radius, -c); t <= std::min(radius, length - 1 - c); ++t)
      add_scaled(d, line + (c + t) * pitch, taps[static_cast<std::size_t>(t < 0 ? -t : t)], width);
  }
}

// The last axis's convolution of one row of `length` points of `stride`
// floats: the points are contiguous, so each tap is one shifted run over the
// whole row (rather than a run of `stride` floats per point).
void convolve_row(const float* row, int64_t length, int64_t stride, const std::vector<float>& taps, float* out) {
  const int64_t radius = static_cast<int64_t>(taps.size()) - 1;
  std::fill(out, out + length * stride, 0.0f);
  for (int64_t t = -radius; t <= radius; ++t) {
    // Points c with 0 <= c + t < length: [max(0, -t), length - max(0, t)).
    const int64_t first = std::max<int64_t>(0, -t), last = length - std::max<int64_t>(0, t);
    if (first >= last) continue;
    add_scaled(out + first * stride, row + (first + t) * stride, taps[static_cast<std::size_t>(t < 0 ? -t : t)],
               (last - first) * stride);
  }
}

}  // namespace

SeparableGaussian::SeparableGaussian(std::vector<int64_t> shape, std::vector<std::vector<float>> taps)
    : shape_(std::move(shape)), taps_(std::move(taps)), num_points_(1) {
  if (shape_.empty()) throw std::invalid_argument("separable Gaussian: the grid needs at least one axis");
  if (taps_.size() != shape_.size())
    throw std::invalid_argument("separable Gaussian: need the taps of every axis (" + std::to_string(shape_.size()) +
                                "), got " + std::to_string(taps_.size()));
  for (std::size_t a = 0; a < shape_.size(); ++a) {
    if (shape_[a] < 1) throw std::invalid_argument("separable Gaussian: every grid size must be >= 1");
    if (taps_[a].empty() || static_cast<int64_t>(taps_[a].size()) > shape_[a])
      throw std::invalid_argument("separable Gaussian: axis " + std::to_string(a) +
                                  " needs 1 to its size taps (w(0) .. w(R), R < size)");
    for (float w : taps_[a])
      if (!std::isfinite(w)) throw std::invalid_argument("separable Gaussian: taps must be finite");
    if (num_points_ > std::numeric_limits<int32_t>::max() / shape_[a])
      throw std::length_error("separable Gaussian: the grid's point count must fit in int32");
    num_points_ *= shape_[a];
  }
  identity_.resize(static_cast<std::size_t>(num_points_));
  for (int64_t p = 0; p < num_points_; ++p) identity_[p] = static_cast<int32_t>(p);
  unit_weight_.assign(static_cast<std::size_t>(num_points_), 1.0f);
  not_fresh_.assign(static_cast<std::size_t>(num_points_), 0);
}

std::size_t SeparableGaussian::nbytes() const {
  return identity_.size() * sizeof(int32_t) + unit_weight_.size() * sizeof(float) + not_fresh_.size();
}

void SeparableGaussian::filter(const float* values, int64_t channels, float* out) const {
  if (channels < 1) throw std::invalid_argument("separable Gaussian: need at least one channel");
  if (out != values) std::memmove(out, values, sizeof(float) * static_cast<std::size_t>(num_points_ * channels));
  blur(out, channels);
}

void SeparableGaussian::blur(float* rows, int64_t stride) const {
  const int last = static_cast<int>(shape_.size()) - 1;
  blur_last_axis(rows, stride);
  for (int axis = last - 1; axis >= 0; --axis) blur_axis(rows, stride, axis);
}

void SeparableGaussian::blur_last_axis(float* rows, int64_t stride) const {
  const int64_t length = shape_.back();
  if (taps_.back().size() == 1 && taps_.back()[0] == 1.0f) return;  // the identity
  const int64_t row_floats = length * stride;
  parallel_for(num_points_ / length, kRowGrain, [&](int64_t begin, int64_t end) {
    ScratchVector<float> row(static_cast<std::size_t>(row_floats));
    for (int64_t r = begin; r < end; ++r) {
      float* data = rows + r * row_floats;
      std::copy(data, data + row_floats, row.data());
      convolve_row(row.data(), length, stride, taps_.back(), data);
    }
  });
}

void SeparableGaussian::blur_axis(float* rows, int64_t stride, int axis) const {
  const std::vector<float>& taps = taps_[static_cast<std::size_t>(axis)];
  if (taps.size() == 1 && taps[0] == 1.0f) return;
  const int64_t length = shape_[static_cast<std::size_t>(axis)];
  int64_t outer = 1, inner = stride;  // points before the axis; floats after it
  for (int a = 0; a < axis; ++a) outer *= shape_[static_cast<std::size_t>(a)];
  for (std::size_t a = static_cast<std::size_t>(axis) + 1; a < shape_.size(); ++a) inner *= shape_[a];
  // Tasks: one column chunk of one slab (the lines along the axis at one
  // outer index) each; the chunk is copied out, then convolved back in place.
  const int64_t chunks = (inner + kColumnFloats - 1) / kColumnFloats;
  parallel_for(outer * chunks, 1, [&](int64_t begin, int64_t end) {
    ScratchVector<float> column(static_cast<std::size_t>(length * std::min(inner, kColumnFloats)));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o = task / chunks, first = task % chunks * kColumnFloats;
      const int64_t width = std::min(kColumnFloats, inner - first);
      float* slab = rows + o * length * inner + first;
      for (int64_t c = 0; c < length; ++c) std::copy(slab + c * inner, slab + c * inner + width, &column[c * width]);
      convolve_line(column.data(), length, width, width, taps, slab, inner);
    }
  });
}

}  // namespace segpost
