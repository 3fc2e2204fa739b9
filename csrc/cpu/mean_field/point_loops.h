// The mean field's point loops, one body each, over a term policy
// (terms.h: GenericTerms, the reference path, or TwoPottsTerms, the fast
// path) and a row layout (rows.h: Wide<B> or Narrow<W>), and the dispatch
// from run-time sizes to those templates.
//
// Everything here is inlined into the multiversioned entry points declared at
// the end, which live in their own translation units (update.cpp,
// scatter.cpp) so that a parallel build compiles them side by side; the
// orchestration (mean_field.cpp) calls only those entry points.
#pragma once

#include <vector>

#include "softmax.h"
#include "terms.h"

namespace segpost {
namespace mean_field_detail {

// The update's point loop: acc = -unary row, plus every term's message,
// softmax, scatter into the next splat buffers, emit. Two points at a time
// so that their softmax chains overlap (softmax_pair); the terms add and
// scatter them term by term, each vertex row receiving p before p + 1, so the
// results are those of one point at a time.
template <class Terms>
SEGPOST_INLINE void update_loop(int64_t begin, int64_t end, const float* unary, int64_t labels, Terms& terms,
                                bool scatter_next, float* q_out, int64_t* labels_out) {
  auto acc = terms.layout.accumulator(), next = terms.layout.accumulator();
  const int64_t stride = acc.blocks * 8;
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
    load_negated(acc, unary + p * stride, labels);
    terms.add_message(p, acc);
    softmax(acc);
    if (scatter_next) terms.scatter_one(p, acc);
    emit(acc, p, labels, q_out, labels_out);
  }
}

// The first scatter: the rows of q (or, with q null, of softmax(-unary)) into
// every term's splat target; two points at a time as in the update when the
// policy says so (Terms::kScatterPairs), one at a time otherwise.
template <class Terms>
SEGPOST_INLINE void scatter_loop(int64_t begin, int64_t end, const float* q, const float* unary, int64_t labels,
                                 const Terms& terms) {
  auto acc = terms.layout.accumulator();
  int64_t p = begin;
  if constexpr (Terms::kScatterPairs) {
    auto next = terms.layout.accumulator();
    for (; p + 1 < end; p += 2) {
      if (p + kRowsAhead + 1 < end) terms.prefetch_targets(p + kRowsAhead);
      if (q) {
        load_q(acc, p, q, unary, labels);
        load_q(next, p + 1, q, unary, labels);
      } else {
        load_negated_pair(acc, next, p, end, unary, labels);
        softmax_pair(acc, next);
      }
      terms.scatter(p, acc, next);
    }
  }
  for (; p < end; ++p) {
    load_q(acc, p, q, unary, labels);
    terms.scatter_one(p, acc);
  }
}

// out = the pairwise messages of the points (kl_divergence's energy).
template <int B>
SEGPOST_INLINE void message_loop(int64_t begin, int64_t end, int64_t labels, rows::Wide<B> layout,
                                 const std::vector<TermBuffers>& buffers, float* out) {
  const std::vector<TermView> terms = views(buffers);
  Row<B> acc = layout.accumulator(), msg = layout.accumulator();
  for (int64_t p = begin; p < end; ++p) {
    rows::zero(acc);
    for (const TermView& t : terms) {
      rows::zero(msg);
      rows::with_simplex_size(t.d1, [&](auto d1) SEGPOST_INLINE_LAMBDA {
        rows::slice<decltype(d1)::value>(layout, t.sliced(), p, t.slice_scale(p, 1.0f), t.blurred, msg);
      });
      subtract_compat(t, msg, acc, labels);
    }
    for (int64_t b = 0; b < acc.blocks; ++b) store_labels(out + p * labels, b, labels, -acc[b]);
  }
}

// Rows of q_in (or of softmax(-unary) when q_in is null), emitted.
template <int B>
SEGPOST_INLINE void emit_loop(int64_t begin, int64_t end, const float* q_in, const float* unary, int64_t labels,
                              rows::Wide<B> layout, float* q_out, int64_t* labels_out) {
  Row<B> acc = layout.accumulator();
  for (int64_t p = begin; p < end; ++p) {
    load_q(acc, p, q_in, unary, labels);
    emit(acc, p, labels, q_out, labels_out);
  }
}

// Calls fn(rows::Wide<B>(blocks)) for B = blocks up to 8 (64 labels), B = 0
// (run time) beyond.
template <class F>
SEGPOST_INLINE void with_wide_layout(int64_t blocks, F&& fn) {
  switch (blocks) {
    case 1: return fn(rows::Wide<1>(1));
    case 2: return fn(rows::Wide<2>(2));
    case 3: return fn(rows::Wide<3>(3));
    case 4: return fn(rows::Wide<4>(4));
    case 5: return fn(rows::Wide<5>(5));
    case 6: return fn(rows::Wide<6>(6));
    case 7: return fn(rows::Wide<7>(7));
    case 8: return fn(rows::Wide<8>(8));
    default: return fn(rows::Wide<0>(blocks));
  }
}

// Calls fn(layout) for vertex rows of `stride` floats: narrow (2 or 4) or
// whole blocks of 8 (mean_field.cpp's row_width).
template <class F>
SEGPOST_INLINE void with_layout(int64_t stride, F&& fn) {
  if (stride == 2) return fn(rows::Narrow<2>());
  if (stride == 4) return fn(rows::Narrow<4>());
  with_wide_layout(stride / 8, fn);
}

// Whether the fast path is compiled for a layout: the narrow rows and up to
// 4 blocks (32 labels). Wider rows spend their time in the rows themselves,
// not in per-point branches.
template <class Layout>
constexpr bool kHasFastPath = false;
template <int W>
constexpr bool kHasFastPath<rows::Narrow<W>> = true;
template <int B>
constexpr bool kHasFastPath<rows::Wide<B>> = B >= 1 && B <= 4;

template <class Layout>
constexpr bool kHasVolumeFastPath = false;
template <int W>
constexpr bool kHasVolumeFastPath<rows::Narrow<W>> = true;

// Runs fn(terms) with the fast path's policy for crf_refine's model when it
// is compiled for the layout, else with the generic one.
template <class Layout, class F>
SEGPOST_INLINE void with_terms(const std::vector<TermBuffers>& buffers, Layout layout, int64_t labels, F&& fn) {
#ifndef SEGPOST_REFERENCE_ONLY
  // (Sanitizer builds run the generic loops alone: instrumented, the fast
  // path's instantiations take longer to compile than an hour.)
  if constexpr (kHasFastPath<Layout>) {
    if (is_two_potts<3, 6>(buffers)) {
      const TermView a(buffers[0]), b(buffers[1]);
      TwoPottsTerms<3, 6, Layout> two{a, b, layout};
      return fn(two);
    }
  }
  // Volumes have few labels: their fast path is compiled for narrow rows only.
  if constexpr (kHasVolumeFastPath<Layout>) {
    if (is_two_potts<4, 5>(buffers)) {
      const TermView a(buffers[0]), b(buffers[1]);
      TwoPottsTerms<4, 5, Layout> two{a, b, layout};
      return fn(two);
    }
    if (is_two_potts<1, 5>(buffers)) {  // the smoothness kernel on the exact grid Gaussian
      const TermView a(buffers[0]), b(buffers[1]);
      TwoPottsTerms<1, 5, Layout> two{a, b, layout};
      return fn(two);
    }
  }
#endif
  GenericTerms<Layout> generic(buffers, layout, labels);
  fn(generic);
}

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
