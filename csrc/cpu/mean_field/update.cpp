// The mean-field update's point loop, for every row layout and label count
// (point_loops.h): the largest of the entry points, in its own translation unit.
#include "point_loops.h"

namespace segpost {
namespace mean_field_detail {

SEGPOST_MULTIVERSION
void update_rows(int64_t stride, int64_t begin, int64_t end, const float* unary, int64_t labels,
                 const std::vector<TermBuffers>& terms, bool scatter, float* q_out, int64_t* labels_out) {
  with_layout(stride, [&](auto layout) SEGPOST_INLINE_LAMBDA {
    with_terms(terms, layout, labels, [&](auto& policy) SEGPOST_INLINE_LAMBDA {
      update_loop(begin, end, unary, labels, policy, scatter, q_out, labels_out);
    });
  });
}

}  // namespace mean_field_detail
}  // namespace segpost
