// The CPU mean field's point kernels: rows of labels in SIMD blocks, the
// row layouts (Wide blocks of 8, Narrow rows of 2 or 4 floats), the generic
// point loops over any pairwise terms (the reference path) and the two-Potts
// loop for crf_refine's model (the fast path; tests hold it bit-identical to
// the generic loop).
//
// Everything here is inlined into the multiversioned entry points declared at
// the end, which live in their own translation units (update.cpp,
// scatter.cpp) so that a parallel build compiles them side by side; the
// orchestration (mean_field_cpu.cpp) calls only those entry points.
#pragma once

#include <algorithm>
#include <vector>

#include "../../mean_field.h"
#include "../simd.h"

namespace segpost {
namespace mean_field_detail {

using simd::Block;

// Unary rows prefetched ahead of the update.
constexpr int64_t kUnaryAhead = 16;
// Points ahead whose fresh vertex rows the update prefetches.
constexpr int64_t kRowsAhead = 4;

// Block b of a row of `labels` floats; the last, partial block is zero-padded.
__attribute__((always_inline)) inline Block load_labels(const float* row, int64_t b, int64_t labels) {
  const int64_t first = 8 * b;
  if (first + 8 <= labels) return simd::load(row + first);
  float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = first; k < labels; ++k) tail[k - first] = row[k];
  return simd::load(tail);
}

__attribute__((always_inline)) inline void store_labels(float* row, int64_t b, int64_t labels, Block value) {
  const int64_t first = 8 * b;
  if (first + 8 <= labels) return simd::store(row + first, value);
  float tail[8];
  simd::store(tail, value);
  for (int64_t k = first; k < labels; ++k) row[k] = tail[k - first];
}

// Prefetches the vertex rows of point p's fresh corners (the lattice's
// corner_fresh: rows the sweep has not touched for a while, likely out of
// cache): unless null, the blurred row the update will slice and the splat
// row it will scatter into. Rows are row_floats long and start at
// a multiple of their size or of 32 bytes. Vertex ids are data, so no
// hardware prefetcher sees them coming; and with the tiles' locality only
// about one corner in eight is fresh, so the prefetches cost little.
template <int D1>
SEGPOST_INLINE void prefetch_fresh_rows(const uint8_t* fresh, const int32_t* vertex, const int32_t* local, int d1,
                                        int64_t p, const float* blurred, const float* target, int64_t row_floats) {
  const int64_t n = D1 > 0 ? D1 : d1;
  const int64_t bytes = row_floats * static_cast<int64_t>(sizeof(float));
  for (unsigned mask = fresh[p]; mask; mask &= mask - 1) {
    const int r = __builtin_ctz(mask);
    if (blurred) {
      const char* src = reinterpret_cast<const char*>(blurred + static_cast<int64_t>(vertex[p * n + r]) * row_floats);
      for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(src + k);
      if (bytes > 32) __builtin_prefetch(src + bytes - 1);
    }
    if (!target) continue;
    const char* dst = reinterpret_cast<const char*>(target + static_cast<int64_t>(local[p * n + r]) * row_floats);
    for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(dst + k, 1);
    if (bytes > 32) __builtin_prefetch(dst + bytes - 1, 1);
  }
}

// One pairwise term's lattice and buffers during a mean-field run.
struct TermBuffers {
  const PairwiseTerm* term;
  const PermutohedralLattice* lattice;
  int d1;
  float alpha;
  // Two splat buffers of lattice->splat_rows() rows: one receives the next
  // iteration's scatter while the other holds the blurred signal being
  // sliced; then the former is blurred in place and the roles swap.
  float* buffer[2];
  int64_t rows;                // lattice->splat_rows()
  const float* blurred = nullptr;
  float* target = nullptr;     // the splat buffer of the next scatter
};

// A Potts term's pointers and constants, read once per partition instead of
// through the term and lattice at every point (update_rows_potts2). How a
// point's rows are sliced and scattered is the row layout's: PottsWide below
// (rows of B blocks), PottsNarrow further down (rows of 2 or 4 floats).
struct PottsTerm {
  const int32_t* vertex;  // corner rows of the blurred buffer (slice)
  const int32_t* local;   // corner rows of the splat buffer (scatter)
  const float* weight;
  const uint8_t* fresh;
  const float* pre;
  const float* post;
  const float* blurred;
  float* target;
  float alpha, potts_weight;

  explicit PottsTerm(const TermBuffers& t)
      : vertex(t.lattice->corner_vertex()), local(t.lattice->corner_local()), weight(t.lattice->corner_weight()),
        fresh(t.lattice->corner_fresh()), pre(t.term->pre_scale), post(t.term->post_scale), blurred(t.blurred),
        target(t.target), alpha(t.alpha), potts_weight(t.term->potts_weight) {}
};

template <int B>
struct PottsWide : PottsTerm {
  using PottsTerm::PottsTerm;

