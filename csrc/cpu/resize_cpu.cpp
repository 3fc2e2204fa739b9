// Bilinear upsampling of coarse scores straight into the CRF's point-major,
// padded rows: one parallel pass that writes each output row once, in memory
// from the buffer pool, instead of a framework resize and a negation.
#include "../resize.h"

#include "../parallel.h"
#include "simd.h"

namespace segpost {

namespace {

using simd::Block;

SEGPOST_MULTIVERSION
void resize_rows(int64_t y_begin, int64_t y_end, const float* in, int64_t in_w, int64_t channels, const int64_t* y_lo,
                 const int64_t* y_hi, const float* y_weight, const int64_t* x_lo, const int64_t* x_hi,
                 const float* x_weight, int64_t out_w, bool negate, float* out) {
  const float sign = negate ? -1.0f : 1.0f;
  for (int64_t y = y_begin; y < y_end; ++y) {
    const float* top = in + y_lo[y] * in_w * channels;
    const float* bottom = in + y_hi[y] * in_w * channels;
    const float h1 = y_weight[y], h0 = 1.0f - h1;
    float* row = out + y * out_w * channels;
    for (int64_t x = 0; x < out_w; ++x) {
      const float w1 = x_weight[x], w0 = 1.0f - w1;
      const int64_t left = x_lo[x] * channels, right = x_hi[x] * channels;
      for (int64_t k = 0; k < channels; k += 8) {
        const Block upper = w0 * simd::load(top + left + k) + w1 * simd::load(top + right + k);
        const Block lower = w0 * simd::load(bottom + left + k) + w1 * simd::load(bottom + right + k);
        simd::store(row + x * channels + k, sign * (h0 * upper + h1 * lower));
      }
    }
  }
}

}  // namespace

void resize_bilinear_points(const float* in, int64_t in_w, int64_t channels, const int64_t* y_lo, const int64_t* y_hi,
                            const float* y_weight, int64_t out_h, const int64_t* x_lo, const int64_t* x_hi,
                            const float* x_weight, int64_t out_w, bool negate, float* out) {
  parallel_for(out_h, 8, [&](int64_t begin, int64_t end) {
    resize_rows(begin, end, in, in_w, channels, y_lo, y_hi, y_weight, x_lo, x_hi, x_weight, out_w, negate, out);
  });
}

}  // namespace segpost
