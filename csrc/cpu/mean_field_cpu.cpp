// CPU mean-field updates: the lattice filters every label at once, then one
// fused, parallel pass per point applies the compatibilities, adds the unary
// and normalises with a vectorised softmax.
#include "../mean_field.h"

#include <algorithm>
#include <vector>

#include "../parallel.h"
#include "simd.h"

namespace segpost {

namespace {

using simd::Block;

constexpr int64_t kPointGrain = 2048;

// Per-thread scratch rows padded to whole blocks; padding lanes are masked.
// Plain float storage (blocks are loaded and stored unaligned): std::vector
// of a vector type would drop the type's under-alignment.
struct RowScratch {
  explicit RowScratch(int64_t labels)
      : blocks((labels + 7) / 8), acc(blocks * 8), tmp(blocks * 8, 0.0f), mask(blocks * 8, 0.0f) {
    for (int64_t k = 0; k < labels; ++k) mask[k] = 1.0f;
  }
  Block get(const std::vector<float>& row, int64_t b) const { return simd::load(row.data() + 8 * b); }
  void set(std::vector<float>& row, int64_t b, Block value) { simd::store(row.data() + 8 * b, value); }
  int64_t blocks;
  std::vector<float> acc, tmp, mask;
};

// acc = -src (negate) or acc = 0 (src null), padding lanes zero.
inline void start_row(RowScratch& s, const float* src, int64_t labels) {
  std::fill(s.acc.begin(), s.acc.end(), 0.0f);
  if (src)
    for (int64_t k = 0; k < labels; ++k) s.acc[k] = -src[k];
}

// acc -= compat(message), for one point.
inline void subtract_compat(const PairwiseTerm& term, const float* message, int64_t labels, RowScratch& s) {
  switch (term.kind) {
    case Compatibility::kPotts:
      std::copy(message, message + labels, s.tmp.begin());
      for (int64_t b = 0; b < s.blocks; ++b) s.set(s.acc, b, s.get(s.acc, b) + term.potts_weight * s.get(s.tmp, b));
      break;
    case Compatibility::kDiagonal:
      std::copy(message, message + labels, s.tmp.begin());
      for (int64_t b = 0; b < s.blocks; ++b)
        s.set(s.acc, b, s.get(s.acc, b) - simd::load(term.compat + 8 * b) * s.get(s.tmp, b));
      break;
    case Compatibility::kMatrix:
      // compat holds M transposed and padded: column j of M is a padded row.
      for (int64_t j = 0; j < labels; ++j) {
        const float x = message[j];
        const float* column = term.compat + j * s.blocks * 8;
        for (int64_t b = 0; b < s.blocks; ++b) s.set(s.acc, b, s.get(s.acc, b) - x * simd::load(column + 8 * b));
      }
      break;
  }
}

// Softmax of s.acc over the real labels, written to q_row.
inline void softmax_row(RowScratch& s, int64_t labels, float* q_row) {
  float peak = s.acc[0];
  for (int64_t k = 1; k < labels; ++k) peak = std::max(peak, s.acc[k]);
  Block total{};
  for (int64_t b = 0; b < s.blocks; ++b) {
    const Block e = simd::exp(s.get(s.acc, b) - peak) * s.get(s.mask, b);
    s.set(s.acc, b, e);
    total += e;
  }
  float sum = 0.0f;
  for (int lane = 0; lane < 8; ++lane) sum += total[lane];
  const float inv = 1.0f / sum;  // sum >= 1: the largest entry contributes exp(0)
  for (int64_t k = 0; k < labels; ++k) q_row[k] = s.acc[k] * inv;
}

SEGPOST_MULTIVERSION
void update_points(int64_t begin, int64_t end, const float* unary, int64_t labels,
                   const std::vector<PairwiseTerm>& terms, const std::vector<std::vector<float>>& messages, float* q) {
  RowScratch s(labels);
  for (int64_t p = begin; p < end; ++p) {
    start_row(s, unary + p * labels, labels);
    for (std::size_t k = 0; k < terms.size(); ++k) subtract_compat(terms[k], messages[k].data() + p * labels, labels, s);
    softmax_row(s, labels, q + p * labels);
  }
}

SEGPOST_MULTIVERSION
void softmax_points(int64_t begin, int64_t end, const float* unary, int64_t labels, float* q) {
  RowScratch s(labels);
  for (int64_t p = begin; p < end; ++p) {
    start_row(s, unary + p * labels, labels);
    softmax_row(s, labels, q + p * labels);
  }
}

SEGPOST_MULTIVERSION
void combine_messages(int64_t begin, int64_t end, int64_t labels, const std::vector<PairwiseTerm>& terms,
                      const std::vector<std::vector<float>>& filtered, float* messages) {
  RowScratch s(labels);
  for (int64_t p = begin; p < end; ++p) {
    start_row(s, nullptr, labels);
    for (std::size_t k = 0; k < terms.size(); ++k) subtract_compat(terms[k], filtered[k].data() + p * labels, labels, s);
    for (int64_t k = 0; k < labels; ++k) messages[p * labels + k] = -s.acc[k];
  }
}

void filter_all(const float* q, int64_t labels, const std::vector<PairwiseTerm>& terms,
                std::vector<std::vector<float>>& filtered) {
  for (std::size_t k = 0; k < terms.size(); ++k)
    terms[k].lattice->filter(q, labels, filtered[k].data(), false, terms[k].pre_scale, terms[k].post_scale);
}

}  // namespace

void softmax_of_negated(const float* unary, int64_t num_points, int64_t num_labels, float* q) {
  parallel_for(num_points, kPointGrain,
               [&](int64_t begin, int64_t end) { softmax_points(begin, end, unary, num_labels, q); });
}

void mean_field(const float* unary, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                int iterations, float* q) {
  std::vector<std::vector<float>> filtered(terms.size());
  for (auto& f : filtered) f.resize(static_cast<std::size_t>(num_points) * num_labels);
  for (int it = 0; it < iterations; ++it) {
    filter_all(q, num_labels, terms, filtered);
    parallel_for(num_points, kPointGrain, [&](int64_t begin, int64_t end) {
      update_points(begin, end, unary, num_labels, terms, filtered, q);
    });
  }
}

void pairwise_messages(const float* q, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                       float* messages) {
  std::vector<std::vector<float>> filtered(terms.size());
  for (auto& f : filtered) f.resize(static_cast<std::size_t>(num_points) * num_labels);
  filter_all(q, num_labels, terms, filtered);
  parallel_for(num_points, kPointGrain, [&](int64_t begin, int64_t end) {
    combine_messages(begin, end, num_labels, terms, filtered, messages);
  });
}

}  // namespace segpost
