// Bilinear resize of point-major rows (the dense CRF's unary layout).
#pragma once

#include <cstdint>

namespace segpost {

// out (out_h * out_w, channels) from in (in_h * in_w, channels), channels a
// multiple of 8: out[y, x] = (1 - wy) * ((1 - wx) in[y0, x0] + wx in[y0, x1])
//                          +      wy  * ((1 - wx) in[y1, x0] + wx in[y1, x1])
// with (y0, y1, wy) = (y_lo[y], y_hi[y], y_weight[y]) and likewise for x, as
// torch's bilinear kernel combines them; negated when `negate` is set (a
// unary from logits). Indices must be in range (checked by the caller).
void resize_bilinear_points(const float* in, int64_t in_w, int64_t channels, const int64_t* y_lo, const int64_t* y_hi,
                            const float* y_weight, int64_t out_h, const int64_t* x_lo, const int64_t* x_hi,
                            const float* x_weight, int64_t out_w, bool negate, float* out);

}  // namespace segpost