  // acc += potts_weight * (the filtered signal at p), as Kernels::slice_potts_fixed.
  template <int D1, class Row>
  SEGPOST_INLINE void slice(int64_t p, Row& acc) const {
    const float scale = potts_weight * (post ? alpha * post[p] : alpha);
    const int32_t* v = vertex + p * D1;
    const float* w = weight + p * D1;
    for (int r = 0; r < D1; ++r) {
      const float wr = scale * w[r];
      const float* src = blurred + static_cast<int64_t>(v[r]) * (B * 8);
      for (int b = 0; b < B; ++b) acc[b] += wr * simd::load(src + 8 * b);
    }
  }

  template <int D1>
  SEGPOST_INLINE void prefetch(int64_t p, bool scatter) const {
    prefetch_fresh_rows<D1>(fresh, vertex, local, D1, p, blurred, scatter ? target : nullptr, B * 8);
  }
  template <int D1>
  SEGPOST_INLINE void prefetch_target(int64_t p) const {
    prefetch_fresh_rows<D1>(fresh, vertex, local, D1, p, nullptr, target, B * 8);
  }

  // Scatter row (times pre[p]) of point p, as Kernels::scatter_fixed.
  template <int D1, class Row>
  SEGPOST_INLINE void scatter(int64_t p, Row& row) const {
    const float scale = pre ? pre[p] : 1.0f;
    const int32_t* v = local + p * D1;
    const float* w = weight + p * D1;
    for (int r = 0; r < D1; ++r) {
      const float wr = scale * w[r];
      float* dst = target + static_cast<int64_t>(v[r]) * (B * 8);
      for (int b = 0; b < B; ++b) simd::store(dst + 8 * b, simd::load(dst + 8 * b) + wr * row[b]);
    }
  }
};

// Accumulator rows of B blocks of 8 labels (labels padded with zeros). B is a
// compile-time constant so the rows live in registers; the kernels below are
// instantiated for B = 1..8 (up to 64 labels) and dispatched at run time, and
// wider label sets go through in a generic, memory-backed form (B = 0).

template <int B>
struct Row {
  static constexpr int kStatic = B;
  static constexpr int64_t blocks = B;  // a constant: the loops unroll and the blocks stay in registers
  SEGPOST_INLINE explicit Row(int64_t) {}
  SEGPOST_INLINE Block& operator[](int64_t b) { return fixed[b]; }
  Block fixed[B];
};

template <>
struct Row<0> {
  static constexpr int kStatic = 1;
  explicit Row(int64_t count) : blocks(count), heap(count * 8) {}
  Block& operator[](int64_t b) { return *reinterpret_cast<Block*>(heap.data() + 8 * b); }
  int64_t blocks;
  std::vector<float> heap;
};

template <int B>
struct Kernels {
  static constexpr float kLowest = -3.0e38f;

  // acc[b] = -unary row (padded: whole blocks, no tail), with the pad lanes
  // set to the lowest float: they then never win the softmax's maximum and
  // their exp underflows to exactly 0, with no masking in the softmax. The
  // messages leave them there (pad lanes of Q, hence of every message, are 0).
  SEGPOST_INLINE static void load_negated(Row<B>& acc, const float* unary_row, int64_t labels) {
    for (int64_t b = 0; b < acc.blocks; ++b) acc[b] = -simd::load(unary_row + 8 * b);
    const int64_t last = acc.blocks - 1;
    acc[last] = lane_mask(last, labels) ? acc[last] : simd::splat(kLowest);
  }

  // load_negated of rows p and p + 1 (p + 1 < end), with the pair
  // kUnaryAhead points on prefetched: the point loops stream the unary in
  // runs of a tile's row, and the hardware prefetcher loses the stream at
  // every run.
  SEGPOST_INLINE static void load_negated_pair(Row<B>& acc, Row<B>& next, int64_t p, int64_t end, const float* unary,
                                               int64_t labels) {
    const int64_t stride = acc.blocks * 8;
    const char* ahead = reinterpret_cast<const char*>(unary + std::min(p + kUnaryAhead, end - 2) * stride);
    for (int64_t k = 0; k < 2 * stride * 4; k += 64) __builtin_prefetch(ahead + k);
    load_negated(acc, unary + p * stride, labels);
    load_negated(next, unary + (p + 1) * stride, labels);
  }

