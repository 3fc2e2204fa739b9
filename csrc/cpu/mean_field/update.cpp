// The mean-field update's point loop, for every row layout and label count
// (see kernels.h): the largest of the entry points, in its own translation unit.
#include "kernels.h"

namespace segpost {
namespace mean_field_detail {

SEGPOST_MULTIVERSION
void update_rows(int64_t stride, int64_t begin, int64_t end, const float* unary, int64_t labels,
                 const std::vector<TermBuffers>& terms, bool scatter, float* q_out, int64_t* labels_out) {
  if (potts2_dispatch(stride, terms, Potts2Update{begin, end, unary, labels, scatter, q_out, labels_out})) return;
  if (stride == 2)
    return Kernels<1>::update_rows<Narrow<2>>(begin, end, unary, labels, 1, terms, scatter, q_out, labels_out);
  if (stride == 4)
    return Kernels<1>::update_rows<Narrow<4>>(begin, end, unary, labels, 1, terms, scatter, q_out, labels_out);
  const int64_t blocks = stride / 8;
  SEGPOST_DISPATCH_BLOCKS(blocks, update_rows, begin, end, unary, labels, blocks, terms, scatter, q_out,
                          labels_out)
}

}  // namespace mean_field_detail
}  // namespace segpost
