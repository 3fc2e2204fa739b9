// A point's row of labels during the mean-field update: the negated unary it
// starts from, the vectorised softmax, and the emitted marginals and label.
// Rows are rows::Row<B> accumulators of B blocks of 8 labels.
#pragma once

#include <algorithm>
#include <vector>

#include "../rows.h"

namespace segpost {
namespace mean_field_detail {

using rows::load_labels;
using rows::Row;
using rows::store_labels;
using simd::Block;

// Unary rows prefetched ahead of the update.
constexpr int64_t kUnaryAhead = 16;
// The pad lanes' score: it never wins the softmax's maximum, and its exp
// underflows to exactly 0, so the softmax needs no mask.
constexpr float kLowest = -3.0e38f;

// Lanes of block b that hold real labels.
SEGPOST_INLINE simd::IntBlock lane_mask(int64_t b, int64_t labels) {
  const simd::IntBlock lane = {0, 1, 2, 3, 4, 5, 6, 7};
  return lane + static_cast<int32_t>(8 * b) < static_cast<int32_t>(labels);
}

// acc = -unary row (padded: whole blocks, no tail), the pad lanes kLowest.
// The messages leave them there (pad lanes of Q, hence of every message, are 0).
template <int B>
SEGPOST_INLINE void load_negated(Row<B>& acc, const float* unary_row, int64_t labels) {
  for (int64_t b = 0; b < acc.blocks; ++b) acc[b] = -simd::load(unary_row + 8 * b);
  const int64_t last = acc.blocks - 1;
  acc[last] = lane_mask(last, labels) ? acc[last] : simd::splat(kLowest);
}

// load_negated of rows p and p + 1 (p + 1 < end), with the pair kUnaryAhead
// points on prefetched: the point loops stream the unary in runs of a tile's
// row, and the hardware prefetcher loses the stream at every run.
template <int B>
SEGPOST_INLINE void load_negated_pair(Row<B>& acc, Row<B>& next, int64_t p, int64_t end, const float* unary,
                                      int64_t labels) {
  const int64_t stride = acc.blocks * 8;
  const char* ahead = reinterpret_cast<const char*>(unary + std::min(p + kUnaryAhead, end - 2) * stride);
  for (int64_t k = 0; k < 2 * stride * 4; k += 64) __builtin_prefetch(ahead + k);
  load_negated(acc, unary + p * stride, labels);
  load_negated(next, unary + (p + 1) * stride, labels);
}

// acc <- softmax(acc); the pad lanes hold kLowest and become exactly 0.
template <int B>
SEGPOST_INLINE void softmax(Row<B>& acc) {
  Block top = acc[0];
  for (int64_t b = 1; b < acc.blocks; ++b) top = top > acc[b] ? top : acc[b];
  const Block peak = simd::reduce_max(top);  // in every lane: no scalar round trip
  Block total{};
  for (int64_t b = 0; b < acc.blocks; ++b) {
    acc[b] = simd::exp_nonpositive(acc[b] - peak);
    total += acc[b];
  }
  const Block inv = 1.0f / simd::reduce_sum(total);  // sum >= 1: the largest entry contributes exp(0)
  for (int64_t b = 0; b < acc.blocks; ++b) acc[b] *= inv;
}

// softmax() of two rows at once, step by step. One row's softmax is a long
// chain of dependent instructions (maximum, exp, sum, division) that leaves
// the core mostly idle; interleaved in program order, two independent chains
// run side by side. Each row gets exactly softmax()'s arithmetic.
template <int B>
SEGPOST_INLINE void softmax_pair(Row<B>& a, Row<B>& c) {
  Block top_a = a[0], top_c = c[0];
  for (int64_t b = 1; b < a.blocks; ++b) {
    top_a = top_a > a[b] ? top_a : a[b];
    top_c = top_c > c[b] ? top_c : c[b];
  }
  const Block peak_a = simd::reduce_max(top_a), peak_c = simd::reduce_max(top_c);
  Block total_a{}, total_c{};
  for (int64_t b = 0; b < a.blocks; ++b) {
    a[b] = simd::exp_nonpositive(a[b] - peak_a);
    c[b] = simd::exp_nonpositive(c[b] - peak_c);
    total_a += a[b];
    total_c += c[b];
  }
  const Block inv_a = 1.0f / simd::reduce_sum(total_a), inv_c = 1.0f / simd::reduce_sum(total_c);
  for (int64_t b = 0; b < a.blocks; ++b) {
    a[b] *= inv_a;
    c[b] *= inv_c;
  }
}

// row = q's row p, or softmax(-unary) at p when q is null (the initial marginals).
template <int B>
SEGPOST_INLINE void load_q(Row<B>& row, int64_t p, const float* q, const float* unary, int64_t labels) {
  if (q) {
    for (int64_t b = 0; b < row.blocks; ++b) row[b] = load_labels(q + p * labels, b, labels);
  } else {
    load_negated(row, unary + p * row.blocks * 8, labels);
    softmax(row);
  }
}

// Writes the row to q_out (if set) and its most likely label to labels_out (if set).
template <int B>
SEGPOST_INLINE void emit(Row<B>& acc, int64_t p, int64_t labels, float* q_out, int64_t* labels_out) {
  if (q_out)
    for (int64_t b = 0; b < acc.blocks; ++b) store_labels(q_out + p * labels, b, labels, acc[b]);
  if (labels_out) {
    float values[8 * Row<B>::kStatic];
    std::vector<float> wide(B > 0 ? 0 : acc.blocks * 8);
    float* x = B > 0 ? values : wide.data();
    for (int64_t b = 0; b < acc.blocks; ++b) simd::store(x + 8 * b, acc[b]);
    // First maximum, as numpy's argmax: the largest value (a vector
    // reduction over the real lanes), then a scan for its first lane.
    const Block lowest = simd::splat(kLowest);
    Block top = lowest;
    for (int64_t b = 0; b < acc.blocks; ++b) {
      const Block masked = lane_mask(b, labels) ? acc[b] : lowest;
      top = top > masked ? top : masked;
    }
    const float peak = simd::reduce_max(top)[0];
    int64_t best = 0;
    while (best < labels - 1 && x[best] != peak) ++best;
    labels_out[p] = best;
  }
}

}  // namespace mean_field_detail
}  // namespace segpost