  // msg = post[p] * alpha * sum_r w_r blurred[v_r]: the filtered signal at point p.
  // D1 > 0 fixes the simplex size at compile time (unrolled); 0 reads t.d1.
  template <int D1>
  SEGPOST_INLINE static void slice_fixed(const TermBuffers& t, int64_t p, Row<B>& msg) {
    const int d1 = D1 > 0 ? D1 : t.d1;
    const float* post = t.term->post_scale;
    const float scale = post ? t.alpha * post[p] : t.alpha;
    const int32_t* vertex = t.lattice->corner_vertex() + p * d1;
    const float* weight = t.lattice->corner_weight() + p * d1;
    const int64_t stride = msg.blocks * 8;
    for (int64_t b = 0; b < msg.blocks; ++b) msg[b] = Block{};
    for (int r = 0; r < d1; ++r) {
      const float w = scale * weight[r];
      const float* src = t.blurred + static_cast<int64_t>(vertex[r]) * stride;
      for (int64_t b = 0; b < msg.blocks; ++b) msg[b] += w * simd::load(src + 8 * b);
    }
  }

  SEGPOST_INLINE static void slice(const TermBuffers& t, int64_t p, Row<B>& msg) {
    switch (t.d1) {  // the smoothness (d = 2) and appearance (d = 5) kernels of images
      case 3: return slice_fixed<3>(t, p, msg);
      case 6: return slice_fixed<6>(t, p, msg);
      default: return slice_fixed<0>(t, p, msg);
    }
  }

  // acc += potts_weight * (the filtered signal at p): a Potts term's whole
  // contribution, its weight folded into the slice weights (no message row).
  template <int D1>
  SEGPOST_INLINE static void slice_potts_fixed(const TermBuffers& t, int64_t p, Row<B>& acc) {
    const int d1 = D1 > 0 ? D1 : t.d1;
    const float* post = t.term->post_scale;
    const float scale = t.term->potts_weight * (post ? t.alpha * post[p] : t.alpha);
    const int32_t* vertex = t.lattice->corner_vertex() + p * d1;
    const float* weight = t.lattice->corner_weight() + p * d1;
    const int64_t stride = acc.blocks * 8;
    for (int r = 0; r < d1; ++r) {
      const float w = scale * weight[r];
      const float* src = t.blurred + static_cast<int64_t>(vertex[r]) * stride;
      for (int64_t b = 0; b < acc.blocks; ++b) acc[b] += w * simd::load(src + 8 * b);
    }
  }

  // acc -= compat(filtered signal at p) for one term.
  SEGPOST_INLINE static void add_message(const TermBuffers& t, int64_t p, Row<B>& msg, Row<B>& acc, int64_t labels) {
    if (t.term->kind == Compatibility::kPotts) {
      switch (t.d1) {
        case 3: return slice_potts_fixed<3>(t, p, acc);
        case 6: return slice_potts_fixed<6>(t, p, acc);
        default: return slice_potts_fixed<0>(t, p, acc);
      }
    }
    slice(t, p, msg);
    subtract_compat(*t.term, msg, acc, labels);
  }

  // Scatter row (times pre[p]) of point p into the splat buffer.
  template <int D1>
  SEGPOST_INLINE static void scatter_fixed(const TermBuffers& t, int64_t p, Row<B>& row, float* buffer) {
    const int d1 = D1 > 0 ? D1 : t.d1;
    const float* pre = t.term->pre_scale;
    const float scale = pre ? pre[p] : 1.0f;
    const int32_t* vertex = t.lattice->corner_local() + p * d1;  // rows of the splat buffer
    const float* weight = t.lattice->corner_weight() + p * d1;
    const int64_t stride = row.blocks * 8;
    for (int r = 0; r < d1; ++r) {
      const float w = scale * weight[r];
      float* dst = buffer + static_cast<int64_t>(vertex[r]) * stride;
      for (int64_t b = 0; b < row.blocks; ++b) simd::store(dst + 8 * b, simd::load(dst + 8 * b) + w * row[b]);
    }
  }

  SEGPOST_INLINE static void scatter(const TermBuffers& t, int64_t p, Row<B>& row, float* buffer) {
    switch (t.d1) {
      case 3: return scatter_fixed<3>(t, p, row, buffer);
      case 6: return scatter_fixed<6>(t, p, row, buffer);
      default: return scatter_fixed<0>(t, p, row, buffer);
    }
  }

