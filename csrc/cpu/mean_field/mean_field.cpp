// CPU mean field, fused: one pass over the points per iteration slices every
// pairwise term's blurred lattice at the point, applies the compatibilities,
// adds the unary, normalises with a vectorised softmax and scatters the new Q
// straight into the next iteration's splat buffers. Q itself is written only
// after the last iteration, so an iteration streams little more than the
// unary through memory; the lattices' vertex buffers stay in cache.
//
// Points are cut into the lattices' fixed splat partitions (sizes only, never
// the thread count), each partition scattered by one thread into the rows it
// owns and its private rows, which are summed in partition order: results
// are identical whatever the thread count.
//
// This file is the orchestration: the workspace, the partitions, the
// gather-and-blur between iterations. The point loops are in point_loops.h.
#include "../../mean_field.h"

#include <algorithm>
#include <vector>

#include "../../parallel.h"
#include "../../tiles.h"
#include "../lattice/sizes.h"
#include "point_loops.h"

namespace segpost {

namespace {

using namespace mean_field_detail;

constexpr int64_t kPointGrain = 2048;

// Floats per vertex row: a narrow row of 2 or 4 for the mean field with few
// labels (Narrow), else the padded label count.
int64_t row_width(int64_t labels, bool narrow) {
  if (narrow && labels <= 4) return labels <= 2 ? 2 : 4;
  return padded_labels(labels);
}

// Lays out the workspace: per term, two splat buffers of rows of `stride` floats.
std::vector<TermBuffers> prepare(const std::vector<PairwiseTerm>& terms, int64_t stride, Workspace& workspace) {
  workspace.resize(terms.size());
  std::vector<TermBuffers> out;
  for (std::size_t k = 0; k < terms.size(); ++k) {
    const PermutohedralLattice* lattice = terms[k].lattice;
    const SeparableGaussian* gaussian = terms[k].gaussian;
    // The grid Gaussian: one vertex per point, no lattice constant.
    const int64_t rows = lattice ? lattice->splat_rows() : gaussian->num_points();
    const std::size_t floats = static_cast<std::size_t>(rows) * stride;
    ScratchVector<float>& memory = workspace[k];
    if (memory.size() < 2 * floats) memory.resize(2 * floats);
    TermBuffers t{&terms[k],
                  lattice,
                  lattice ? lattice->dim() + 1 : 1,
                  lattice ? lattice->alpha() : 1.0f,
                  lattice ? lattice->corner_vertex() : gaussian->corner_vertex(),
                  lattice ? lattice->corner_local() : gaussian->corner_vertex(),
                  lattice ? lattice->corner_weight() : gaussian->corner_weight(),
                  lattice ? lattice->corner_fresh() : gaussian->corner_fresh(),
                  {memory.data(), memory.data() + floats},
                  rows};
    t.target = t.buffer[0];
    out.push_back(t);
  }
  return out;
}

// Zeroes every term's splat target before a scatter.
void zero_targets(std::vector<TermBuffers>& terms, int64_t stride) {
  for (TermBuffers& t : terms) PermutohedralLattice::zero_rows(t.target, t.rows, stride);
}

// Runs fn(begin, end) over every splat partition's points, in
// parallel (tile by tile within a partition, see for_tiles). All the lattices
// of a CRF share the points, hence the partitions. The order is fixed by the
// partition and the grid alone, never by the thread count.
// (The grid Gaussian's rows are its points' own: any partitions suit it.)
template <class F>
void for_partitions(const std::vector<TermBuffers>& terms, int64_t row_length, const F& fn) {
  const int64_t num_points = terms[0].lattice ? terms[0].lattice->num_points() : terms[0].term->gaussian->num_points();
  const int64_t partitions = lattice_detail::splat_partitions(num_points);
  parallel_for(partitions, 1, [&](int64_t first, int64_t last) {
    for (int64_t part = first; part < last; ++part)
      for_tiles(num_points * part / partitions, num_points * (part + 1) / partitions, row_length, fn);
  });
}

// Lays out the workspace and scatters the rows of q (or, with q null, of
// softmax(-unary)) into every term's zeroed first target: the start of a
// mean-field run and of the messages alike.
std::vector<TermBuffers> first_scatter(const std::vector<PairwiseTerm>& terms, int64_t stride, Workspace& workspace,
                                       int64_t row_length, const float* q, const float* unary, int64_t labels) {
  std::vector<TermBuffers> buffers = prepare(terms, stride, workspace);
  zero_targets(buffers, stride);
  for_partitions(buffers, row_length, [&](int64_t begin, int64_t end) {
    scatter_rows(stride, begin, end, q, unary, labels, buffers);
  });
  return buffers;
}

// Gathers each term's scatter target and blurs it in place: it becomes the
// buffer sliced, and the buffer sliced last time becomes the next target.
void gather_and_blur(std::vector<TermBuffers>& terms, int64_t stride) {
  for (TermBuffers& t : terms) {
    if (t.lattice) {
      t.lattice->gather_partitions(t.target, stride);
      t.lattice->blur(t.target, stride, false);
    } else {
      t.term->gaussian->blur(t.target, stride);
    }
    t.blurred = t.target;
    t.target = t.target == t.buffer[0] ? t.buffer[1] : t.buffer[0];
  }
}

}  // namespace

void mean_field(const float* unary, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                int iterations, const float* q_init, float* q_out, int64_t* labels_out, Workspace& workspace,
                int64_t row_length, const std::function<void()>& between_iterations) {
  if (iterations <= 0 || terms.empty()) {  // no update, or none that changes softmax(-U)
    const float* source = iterations <= 0 ? q_init : nullptr;
    parallel_for(num_points, kPointGrain, [&](int64_t begin, int64_t end) {
      emit_points(begin, end, source, unary, num_labels, q_out, labels_out);
    });
    return;
  }
  const int64_t stride = row_width(num_labels, true);
  std::vector<TermBuffers> buffers = first_scatter(terms, stride, workspace, row_length, q_init, unary, num_labels);
  for (int it = 0; it < iterations; ++it) {
    if (between_iterations) between_iterations();
    gather_and_blur(buffers, stride);
    const bool last = it + 1 == iterations;
    if (!last) zero_targets(buffers, stride);
    float* q = last ? q_out : nullptr;
    int64_t* labels = last ? labels_out : nullptr;
    for_partitions(buffers, row_length, [&](int64_t begin, int64_t end) {
      update_rows(stride, begin, end, unary, num_labels, buffers, !last, q, labels);
    });
  }
}

void pairwise_messages(const float* q, int64_t num_points, int64_t num_labels, const std::vector<PairwiseTerm>& terms,
                       float* messages, Workspace& workspace, int64_t row_length) {
  if (terms.empty()) {
    std::fill(messages, messages + num_points * num_labels, 0.0f);
    return;
  }
  const int64_t stride = row_width(num_labels, false);
  std::vector<TermBuffers> buffers = first_scatter(terms, stride, workspace, row_length, q, nullptr, num_labels);
  gather_and_blur(buffers, stride);
  parallel_for(num_points, kPointGrain,
               [&](int64_t begin, int64_t end) { message_rows(begin, end, num_labels, buffers, messages); });
}

}  // namespace segpost
