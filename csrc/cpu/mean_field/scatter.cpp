// The first scatter, the pairwise messages and the emit-only pass
// (point_loops.h), in a translation unit beside update.cpp.
#include "point_loops.h"

namespace segpost {
namespace mean_field_detail {

SEGPOST_MULTIVERSION
void scatter_rows(int64_t stride, int64_t begin, int64_t end, const float* q, const float* unary, int64_t labels,
                  const std::vector<TermBuffers>& terms) {
  with_layout(stride, [&](auto layout) SEGPOST_INLINE_LAMBDA {
    with_terms(terms, layout, labels, [&](auto& policy) SEGPOST_INLINE_LAMBDA {
      scatter_loop(begin, end, q, unary, labels, policy);
    });
  });
}

SEGPOST_MULTIVERSION
void message_rows(int64_t begin, int64_t end, int64_t labels, const std::vector<TermBuffers>& terms, float* out) {
  with_wide_layout((labels + 7) / 8, [&](auto layout) SEGPOST_INLINE_LAMBDA {
    message_loop(begin, end, labels, layout, terms, out);
  });
}

SEGPOST_MULTIVERSION
void emit_points(int64_t begin, int64_t end, const float* q_in, const float* unary, int64_t labels, float* q_out,
                 int64_t* labels_out) {
  with_wide_layout((labels + 7) / 8, [&](auto layout) SEGPOST_INLINE_LAMBDA {
    emit_loop(begin, end, q_in, unary, labels, layout, q_out, labels_out);
  });
}

}  // namespace mean_field_detail
}  // namespace segpost