  // acc -= compat(msg).
  SEGPOST_INLINE static void subtract_compat(const PairwiseTerm& term, Row<B>& msg, Row<B>& acc, int64_t labels) {
    switch (term.kind) {
      case Compatibility::kPotts:
        for (int64_t b = 0; b < acc.blocks; ++b) acc[b] += term.potts_weight * msg[b];
        break;
      case Compatibility::kDiagonal:
        for (int64_t b = 0; b < acc.blocks; ++b) acc[b] -= simd::load(term.compat + 8 * b) * msg[b];
        break;
      case Compatibility::kMatrix: {
        // compat holds M transposed and padded: column j of M is a padded row.
        float values[8 * (B > 0 ? B : 1)];
        std::vector<float> wide(B > 0 ? 0 : acc.blocks * 8);
        float* x = B > 0 ? values : wide.data();
        for (int64_t b = 0; b < acc.blocks; ++b) simd::store(x + 8 * b, msg[b]);
        for (int64_t j = 0; j < labels; ++j) {
          const float* column = term.compat + j * acc.blocks * 8;
          for (int64_t b = 0; b < acc.blocks; ++b) acc[b] -= x[j] * simd::load(column + 8 * b);
        }
        break;
      }
    }
  }

  // acc <- softmax(acc); the pad lanes hold the lowest float (load_negated)
  // and become exactly 0.
  SEGPOST_INLINE static void softmax(Row<B>& acc) {
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
  // the core mostly idle; interleaved in program order, two independent
  // chains run side by side. Each row gets exactly softmax()'s arithmetic.
  SEGPOST_INLINE static void softmax_pair(Row<B>& a, Row<B>& c) {
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

  // Lanes of block b that hold real labels.
  SEGPOST_INLINE static simd::IntBlock lane_mask(int64_t b, int64_t labels) {
    const simd::IntBlock lane = {0, 1, 2, 3, 4, 5, 6, 7};
    return lane + static_cast<int32_t>(8 * b) < static_cast<int32_t>(labels);
  }

  // row = q's row p, or softmax(-unary) at p when q is null (the initial marginals).
  SEGPOST_INLINE static void load_q(Row<B>& row, int64_t p, const float* q, const float* unary, int64_t labels) {
    if (q) {
      for (int64_t b = 0; b < row.blocks; ++b) row[b] = load_labels(q + p * labels, b, labels);
    } else {
      load_negated(row, unary + p * row.blocks * 8, labels);
      softmax(row);
    }
  }

  // How the point loops below read and write vertex rows: Wide rows hold
  // the B blocks of a point's row (Narrow, further down, fewer floats).
  struct Wide {
    SEGPOST_INLINE static void add_message(const TermBuffers& t, int64_t p, Row<B>& msg, Row<B>& acc,
                                           int64_t labels) {
      Kernels::add_message(t, p, msg, acc, labels);
    }
    SEGPOST_INLINE static void scatter(const TermBuffers& t, int64_t p, Row<B>& row) {
      Kernels::scatter(t, p, row, t.target);
    }
    SEGPOST_INLINE static void prefetch(const TermBuffers& t, int64_t p, bool scatter, int64_t blocks) {
      const PermutohedralLattice& l = *t.lattice;
      prefetch_fresh_rows<0>(l.corner_fresh(), l.corner_vertex(), l.corner_local(), t.d1, p, t.blurred,
                             scatter ? t.target : nullptr, blocks * 8);
    }
  };

  // Scatter the rows of q (or, with q null, of softmax(-unary)) into the splat targets.
  template <class Rows = Wide>
  SEGPOST_INLINE static void scatter_rows(int64_t begin, int64_t end, const float* q, const float* unary,
                                          int64_t labels, int64_t blocks, const std::vector<TermBuffers>& terms) {
    Row<B> row(blocks);
    for (int64_t p = begin; p < end; ++p) {
      load_q(row, p, q, unary, labels);
      for (const TermBuffers& t : terms) Rows::scatter(t, p, row);
    }
  }

  // Writes the row to q_out (if set) and its most likely label to labels_out (if set).
  SEGPOST_INLINE static void emit(Row<B>& acc, int64_t p, int64_t labels, float* q_out, int64_t* labels_out) {
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

  // The update's point loop: acc = -unary row, minus every term's message,
  // softmax, scatter into the next splat buffers, emit. Terms (GenericTerms
  // or TwoPottsTerms below) adds the messages and scatters, two points at a
  // time and term by term: each vertex row still receives point p's scatter
  // before point p + 1's, so the sums, hence the results, are those of one
  // point at a time. Two points per step let their softmax chains overlap
  // (softmax_pair).
  template <class Terms>
  SEGPOST_INLINE static void update_loop(int64_t begin, int64_t end, const float* unary, int64_t labels,
                                         int64_t blocks, Terms& terms, bool scatter_next, float* q_out,
                                         int64_t* labels_out) {
    Row<B> acc(blocks), next(blocks);
    int64_t p = begin;
    for (; p + 1 < end; p += 2) {
      if (p + kRowsAhead + 1 < end) terms.prefetch(p + kRowsAhead, scatter_next);
      load_negated_pair(acc, next, p, end, unary, labels);
      terms.add_messages(p, acc, next);
      softmax_pair(acc, next);
      if (scatter_next) terms.scatter(p, acc, next);
      emit(acc, p, labels, q_out, labels_out);
      emit(next, p + 1, labels, q_out, labels_out);
    }
    for (; p < end; ++p) {
      load_negated(acc, unary + p * blocks * 8, labels);
      terms.add_message(p, acc);
      softmax(acc);
      if (scatter_next) terms.scatter_one(p, acc);
      emit(acc, p, labels, q_out, labels_out);
    }
  }

  // Any terms, through the Rows access (Wide, or Narrow further down).
  template <class Rows>
  struct GenericTerms {
    const std::vector<TermBuffers>& terms;
    int64_t labels;
    Row<B> msg;
    SEGPOST_INLINE void add_messages(int64_t p, Row<B>& acc, Row<B>& next) {
      for (const TermBuffers& t : terms) {
        Rows::add_message(t, p, msg, acc, labels);
        Rows::add_message(t, p + 1, msg, next, labels);
      }
    }
    SEGPOST_INLINE void add_message(int64_t p, Row<B>& acc) {
      for (const TermBuffers& t : terms) Rows::add_message(t, p, msg, acc, labels);
    }
    SEGPOST_INLINE void scatter(int64_t p, Row<B>& acc, Row<B>& next) {
      for (const TermBuffers& t : terms) {
        Rows::scatter(t, p, acc);
        Rows::scatter(t, p + 1, next);
      }
    }
    SEGPOST_INLINE void scatter_one(int64_t p, Row<B>& acc) {
      for (const TermBuffers& t : terms) Rows::scatter(t, p, acc);
    }
    // The fresh rows of points p and p + 1.
    SEGPOST_INLINE void prefetch(int64_t p, bool scatter) const {
      for (const TermBuffers& t : terms) {
        Rows::prefetch(t, p, scatter, msg.blocks);
        Rows::prefetch(t, p + 1, scatter, msg.blocks);
      }
    }
  };

  template <class Rows = Wide>
  SEGPOST_INLINE static void update_rows(int64_t begin, int64_t end, const float* unary, int64_t labels,
                                         int64_t blocks, const std::vector<TermBuffers>& terms, bool scatter_next,
                                         float* q_out, int64_t* labels_out) {
    GenericTerms<Rows> generic{terms, labels, Row<B>(blocks)};
    update_loop(begin, end, unary, labels, blocks, generic, scatter_next, q_out, labels_out);
  }

  // crf_refine's model: exactly two Potts terms whose simplex sizes D1a, D1b
  // are compile-time constants, their rows laid out as View says
  // (PottsWide<B> or PottsNarrow<W>). The generic terms' arithmetic in their
  // order (results bit-identical), with each term's pointers and constants
  // read once (View) instead of through the term and lattice objects, and
  // no branch on a term's kind or size, at every point: a sizeable share of
  // an update that is mostly instructions.
  template <int D1a, int D1b, class View>
  struct TwoPottsTerms {
    const View& a;
    const View& b;
    SEGPOST_INLINE void add_messages(int64_t p, Row<B>& acc, Row<B>& next) const {
      a.template slice<D1a>(p, acc);
      a.template slice<D1a>(p + 1, next);
      b.template slice<D1b>(p, acc);
      b.template slice<D1b>(p + 1, next);
    }
    SEGPOST_INLINE void add_message(int64_t p, Row<B>& acc) const {
      a.template slice<D1a>(p, acc);
      b.template slice<D1b>(p, acc);
    }
    SEGPOST_INLINE void scatter(int64_t p, Row<B>& acc, Row<B>& next) const {
      a.template scatter<D1a>(p, acc);
      a.template scatter<D1a>(p + 1, next);
      b.template scatter<D1b>(p, acc);
      b.template scatter<D1b>(p + 1, next);
    }
    SEGPOST_INLINE void scatter_one(int64_t p, Row<B>& acc) const {
      a.template scatter<D1a>(p, acc);
      b.template scatter<D1b>(p, acc);
    }
    SEGPOST_INLINE void prefetch(int64_t p, bool scatter) const {
      a.template prefetch<D1a>(p, scatter);
      a.template prefetch<D1a>(p + 1, scatter);
      b.template prefetch<D1b>(p, scatter);
      b.template prefetch<D1b>(p + 1, scatter);
    }
  };

  template <int D1a, int D1b, class View>
  SEGPOST_INLINE static void update_rows_potts2(int64_t begin, int64_t end, const float* unary, int64_t labels,
                                                const View& a, const View& b, bool scatter_next,
                                                float* q_out, int64_t* labels_out) {
    TwoPottsTerms<D1a, D1b, View> two{a, b};
    update_loop(begin, end, unary, labels, B, two, scatter_next, q_out, labels_out);
  }

  // scatter_rows for two Potts terms, two points at a time as in the update
  // (each vertex row still receives p before p + 1, and softmax_pair is
  // softmax's arithmetic): the unary and the fresh splat rows prefetched,
  // and the two points' softmax chains overlapping.
  template <int D1a, int D1b, class View>
  SEGPOST_INLINE static void scatter_rows_potts2(int64_t begin, int64_t end, const float* q, const float* unary,
                                                 int64_t labels, const View& a, const View& b) {
    TwoPottsTerms<D1a, D1b, View> two{a, b};
    Row<B> acc(B), next(B);
    int64_t p = begin;
    for (; p + 1 < end; p += 2) {
      if (p + kRowsAhead + 1 < end) {
        a.template prefetch_target<D1a>(p + kRowsAhead);
        a.template prefetch_target<D1a>(p + kRowsAhead + 1);
        b.template prefetch_target<D1b>(p + kRowsAhead);
        b.template prefetch_target<D1b>(p + kRowsAhead + 1);
      }
      if (q) {
        load_q(acc, p, q, unary, labels);
        load_q(next, p + 1, q, unary, labels);
      } else {
        load_negated_pair(acc, next, p, end, unary, labels);
        softmax_pair(acc, next);
      }
      two.scatter(p, acc, next);
    }
    for (; p < end; ++p) {
      load_q(acc, p, q, unary, labels);
      two.scatter_one(p, acc);
    }
  }

  SEGPOST_INLINE static void message_rows(int64_t begin, int64_t end, int64_t labels, int64_t blocks,
                           const std::vector<TermBuffers>& terms, float* out) {
    Row<B> acc(blocks), msg(blocks);
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t b = 0; b < acc.blocks; ++b) acc[b] = Block{};
      for (const TermBuffers& t : terms) {
        slice(t, p, msg);
        subtract_compat(*t.term, msg, acc, labels);
      }
      for (int64_t b = 0; b < acc.blocks; ++b) store_labels(out + p * labels, b, labels, -acc[b]);
    }
  }

  // Rows of q_in (or of softmax(-unary) when q_in is null), emitted.
  SEGPOST_INLINE static void emit_rows(int64_t begin, int64_t end, const float* q_in, const float* unary, int64_t labels,
                                       int64_t blocks, float* q_out, int64_t* labels_out) {
    Row<B> acc(blocks);
    for (int64_t p = begin; p < end; ++p) {
      load_q(acc, p, q_in, unary, labels);
      emit(acc, p, labels, q_out, labels_out);
    }
  }
};

// Calls Kernels<B>::method(args...) for the label count's block count.
#define SEGPOST_DISPATCH_BLOCKS(blocks, method, ...)             \
  switch (blocks) {                                              \
    case 1: Kernels<1>::method(__VA_ARGS__); break;              \
    case 2: Kernels<2>::method(__VA_ARGS__); break;              \
    case 3: Kernels<3>::method(__VA_ARGS__); break;              \
    case 4: Kernels<4>::method(__VA_ARGS__); break;              \
    case 5: Kernels<5>::method(__VA_ARGS__); break;              \
    case 6: Kernels<6>::method(__VA_ARGS__); break;              \
    case 7: Kernels<7>::method(__VA_ARGS__); break;              \
    case 8: Kernels<8>::method(__VA_ARGS__); break;              \
    default: Kernels<0>::method(__VA_ARGS__); break;             \
  }

// Few labels (at most 4): the vertex rows hold W = 2 or 4 floats instead of
// a padded block of 8, so that slicing, scattering and blurring move 2-4x
// fewer bytes. The point loops are Kernels<1>'s (with Narrow<W> as their
// row access), on one block whose lanes beyond W are zero in every row read
// (Q's pad lanes are 0).
typedef float Half __attribute__((vector_size(16), aligned(4)));
typedef float Quarter __attribute__((vector_size(8), aligned(4)));

template <int W>
struct Narrow {
  using K = Kernels<1>;

