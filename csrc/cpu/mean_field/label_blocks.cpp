// The mean field on per-point label blocks: each point keeps only the blocks
// of 8 labels that hold a label whose unary is within a gap of its lowest
// (its mask, fixed for the run); its other labels have Q = 0. The update
// slices, normalises and scatters only the kept blocks, so with many labels
// and peaked scores it moves a fraction of the dense rows. Vertex rows stay
// whole (every label's column), zeroed and blurred as in the dense kernel:
// the blur is exact, only the points' Q is restricted.
//
// Each kept block gets the dense kernel's arithmetic in its order (the corners
// in order, the softmax's blocks ascending), so with every block kept the
// result is the dense kernel's bit for bit (tests/test_label_blocks.py).
// Potts terms only (the caller checks): a point's message for a label reads
// that label's column alone.
#include <algorithm>
#include <vector>

#include "point_loops.h"

namespace segpost {
namespace mean_field_detail {

namespace {

// A point's kept blocks (ascending) and their scores.
struct BlockRow {
  int count = 0;
  int block[kMaxLabelBlocks];
  Block acc[kMaxLabelBlocks];

  SEGPOST_INLINE void take(uint64_t mask) {
    count = 0;
    for (; mask; mask &= mask - 1) block[count++] = __builtin_ctzll(mask);
  }
};

// acc = -unary over the kept blocks (the point's compact row: its kept blocks
// in order), the pad lanes kLowest (load_negated's rule).
SEGPOST_INLINE void load_negated_blocks(BlockRow& row, const float* kept_unary, int64_t labels) {
  const int64_t last = (labels - 1) / 8;
  for (int i = 0; i < row.count; ++i) {
    const int b = row.block[i];
    const Block value = -simd::load(kept_unary + 8 * i);
    row.acc[i] = b == last ? (lane_mask(b, labels) ? value : simd::splat(kLowest)) : value;
  }
}

// acc += potts_weight * (the term's filtered signal at p), kept blocks only.
template <int D1>
SEGPOST_INLINE void add_potts_blocks(const TermView& t, int64_t stride, int64_t p, BlockRow& row) {
  const int d1 = D1 > 0 ? D1 : t.d1;
  const float scale = t.slice_scale(p, t.potts_weight);
  const int32_t* vertex = t.vertex + p * d1;
  const float* weight = t.weight + p * d1;
  for (int r = 0; r < d1; ++r) {
    const float w = scale * weight[r];
    const float* src = t.blurred + static_cast<int64_t>(vertex[r]) * stride;
    for (int i = 0; i < row.count; ++i) row.acc[i] += w * simd::load(src + 8 * row.block[i]);
  }
}

// The kept blocks of p into the term's splat target, times pre[p].
template <int D1>
SEGPOST_INLINE void scatter_blocks(const TermView& t, int64_t stride, int64_t p, const BlockRow& row) {
  const int d1 = D1 > 0 ? D1 : t.d1;
  const float scale = t.scatter_scale(p);
  const int32_t* local = t.local + p * d1;
  const float* weight = t.weight + p * d1;
  for (int r = 0; r < d1; ++r) {
    const float w = scale * weight[r];
    float* dst = t.target + static_cast<int64_t>(local[r]) * stride;
    for (int i = 0; i < row.count; ++i) {
      float* at = dst + 8 * row.block[i];
      simd::store(at, simd::load(at) + w * row.acc[i]);
    }
  }
}

// softmax over the kept blocks (softmax()'s arithmetic; a mask is never empty).
SEGPOST_INLINE void softmax_blocks(BlockRow& row) {
  Block top = row.acc[0];
  for (int i = 1; i < row.count; ++i) top = top > row.acc[i] ? top : row.acc[i];
  const Block peak = simd::reduce_max(top);
  Block total{};
  for (int i = 0; i < row.count; ++i) {
    row.acc[i] = simd::exp_nonpositive(row.acc[i] - peak);
    total += row.acc[i];
  }
  const Block inv = 1.0f / simd::reduce_sum(total);
  for (int i = 0; i < row.count; ++i) row.acc[i] *= inv;
}

// Q's row p (0 outside the kept blocks) and its first most likely label.
SEGPOST_INLINE void emit_blocks(const BlockRow& row, int64_t p, int64_t labels, float* q_out, int64_t* labels_out) {
  if (q_out) {
    float* out = q_out + p * labels;
    std::fill(out, out + labels, 0.0f);
    for (int i = 0; i < row.count; ++i) store_labels(out, row.block[i], labels, row.acc[i]);
  }
  if (labels_out) {
    const Block lowest = simd::splat(kLowest);
    Block top = lowest;
    for (int i = 0; i < row.count; ++i) {
      const Block masked = lane_mask(row.block[i], labels) ? row.acc[i] : lowest;
      top = top > masked ? top : masked;
    }
    const float peak = simd::reduce_max(top)[0];
    int64_t best = -1;
    for (int i = 0; i < row.count && best < 0; ++i) {
      float x[8];
      simd::store(x, row.acc[i]);
      for (int lane = 0; lane < 8; ++lane) {
        const int64_t label = 8 * row.block[i] + lane;
        if (label < labels && x[lane] == peak) {
          best = label;
          break;
        }
      }
    }
    labels_out[p] = best;
  }
}

// Prefetches the kept blocks of point p's fresh corners' rows (the blurred
// row it slices, the splat row it scatters into): vertex ids are data, no
// hardware prefetcher sees them coming (prefetch_fresh_rows).
SEGPOST_INLINE void prefetch_blocks(const std::vector<TermView>& terms, int64_t stride, int64_t p, uint64_t mask,
                                    bool scatter) {
  for (const TermView& t : terms) {
    for (unsigned fresh = t.fresh[p]; fresh; fresh &= fresh - 1) {
      const int r = __builtin_ctz(fresh);
      const float* src = t.blurred + static_cast<int64_t>(t.vertex[p * t.d1 + r]) * stride;
      const float* dst = scatter ? t.target + static_cast<int64_t>(t.local[p * t.d1 + r]) * stride : nullptr;
      for (uint64_t m = mask; m; m &= m - 1) {
        const int b = __builtin_ctzll(m);
        __builtin_prefetch(src + 8 * b);
        if (dst) __builtin_prefetch(dst + 8 * b, 1);
      }
    }
  }
}

template <class F>
SEGPOST_INLINE void for_each_term(const std::vector<TermView>& terms, F&& fn) {
  for (const TermView& t : terms)
    rows::with_simplex_size(t.d1, [&](auto d1) SEGPOST_INLINE_LAMBDA { fn(t, d1); });
}

}  // namespace

SEGPOST_MULTIVERSION
void label_block_masks(int64_t begin, int64_t end, const float* unary, int64_t labels, float gap, uint64_t* out) {
  const int64_t blocks = (labels + 7) / 8, stride = blocks * 8, last = blocks - 1;
  const Block highest = simd::splat(-kLowest);
  Block lows[kMaxLabelBlocks];
  for (int64_t p = begin; p < end; ++p) {
    const float* row = unary + p * stride;
    Block best = highest;
    for (int64_t b = 0; b < blocks; ++b) {
      const Block value = simd::load(row + 8 * b);
      lows[b] = b == last ? (lane_mask(b, labels) ? value : highest) : value;
      best = best < lows[b] ? best : lows[b];
    }
    const float threshold = -simd::reduce_max(-best)[0] + gap;
    uint64_t mask = 0;
    for (int64_t b = 0; b < blocks; ++b)
      if (-simd::reduce_max(-lows[b])[0] <= threshold) mask |= uint64_t{1} << b;
    out[p] = mask;
  }
}

SEGPOST_MULTIVERSION
void keep_label_blocks(int64_t begin, int64_t end, const float* unary, int64_t labels, const KeptBlocks& kept,
                       float* kept_unary) {
  const int64_t stride = (labels + 7) / 8 * 8;
  for (int64_t p = begin; p < end; ++p) {
    float* out = kept_unary + 8 * kept.offsets[p];
    for (uint64_t m = kept.masks[p]; m; m &= m - 1, out += 8)
      simd::store(out, simd::load(unary + p * stride + 8 * __builtin_ctzll(m)));
  }
}

SEGPOST_MULTIVERSION
void scatter_label_blocks(int64_t stride, int64_t begin, int64_t end, int64_t labels, const KeptBlocks& kept,
                          const std::vector<TermBuffers>& buffers) {
  const std::vector<TermView> terms = views(buffers);
  BlockRow row;
  for (int64_t p = begin; p < end; ++p) {
    row.take(kept.masks[p]);
    load_negated_blocks(row, kept.unary + 8 * kept.offsets[p], labels);
    softmax_blocks(row);
    for_each_term(terms, [&](const TermView& t, auto d1) SEGPOST_INLINE_LAMBDA {
      scatter_blocks<decltype(d1)::value>(t, stride, p, row);
    });
  }
}

SEGPOST_MULTIVERSION
void update_label_blocks(int64_t stride, int64_t begin, int64_t end, int64_t row_length, int64_t num_points,
                         int64_t labels, const KeptBlocks& kept, const std::vector<TermBuffers>& buffers,
                         bool scatter, float* q_out, int64_t* labels_out) {
  const std::vector<TermView> terms = views(buffers);
  BlockRow row;
  for (int64_t p = begin; p < end; ++p) {
    // The kept unary kUnaryAhead points on, in the tile's next row past the
    // run's end (see load_negated_pair: the streams break at every run).
    const int64_t ahead = p + kUnaryAhead < end ? p + kUnaryAhead : p + kUnaryAhead - (end - begin) + row_length;
    if (ahead >= 0 && ahead < num_points) {
      const char* from = reinterpret_cast<const char*>(kept.unary + 8 * kept.offsets[ahead]);
      for (int64_t k = 0; k < 32 * (kept.offsets[ahead + 1] - kept.offsets[ahead]); k += 64) __builtin_prefetch(from + k);
    }
    if (p + kRowsAhead < end) prefetch_blocks(terms, stride, p + kRowsAhead, kept.masks[p + kRowsAhead], scatter);
    row.take(kept.masks[p]);
    load_negated_blocks(row, kept.unary + 8 * kept.offsets[p], labels);
    for_each_term(terms, [&](const TermView& t, auto d1) SEGPOST_INLINE_LAMBDA {
      add_potts_blocks<decltype(d1)::value>(t, stride, p, row);
    });
    softmax_blocks(row);
    if (scatter)
      for_each_term(terms, [&](const TermView& t, auto d1) SEGPOST_INLINE_LAMBDA {
        scatter_blocks<decltype(d1)::value>(t, stride, p, row);
      });
    emit_blocks(row, p, labels, q_out, labels_out);
  }
}

}  // namespace mean_field_detail
}  // namespace segpost
