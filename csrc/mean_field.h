// Mean-field inference for fully connected CRFs with Gaussian pairwise
// potentials (Krähenbühl & Koltun 2011), on the CPU.
//
// Layout: point-major (num_points, num_labels) float32 rows for the unary,
// the marginals Q and the messages. One update is
//   Q <- softmax(-U - sum_k compat_k(post_k * K_k(pre_k * Q)))
// where K_k filters on the k-th lattice (built once, reused every iteration)
// and pre_k / post_k are the kernel normalisation's per-point scales.
#pragma once

#include <cstdint>
#include <vector>

#include "permutohedral.h"

namespace segpost {

enum class Compatibility { kPotts = 0, kDiagonal = 1, kMatrix = 2 };

struct PairwiseTerm {
  const PermutohedralLattice* lattice;
  const float* pre_scale;   // (num_points) or null
  const float* post_scale;  // (num_points) or null
  Compatibility kind;
  float potts_weight;       // kPotts: compat(x) = -w x
  const float* compat;      // kDiagonal: (L) v, compat(x) = v * x; kMatrix: (L, L) M, compat(x) = M x
};

// Q = softmax(-unary), row by row.
void softmax_of_negated(const float* unary, int64_t num_points, int64_t num_labels, float* q);

// `iterations` mean-field updates of q in place.
void mean_field(const float* unary, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                int iterations, float* q);

// messages = sum_k compat_k(post_k * K_k(pre_k * q)), (num_points, num_labels).
void pairwise_messages(const float* q, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                       float* messages);

}  // namespace segpost