  SEGPOST_INLINE static Block load_row(const float* src) {
    if constexpr (W == 4) {
      Half v;
      __builtin_memcpy(&v, src, sizeof(v));
      return __builtin_shufflevector(v, Half{}, 0, 1, 2, 3, 4, 5, 6, 7);
    } else {
      // Through a double: one 8-byte load into a zeroed register (widening
      // a 2-float vector went through the stack, a store-forwarding stall).
      typedef double Wide __attribute__((vector_size(32)));
      double pair;
      __builtin_memcpy(&pair, src, sizeof(pair));
      const Wide wide = {pair, 0.0, 0.0, 0.0};
      Block out;
      __builtin_memcpy(&out, &wide, sizeof(out));
      return out;
    }
  }

  // dst[0:W] += w * row[0:W].
  SEGPOST_INLINE static void add_row(float* dst, float w, Block row) {
    if constexpr (W == 4) {
      Half v;
      __builtin_memcpy(&v, dst, sizeof(v));
      v += w * __builtin_shufflevector(row, row, 0, 1, 2, 3);
      __builtin_memcpy(dst, &v, sizeof(v));
    } else {
      Quarter v;
      __builtin_memcpy(&v, dst, sizeof(v));
      v += w * __builtin_shufflevector(row, row, 0, 1);
      __builtin_memcpy(dst, &v, sizeof(v));
    }
  }

