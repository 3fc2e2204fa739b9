// The first scatter, the pairwise messages and the emit-only pass (see
// kernels.h), in a translation unit beside update.cpp.
#include "kernels.h"

namespace segpost {
namespace mean_field_detail {

SEGPOST_MULTIVERSION
void scatter_rows(int64_t stride, int64_t begin, int64_t end, const float* q, const float* unary, int64_t labels,
                  const std::vector<TermBuffers>& terms) {
  if (potts2_dispatch(stride, terms, Potts2Scatter{begin, end, q, unary, labels})) return;
  if (stride == 2) return Kernels<1>::scatter_rows<Narrow<2>>(begin, end, q, unary, labels, 1, terms);
  if (stride == 4) return Kernels<1>::scatter_rows<Narrow<4>>(begin, end, q, unary, labels, 1, terms);
  const int64_t blocks = stride / 8;
  SEGPOST_DISPATCH_BLOCKS(blocks, scatter_rows, begin, end, q, unary, labels, blocks, terms)
}

SEGPOST_MULTIVERSION
void message_rows(int64_t begin, int64_t end, int64_t labels, const std::vector<TermBuffers>& terms, float* out) {
  const int64_t blocks = (labels + 7) / 8;
  SEGPOST_DISPATCH_BLOCKS(blocks, message_rows, begin, end, labels, blocks, terms, out)
}

SEGPOST_MULTIVERSION
void emit_points(int64_t begin, int64_t end, const float* q_in, const float* unary, int64_t labels, float* q_out,
                 int64_t* labels_out) {
  const int64_t blocks = (labels + 7) / 8;
  SEGPOST_DISPATCH_BLOCKS(blocks, emit_rows, begin, end, q_in, unary, labels, blocks, q_out, labels_out)
}

}  // namespace mean_field_detail
}  // namespace segpost
