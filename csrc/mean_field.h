// Mean-field inference for fully connected CRFs with Gaussian pairwise
// potentials (Krähenbühl & Koltun 2011), on the CPU.
//
// Layout: point-major (num_points, num_labels) float32 rows for the unary,
// the marginals Q and the messages. One update is
//   Q <- softmax(-U - sum_k compat_k(post_k * K_k(pre_k * Q)))
// where K_k filters on the k-th lattice (built once, reused every iteration;
// or, for the smoothness kernel of a grid, the exact separable Gaussian)
// and pre_k / post_k are the kernel normalisation's per-point scales.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "permutohedral.h"
#include "separable_gaussian.h"

namespace segpost {

enum class Compatibility { kPotts = 0, kDiagonal = 1, kMatrix = 2 };

// A term filters on a permutohedral lattice, or (lattice null) on the exact
// grid Gaussian `gaussian`.
struct PairwiseTerm {
  const PermutohedralLattice* lattice;
  const float* pre_scale;   // (num_points) or null
  const float* post_scale;  // (num_points) or null
  Compatibility kind;
  float potts_weight;       // kPotts: compat(x) = -w x
  const float* compat;      // kDiagonal: (L) v, compat(x) = v * x; kMatrix: (L, L) M, compat(x) = M x
  const SeparableGaussian* gaussian = nullptr;
};

// Buffers for the filtered signal of every term, reused across calls (fresh
// multi-megabyte buffers page-fault on every call). Not zero-filled when
// they grow: the mean field zeroes each splat buffer before scattering.
using Workspace = std::vector<ScratchVector<float>>;

// Label rows are padded to whole blocks of 8 floats for the unary.
inline int64_t padded_labels(int64_t labels) { return (labels + 7) / 8 * 8; }

// `iterations` mean-field updates starting from q_init (softmax(-unary) when
// null). unary is (num_points, padded_labels(num_labels)), the pad columns
// ignored, so that every row loads as whole vector blocks; q_init and q_out
// are (num_points, num_labels). Writes the final marginals to q_out and/or
// their argmax to labels_out (either may be null); q_out may alias q_init.
// row_length > 0 says the points are a grid with rows of that many points
// (the last axis of an image or volume): the loops then go tile by tile.
// between_iterations, if set, is called before every iteration; whatever it
// throws (the binding's KeyboardInterrupt) ends the run there and reaches
// the caller, with q_out and labels_out unspecified.
void mean_field(const float* unary, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                int iterations, const float* q_init, float* q_out, int64_t* labels_out, Workspace& workspace,
                int64_t row_length = 0, const std::function<void()>& between_iterations = {});

// messages = sum_k compat_k(post_k * K_k(pre_k * q)), all (num_points, num_labels).
void pairwise_messages(const float* q, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                       float* messages, Workspace& workspace, int64_t row_length = 0);

}  // namespace segpost