  // acc += (Potts) or -= compat of (the filtered signal at p), as Kernels::add_message.
  template <int D1>
  SEGPOST_INLINE static void add_message_fixed(const TermBuffers& t, int64_t p, Row<1>& msg, Row<1>& acc,
                                               int64_t labels) {
    const int d1 = D1 > 0 ? D1 : t.d1;
    const float* post = t.term->post_scale;
    const bool potts = t.term->kind == Compatibility::kPotts;
    const float scale = (potts ? t.term->potts_weight : 1.0f) * (post ? t.alpha * post[p] : t.alpha);
    const int32_t* vertex = t.lattice->corner_vertex() + p * d1;
    const float* weight = t.lattice->corner_weight() + p * d1;
    Block sum{};
    for (int r = 0; r < d1; ++r) sum += (scale * weight[r]) * load_row(t.blurred + static_cast<int64_t>(vertex[r]) * W);
    if (potts) {
      acc[0] += sum;
    } else {
      msg[0] = sum;
      K::subtract_compat(*t.term, msg, acc, labels);
    }
  }

  SEGPOST_INLINE static void add_message(const TermBuffers& t, int64_t p, Row<1>& msg, Row<1>& acc, int64_t labels) {
    switch (t.d1) {
      case 3: return add_message_fixed<3>(t, p, msg, acc, labels);
      case 6: return add_message_fixed<6>(t, p, msg, acc, labels);
      default: return add_message_fixed<0>(t, p, msg, acc, labels);
    }
  }

