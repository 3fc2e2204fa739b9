// The mean field's pairwise terms at a point: what one term adds to a point's
// scores (its slice through the compatibility) and how the point's new Q
// reaches the term's next splat buffer (its scatter), for any row layout.
//
// Two term policies drive the point loops (point_loops.h):
//   GenericTerms   any terms, any compatibility, the simplex size read per
//                  term: the reference path;
//   TwoPottsTerms  crf_refine's model, exactly two Potts terms of simplex
//                  sizes fixed at compile time: the fast path. It does the
//                  generic terms' arithmetic in their order (the tests hold it
//                  bit-identical), without a branch on a term's kind or size
//                  at every point, a sizeable share of an update that is
//                  mostly instructions.
// Both only hoist a term's pointers (TermView) and call the shared slice and
// scatter of rows.h.
#pragma once

#include <vector>

#include "../../mean_field.h"
#include "../rows.h"

namespace segpost {
namespace mean_field_detail {

using rows::Row;
using simd::Block;

#define SEGPOST_INLINE_LAMBDA __attribute__((always_inline))

// Points ahead whose fresh vertex rows the update prefetches.
constexpr int64_t kRowsAhead = 4;

// One pairwise term's lattice and buffers during a mean-field run.
struct TermBuffers {
  const PairwiseTerm* term;
  const PermutohedralLattice* lattice;  // null for the grid Gaussian (term->gaussian)
  int d1;
  float alpha;
  // The points' corners: the lattice's, or each point its own row (weight 1).
  const int32_t* vertex;
  const int32_t* local;
  const float* weight;
  const uint8_t* fresh;
  // Two splat buffers of lattice->splat_rows() rows: one receives the next
  // iteration's scatter while the other holds the blurred signal being
  // sliced; then the former is blurred in place and the roles swap.
  float* buffer[2];
  int64_t rows;                // lattice->splat_rows()
  const float* blurred = nullptr;
  float* target = nullptr;     // the splat buffer of the next scatter
};

// A term's pointers and constants, read once per partition instead of
// through the term and lattice objects at every point.
struct TermView {
  const int32_t* vertex;  // corner rows of the blurred buffer (slice)
  const int32_t* local;   // corner rows of the splat buffer (scatter)
  const float* weight;    // shared by both: one pointer to keep in a register, not two
  int d1;
  const uint8_t* fresh;
  const float* pre;
  const float* post;
  const float* blurred;
  float* target;
  float alpha;
  Compatibility kind;
  float potts_weight;
  const float* compat;

  explicit TermView(const TermBuffers& t)
      : vertex(t.vertex), local(t.local), weight(t.weight), d1(t.d1), fresh(t.fresh), pre(t.term->pre_scale),
        post(t.term->post_scale),
        blurred(t.blurred), target(t.target), alpha(t.alpha), kind(t.term->kind), potts_weight(t.term->potts_weight),
        compat(t.term->compat) {}

