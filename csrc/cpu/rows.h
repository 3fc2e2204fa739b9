// Vertex rows and the two point operations every lattice filter on the CPU is
// made of, shared by the lattice's own filter (cpu/lattice/filter.cpp) and the
// fused mean field (cpu/mean_field/):
//
//   slice:   out += sum over the point's simplex corners r of
//            (scale * weight_r) * row(vertex_r)        (barycentric interpolation)
//   scatter: row(vertex_r) += (scale * weight_r) * in   for every corner r
//
// How a row is stored is a layout policy that supplies only the varying
// primitives (the row's length in floats, add a scaled row to an
// accumulator, add a scaled accumulator to a row):
//   Wide<B>   rows of B blocks of 8 floats (B = 0: a run-time count), the
//             padded label count or channel count;
//   Narrow<W> rows of W = 2 or 4 floats, for the mean field with at most 4
//             labels: 2-4x fewer bytes to slice, scatter and blur;
//   Scalar    one float per row (the filter of a signal of ones).
// The simplex size is the other variation: D1 > 0 fixes it at compile time
// (the loops unroll), 0 reads it at run time; with_simplex_size is the one
// place that picks it.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace segpost {
namespace rows {

using simd::Block;

// An accumulator of B blocks of 8 floats. B is a compile-time constant so the
// blocks live in registers (the loops over them unroll); B = 0 is a run-time
// count, backed by memory, for wide label sets.
template <int B>
struct Row {
  static constexpr int kStatic = B;
  static constexpr int64_t blocks = B;
  SEGPOST_INLINE explicit Row(int64_t) {}
  SEGPOST_INLINE Block& operator[](int64_t b) { return fixed[b]; }
  SEGPOST_INLINE const Block& operator[](int64_t b) const { return fixed[b]; }
  Block fixed[B];
};

template <>
struct Row<0> {
  static constexpr int kStatic = 1;
  explicit Row(int64_t count) : blocks(count), heap(count * 8) {}
  Block& operator[](int64_t b) { return *reinterpret_cast<Block*>(heap.data() + 8 * b); }
  const Block& operator[](int64_t b) const { return *reinterpret_cast<const Block*>(heap.data() + 8 * b); }
  int64_t blocks;
  std::vector<float> heap;
};

template <int B>
SEGPOST_INLINE void zero(Row<B>& row) {
  for (int64_t b = 0; b < row.blocks; ++b) row[b] = Block{};
}

// Rows of B blocks of 8 floats (B = 0: `blocks` at run time).
template <int B>
struct Wide {
  using Acc = Row<B>;
  // A Potts term's slice adds straight into the update's accumulator.
  static constexpr bool kSliceIntoAccumulator = true;
  int64_t blocks;  // == B when B > 0

  SEGPOST_INLINE explicit Wide(int64_t count) : blocks(B > 0 ? B : count) {}
  SEGPOST_INLINE int64_t floats() const { return (B > 0 ? B : blocks) * 8; }
  SEGPOST_INLINE Acc accumulator() const { return Acc(blocks); }

  // acc += w * src
  SEGPOST_INLINE void accumulate(Acc& acc, float w, const float* src) const {
    for (int64_t b = 0; b < acc.blocks; ++b) acc[b] += w * simd::load(src + 8 * b);
  }
  // dst += w * row
  SEGPOST_INLINE void add(float* dst, float w, const Acc& row) const {
    for (int64_t b = 0; b < row.blocks; ++b) simd::store(dst + 8 * b, simd::load(dst + 8 * b) + w * row[b]);
  }
};

// Rows of W = 2 or 4 floats, worked on as one block whose lanes beyond W are
// zero in every row read (Q's pad lanes are 0).
template <int W>
struct Narrow {
  using Acc = Row<1>;
  // A Potts term's slice sums the point's corners in a register of its own,
  // then adds once: the order these kernels were measured and tested with
  // (folding into the accumulator would round differently).
  static constexpr bool kSliceIntoAccumulator = false;
  static constexpr int64_t blocks = 1;

  SEGPOST_INLINE explicit Narrow(int64_t = 1) {}
  SEGPOST_INLINE static constexpr int64_t floats() { return W; }
  SEGPOST_INLINE Acc accumulator() const { return Acc(1); }

  SEGPOST_INLINE static Block load_row(const float* src) {
    if constexpr (W == 4) {
      typedef float Half __attribute__((vector_size(16), aligned(4)));
      Half v;
      __builtin_memcpy(&v, src, sizeof(v));
      return __builtin_shufflevector(v, Half{}, 0, 1, 2, 3, 4, 5, 6, 7);
    } else {
      // Through a double: one 8-byte load into a zeroed register (widening
      // a 2-float vector went through the stack, a store-forwarding stall).
      typedef double Doubles __attribute__((vector_size(32)));
      double pair;
      __builtin_memcpy(&pair, src, sizeof(pair));
      const Doubles wide = {pair, 0.0, 0.0, 0.0};
      Block out;
      __builtin_memcpy(&out, &wide, sizeof(out));
      return out;
    }
  }