  template <int D1>
  SEGPOST_INLINE static void scatter_fixed(const TermBuffers& t, int64_t p, Block row) {
    const int d1 = D1 > 0 ? D1 : t.d1;
    const float* pre = t.term->pre_scale;
    const float scale = pre ? pre[p] : 1.0f;
    const int32_t* vertex = t.lattice->corner_local() + p * d1;
    const float* weight = t.lattice->corner_weight() + p * d1;
    for (int r = 0; r < d1; ++r) add_row(t.target + static_cast<int64_t>(vertex[r]) * W, scale * weight[r], row);
  }

  SEGPOST_INLINE static void scatter(const TermBuffers& t, int64_t p, Row<1>& row) {
    switch (t.d1) {
      case 3: return scatter_fixed<3>(t, p, row[0]);
      case 6: return scatter_fixed<6>(t, p, row[0]);
      default: return scatter_fixed<0>(t, p, row[0]);
    }
  }

  SEGPOST_INLINE static void prefetch(const TermBuffers& t, int64_t p, bool scatter, int64_t) {
    const PermutohedralLattice& l = *t.lattice;
    prefetch_fresh_rows<0>(l.corner_fresh(), l.corner_vertex(), l.corner_local(), t.d1, p, t.blurred,
                           scatter ? t.target : nullptr, W);
  }
};

// PottsWide for narrow rows of W floats: the arithmetic of Narrow<W>.
template <int W>
struct PottsNarrow : PottsTerm {
  using PottsTerm::PottsTerm;

  // As Narrow::add_message_fixed for a Potts term.
  template <int D1>
  SEGPOST_INLINE void slice(int64_t p, Row<1>& acc) const {
    const float scale = potts_weight * (post ? alpha * post[p] : alpha);
    const int32_t* v = vertex + p * D1;
    const float* w = weight + p * D1;
    Block sum{};
    for (int r = 0; r < D1; ++r) sum += (scale * w[r]) * Narrow<W>::load_row(blurred + static_cast<int64_t>(v[r]) * W);
    acc[0] += sum;
  }

  // As Narrow::scatter_fixed.
  template <int D1>
  SEGPOST_INLINE void scatter(int64_t p, Row<1>& row) const {
    const float scale = pre ? pre[p] : 1.0f;
    const int32_t* v = local + p * D1;
    const float* w = weight + p * D1;
    for (int r = 0; r < D1; ++r) Narrow<W>::add_row(target + static_cast<int64_t>(v[r]) * W, scale * w[r], row[0]);
  }