  SEGPOST_INLINE rows::Corners sliced() const { return {vertex, weight, d1}; }
  SEGPOST_INLINE rows::Corners scattered() const { return {local, weight, d1}; }
  // The slice's scale at p, times `factor`: alpha * post[p] (the lattice's
  // constant and the normalisation after the filter).
  SEGPOST_INLINE float slice_scale(int64_t p, float factor) const { return factor * (post ? alpha * post[p] : alpha); }
  // The scatter's: pre[p], the normalisation before the filter.
  SEGPOST_INLINE float scatter_scale(int64_t p) const { return pre ? pre[p] : 1.0f; }
};

inline std::vector<TermView> views(const std::vector<TermBuffers>& terms) {
  return std::vector<TermView>(terms.begin(), terms.end());
}

// Prefetches the vertex rows of point p's fresh corners (the lattice's
// corner_fresh: rows the sweep has not touched for a while, likely out of
// cache): unless null, the blurred row the update will slice and the splat
// row it will scatter into. Vertex ids are data, so no hardware prefetcher
// sees them coming; and with the tiles' locality only about one corner in
// eight is fresh, so the prefetches cost little.
template <int D1>
SEGPOST_INLINE void prefetch_fresh_rows(const TermView& t, int64_t p, const float* blurred, const float* target,
                                        int64_t row_floats) {
  const int64_t n = D1 > 0 ? D1 : t.d1;
  const int64_t bytes = row_floats * static_cast<int64_t>(sizeof(float));
  for (unsigned mask = t.fresh[p]; mask; mask &= mask - 1) {
    const int r = __builtin_ctz(mask);
    if (blurred) {
      const char* src = reinterpret_cast<const char*>(blurred + static_cast<int64_t>(t.vertex[p * n + r]) *
                                                                    row_floats);
      for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(src + k);
      if (bytes > 32) __builtin_prefetch(src + bytes - 1);
    }
    if (!target) continue;
    const char* dst =
        reinterpret_cast<const char*>(target + static_cast<int64_t>(t.local[p * n + r]) * row_floats);
    for (int64_t k = 0; k < bytes; k += 64) __builtin_prefetch(dst + k, 1);
    if (bytes > 32) __builtin_prefetch(dst + bytes - 1, 1);
  }
}

// acc -= compat(msg) for a diagonal or matrix term; acc += w msg for Potts.
template <int B>
SEGPOST_INLINE void subtract_compat(const TermView& t, Row<B>& msg, Row<B>& acc, int64_t labels) {
  switch (t.kind) {
    case Compatibility::kPotts:
      for (int64_t b = 0; b < acc.blocks; ++b) acc[b] += t.potts_weight * msg[b];
      break;
    case Compatibility::kDiagonal:
      for (int64_t b = 0; b < acc.blocks; ++b) acc[b] -= simd::load(t.compat + 8 * b) * msg[b];
      break;
    case Compatibility::kMatrix: {
      // compat holds M transposed and padded: column j of M is a padded row.
      float values[8 * (B > 0 ? B : 1)];
      std::vector<float> wide(B > 0 ? 0 : acc.blocks * 8);
      float* x = B > 0 ? values : wide.data();
      for (int64_t b = 0; b < acc.blocks; ++b) simd::store(x + 8 * b, msg[b]);
      for (int64_t j = 0; j < labels; ++j) {
        const float* column = t.compat + j * acc.blocks * 8;
        for (int64_t b = 0; b < acc.blocks; ++b) acc[b] -= x[j] * simd::load(column + 8 * b);
      }
      break;
    }
  }
}

// acc += potts_weight * (the filtered signal at p): a Potts term's whole
// contribution, its weight folded into the slice weights (no message row).
template <int D1, class Layout>
SEGPOST_INLINE void add_potts_message(const TermView& t, const Layout& layout, int64_t p,
                                      typename Layout::Acc& acc) {
  const float scale = t.slice_scale(p, t.potts_weight);
  if constexpr (Layout::kSliceIntoAccumulator) {
    rows::slice<D1>(layout, t.sliced(), p, scale, t.blurred, acc);
  } else {
    typename Layout::Acc sum = layout.accumulator();
    rows::zero(sum);
    rows::slice<D1>(layout, t.sliced(), p, scale, t.blurred, sum);
    for (int64_t b = 0; b < acc.blocks; ++b) acc[b] += sum[b];
  }
}

// acc += (Potts) or -= compat of (the filtered signal at p); msg is scratch.
// Only the slice depends on the simplex size: the compatibility is compiled once.
template <class Layout>
SEGPOST_INLINE void add_message(const TermView& t, const Layout& layout, int64_t p, typename Layout::Acc& msg,
                                typename Layout::Acc& acc, int64_t labels) {
  if (t.kind == Compatibility::kPotts) {
    rows::with_simplex_size(t.d1, [&](auto d1) SEGPOST_INLINE_LAMBDA {
      add_potts_message<decltype(d1)::value>(t, layout, p, acc);
    });
    return;
  }
  rows::zero(msg);
  rows::with_simplex_size(t.d1, [&](auto d1) SEGPOST_INLINE_LAMBDA {
    rows::slice<decltype(d1)::value>(layout, t.sliced(), p, t.slice_scale(p, 1.0f), t.blurred, msg);
  });
  subtract_compat(t, msg, acc, labels);
}

// Scatter row (times pre[p]) of point p into the term's splat target.
template <int D1, class Layout>
SEGPOST_INLINE void scatter_point(const TermView& t, const Layout& layout, int64_t p,
                                  const typename Layout::Acc& row) {
  rows::scatter<D1>(layout, t.scattered(), p, t.scatter_scale(p), t.target, row);
}

// The reference path: any terms, their simplex sizes picked per call.
template <class Layout>
struct GenericTerms {
  using Acc = typename Layout::Acc;
  // The first scatter a point at a time: it runs once per inference, and
  // pairs would only add build time.
  static constexpr bool kScatterPairs = false;
  const std::vector<TermView> terms;
  Layout layout;
  int64_t labels;
  Acc msg;

  GenericTerms(const std::vector<TermBuffers>& buffers, Layout layout_, int64_t labels_)
      : terms(views(buffers)), layout(layout_), labels(labels_), msg(layout_.accumulator()) {}