  SEGPOST_INLINE void accumulate(Acc& acc, float w, const float* src) const { acc[0] += w * load_row(src); }

  SEGPOST_INLINE void add(float* dst, float w, const Acc& row) const {
    const Block value = row[0];  // a copy: the stores through dst need not reload the row
    if constexpr (W == 4) {
      typedef float Half __attribute__((vector_size(16), aligned(4)));
      Half v;
      __builtin_memcpy(&v, dst, sizeof(v));
      v += w * __builtin_shufflevector(value, value, 0, 1, 2, 3);
      __builtin_memcpy(dst, &v, sizeof(v));
    } else {
      typedef float Quarter __attribute__((vector_size(8), aligned(4)));
      Quarter v;
      __builtin_memcpy(&v, dst, sizeof(v));
      v += w * __builtin_shufflevector(value, value, 0, 1);
      __builtin_memcpy(dst, &v, sizeof(v));
    }
  }
};

// One float per row: the filtered ones the kernel normalisations start from.
struct Scalar {
  struct Acc {
    float value;
  };
  static constexpr bool kSliceIntoAccumulator = true;
  SEGPOST_INLINE static constexpr int64_t floats() { return 1; }
  SEGPOST_INLINE Acc accumulator() const { return Acc{0.0f}; }
  SEGPOST_INLINE void accumulate(Acc& acc, float w, const float* src) const { acc.value += w * *src; }
  SEGPOST_INLINE void add(float* dst, float w, const Acc& row) const { *dst += w * row.value; }
};

// Block b of a row (a point's values or labels, not a vertex row) of `count` floats; the last, partial block is zero-padded.
SEGPOST_INLINE Block load_labels(const float* row, int64_t b, int64_t count) {
  const int64_t first = 8 * b;
  if (first + 8 <= count) return simd::load(row + first);
  float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = first; k < count; ++k) tail[k - first] = row[k];
  return simd::load(tail);
}

SEGPOST_INLINE void store_labels(float* row, int64_t b, int64_t count, Block value) {
  const int64_t first = 8 * b;
  if (first + 8 <= count) return simd::store(row + first, value);
  float tail[8];
  simd::store(tail, value);
  for (int64_t k = first; k < count; ++k) row[k] = tail[k - first];
}

// A point's corners: vertex ids into a buffer of rows and barycentric
// weights, (num_points, d1) each.
struct Corners {
  const int32_t* vertex;
  const float* weight;
  int d1;
};

// out += sum_r (scale * w_r) * buffer[vertex_r]: the slice of point p.
template <int D1, class Layout>
SEGPOST_INLINE void slice(const Layout& layout, Corners corners, int64_t p, float scale, const float* buffer,
                          typename Layout::Acc& out) {
  const int d1 = D1 > 0 ? D1 : corners.d1;
  const int32_t* vertex = corners.vertex + p * d1;
  const float* weight = corners.weight + p * d1;
  for (int r = 0; r < d1; ++r)
    layout.accumulate(out, scale * weight[r], buffer + static_cast<int64_t>(vertex[r]) * layout.floats());
}

// buffer[vertex_r] += (scale * w_r) * row for every corner r: the scatter of point p.
template <int D1, class Layout>
SEGPOST_INLINE void scatter(const Layout& layout, Corners corners, int64_t p, float scale, float* buffer,
                            const typename Layout::Acc& row) {
  const int d1 = D1 > 0 ? D1 : corners.d1;
  const int32_t* vertex = corners.vertex + p * d1;
  const float* weight = corners.weight + p * d1;
  for (int r = 0; r < d1; ++r)
    layout.add(buffer + static_cast<int64_t>(vertex[r]) * layout.floats(), scale * weight[r], row);
}

// Calls fn(std::integral_constant<int, D1>{}) with the simplex size fixed at
// compile time for the images' two kernels, smoothness (d = 2, D1 = 3) and
// appearance (d = 5, D1 = 6), and D1 = 0 (read at run time) otherwise.
template <class F>
SEGPOST_INLINE void with_simplex_size(int d1, F&& fn) {
  switch (d1) {
    case 3: return fn(std::integral_constant<int, 3>{});
    case 6: return fn(std::integral_constant<int, 6>{});
    default: return fn(std::integral_constant<int, 0>{});
  }
}

}  // namespace rows
}  // namespace segpost
