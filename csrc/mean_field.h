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

// Buffers for the filtered signal of every term, reused across calls (fresh
// multi-megabyte buffers page-fault on every call).
using Workspace = std::vector<std::vector<float>>;

// `iterations` mean-field updates starting from q_init (softmax(-unary) when
// null). Writes the final marginals to q_out and/or their argmax to
// labels_out (either may be null); q_out may alias q_init.
void mean_field(const float* unary, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                int iterations, const float* q_init, float* q_out, int64_t* labels_out, Workspace& workspace);

// messages = sum_k compat_k(post_k * K_k(pre_k * q)), (num_points, num_labels).
void pairwise_messages(const float* q, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                       float* messages, Workspace& workspace);

}  // namespace segpost