  SEGPOST_INLINE void add_message(int64_t p, Acc& acc) {
    for (const TermView& t : terms) mean_field_detail::add_message(t, layout, p, msg, acc, labels);
  }
  // Points p and p + 1, term by term.
  SEGPOST_INLINE void add_messages(int64_t p, Acc& acc, Acc& next) {
    for (const TermView& t : terms) {
      mean_field_detail::add_message(t, layout, p, msg, acc, labels);
      mean_field_detail::add_message(t, layout, p + 1, msg, next, labels);
    }
  }
  SEGPOST_INLINE void scatter_one(int64_t p, const Acc& row) const {
    for (const TermView& t : terms)
      rows::with_simplex_size(t.d1, [&](auto d1) SEGPOST_INLINE_LAMBDA {
        scatter_point<decltype(d1)::value>(t, layout, p, row);
      });
  }
  // Points p and p + 1, term by term: each vertex row still receives point
  // p's scatter before point p + 1's, so the sums are those of one point at
  // a time.
  SEGPOST_INLINE void scatter(int64_t p, const Acc& acc, const Acc& next) const {
    for (const TermView& t : terms)
      rows::with_simplex_size(t.d1, [&](auto d1) SEGPOST_INLINE_LAMBDA {
        scatter_point<decltype(d1)::value>(t, layout, p, acc);
        scatter_point<decltype(d1)::value>(t, layout, p + 1, next);
      });
  }
  // The fresh rows of points p and p + 1.
  SEGPOST_INLINE void prefetch(int64_t p, bool scatter) const {
    for (const TermView& t : terms) {
      prefetch_fresh_rows<0>(t, p, t.blurred, scatter ? t.target : nullptr, layout.floats());
      prefetch_fresh_rows<0>(t, p + 1, t.blurred, scatter ? t.target : nullptr, layout.floats());
    }
  }
  SEGPOST_INLINE void prefetch_targets(int64_t) const {}
};

// The fast path: two Potts terms of simplex sizes D1a, D1b.
template <int D1a, int D1b, class Layout>
struct TwoPottsTerms {
  using Acc = typename Layout::Acc;
  static constexpr bool kScatterPairs = true;
  const TermView& a;
  const TermView& b;
  Layout layout;

  SEGPOST_INLINE void add_message(int64_t p, Acc& acc) const {
    add_potts_message<D1a>(a, layout, p, acc);
    add_potts_message<D1b>(b, layout, p, acc);
  }
  SEGPOST_INLINE void add_messages(int64_t p, Acc& acc, Acc& next) const {
    add_potts_message<D1a>(a, layout, p, acc);
    add_potts_message<D1a>(a, layout, p + 1, next);
    add_potts_message<D1b>(b, layout, p, acc);
    add_potts_message<D1b>(b, layout, p + 1, next);
  }
  SEGPOST_INLINE void scatter_one(int64_t p, const Acc& row) const {
    scatter_point<D1a>(a, layout, p, row);
    scatter_point<D1b>(b, layout, p, row);
  }
  SEGPOST_INLINE void scatter(int64_t p, const Acc& acc, const Acc& next) const {
    scatter_point<D1a>(a, layout, p, acc);
    scatter_point<D1a>(a, layout, p + 1, next);
    scatter_point<D1b>(b, layout, p, acc);
    scatter_point<D1b>(b, layout, p + 1, next);
  }
  SEGPOST_INLINE void prefetch(int64_t p, bool scatter) const {
    prefetch_fresh_rows<D1a>(a, p, a.blurred, scatter ? a.target : nullptr, layout.floats());
    prefetch_fresh_rows<D1a>(a, p + 1, a.blurred, scatter ? a.target : nullptr, layout.floats());
    prefetch_fresh_rows<D1b>(b, p, b.blurred, scatter ? b.target : nullptr, layout.floats());
    prefetch_fresh_rows<D1b>(b, p + 1, b.blurred, scatter ? b.target : nullptr, layout.floats());
  }
  // The first scatter's prefetch: the splat rows of points p and p + 1 only.
  SEGPOST_INLINE void prefetch_targets(int64_t p) const {
    prefetch_fresh_rows<D1a>(a, p, nullptr, a.target, layout.floats());
    prefetch_fresh_rows<D1a>(a, p + 1, nullptr, a.target, layout.floats());
    prefetch_fresh_rows<D1b>(b, p, nullptr, b.target, layout.floats());
    prefetch_fresh_rows<D1b>(b, p + 1, nullptr, b.target, layout.floats());
  }
};

// crf_refine's model: two Potts terms, the smoothness kernel then the
// appearance kernel, the order of crf_refine and of pydensecrf's usual calls.
// An image's have simplex sizes 3 and 6. The other order goes through the
// generic loop (one instantiation fewer to compile).
// A volume's with a one-channel scan: smoothness on (z, y, x) (simplex size
// 4, or 1 on the exact grid Gaussian: each point its own row), appearance on
// (z, y, x, intensity) (5).
template <int D1a, int D1b>
inline bool is_two_potts(const std::vector<TermBuffers>& terms) {
  return terms.size() == 2 && terms[0].term->kind == Compatibility::kPotts &&
         terms[1].term->kind == Compatibility::kPotts && terms[0].d1 == D1a && terms[1].d1 == D1b;
}

}  // namespace mean_field_detail
}  // namespace segpost