  template <int D1>
  SEGPOST_INLINE void prefetch(int64_t p, bool scatter) const {
    prefetch_fresh_rows<D1>(fresh, vertex, local, D1, p, blurred, scatter ? target : nullptr, W);
  }
  template <int D1>
  SEGPOST_INLINE void prefetch_target(int64_t p) const {
    prefetch_fresh_rows<D1>(fresh, vertex, local, D1, p, nullptr, target, W);
  }
};

// Runs job.run<B, 3, 6>(a, b), with the two terms' rows as View lays them
// out, when the terms are crf_refine's kind: two Potts terms, the smoothness
// kernel (simplex size 3) then the appearance kernel (6), the order of
// crf_refine and of pydensecrf's usual calls. False otherwise: the other
// order goes through the generic loop (one instantiation fewer to compile).
template <int B, class View, class Job>
SEGPOST_INLINE bool potts2_rows(const std::vector<TermBuffers>& terms, const Job& job) {
  if (terms.size() != 2 || terms[0].term->kind != Compatibility::kPotts ||
      terms[1].term->kind != Compatibility::kPotts)
    return false;
  const View a(terms[0]), b(terms[1]);
  if (terms[0].d1 == 3 && terms[1].d1 == 6) {
    job.template run<B, 3, 6>(a, b);
    return true;
  }
  return false;
}

// potts2_rows for vertex rows of `stride` floats. Inlined into the
// multiversioned entries below, so compiled for their targets.
template <class Job>
SEGPOST_INLINE bool potts2_dispatch(int64_t stride, const std::vector<TermBuffers>& terms, const Job& job) {
#ifdef SEGPOST_REFERENCE_ONLY
  // Sanitizer builds run the generic loops alone: instrumented, the fast
  // path's instantiations take longer to compile than an hour. The tests
  // hold the fast path bit-identical to these loops.
  return false;
#endif
  switch (stride) {
    case 2: return potts2_rows<1, PottsNarrow<2>>(terms, job);
    case 4: return potts2_rows<1, PottsNarrow<4>>(terms, job);
    case 8: return potts2_rows<1, PottsWide<1>>(terms, job);
    case 16: return potts2_rows<2, PottsWide<2>>(terms, job);
    case 24: return potts2_rows<3, PottsWide<3>>(terms, job);
    case 32: return potts2_rows<4, PottsWide<4>>(terms, job);
    default: return false;
  }
}

// The two jobs: the update's point loop, and the first scatter.
struct Potts2Update {
  int64_t begin, end;
  const float* unary;
  int64_t labels;
  bool scatter;
  float* q_out;
  int64_t* labels_out;
  template <int B, int D1a, int D1b, class View>
  SEGPOST_INLINE void run(const View& a, const View& b) const {
    Kernels<B>::template update_rows_potts2<D1a, D1b>(begin, end, unary, labels, a, b, scatter, q_out, labels_out);
  }
};

struct Potts2Scatter {
  int64_t begin, end;
  const float* q;
  const float* unary;
  int64_t labels;
  template <int B, int D1a, int D1b, class View>
  SEGPOST_INLINE void run(const View& a, const View& b) const {
    Kernels<B>::template scatter_rows_potts2<D1a, D1b>(begin, end, q, unary, labels, a, b);
  }
};

// The multiversioned entry points (an AVX2/FMA clone and a baseline one),
// over the points [begin, end) and vertex rows of `stride` floats: narrow
// (2 or 4) or the padded label count.

// Scatters the rows of q (or, with q null, of softmax(-unary)) into every
// term's splat target (scatter.cpp).
void scatter_rows(int64_t stride, int64_t begin, int64_t end, const float* q, const float* unary, int64_t labels,
                  const std::vector<TermBuffers>& terms);

// One mean-field update of the points: slice every term's blurred buffer,
// softmax, scatter into the next targets (if `scatter`), emit Q and/or
// labels (update.cpp).
void update_rows(int64_t stride, int64_t begin, int64_t end, const float* unary, int64_t labels,
                 const std::vector<TermBuffers>& terms, bool scatter, float* q_out, int64_t* labels_out);

// out = the pairwise messages of the points (scatter.cpp).
void message_rows(int64_t begin, int64_t end, int64_t labels, const std::vector<TermBuffers>& terms, float* out);

// q_out / labels_out from q_in's rows, or from softmax(-unary) with q_in null (scatter.cpp).
void emit_points(int64_t begin, int64_t end, const float* q_in, const float* unary, int64_t labels, float* q_out,
                 int64_t* labels_out);

}  // namespace mean_field_detail
}  // namespace segpost
