// The mean-field model segpost._C exposes: a CRF's pairwise terms as the
// mean-field kernel sees them, holding references to its lattices (Python
// objects, kept alive) and padded copies of the compatibilities and
// normalisation scales; `infer` runs the kernel (mean_field.h) on them.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../mean_field.h"
#include "../../permutohedral.h"
#include "../../python_arrays.h"
#include "../../python_gil.h"
#include "../../separable_gaussian.h"

namespace segpost {
namespace python {

class MeanFieldModel {
 public:
  MeanFieldModel(int64_t num_points, int64_t num_labels, int64_t row_length)
      : n_(num_points), labels_(num_labels), row_length_(row_length) {
    if (num_points < 1 || num_labels < 1) throw std::invalid_argument("need at least one point and one label");
    if (row_length < 0 || (row_length > 0 && num_points % row_length != 0))
      throw std::invalid_argument("row_length must divide the number of points (0 for no grid)");
  }

  void add_term(py::object lattice_obj, std::optional<FloatArray> pre, std::optional<FloatArray> post, int kind,
                float potts, std::optional<FloatArray> compat) {
    // A permutohedral lattice or the exact grid Gaussian.
    Term term;
    if (py::isinstance<SeparableGaussian>(lattice_obj)) {
      term.gaussian = &lattice_obj.cast<const SeparableGaussian&>();
      if (term.gaussian->num_points() != n_) throw std::invalid_argument("kernel has the wrong number of points");
    } else {
      const auto& lattice = lattice_obj.cast<const PermutohedralLattice&>();
      if (lattice.num_points() != n_) throw std::invalid_argument("lattice has the wrong number of points");
      term.lattice = &lattice;
    }
    term.owner = lattice_obj;
    term.kind = static_cast<segpost::Compatibility>(kind);
    term.potts = potts;
    // Held, not copied: the model reads them in place (the Python side
    // passes read-only arrays, shared with the grid lattice cache).
    for (auto [src, dst] : {std::make_pair(&pre, &term.pre), std::make_pair(&post, &term.post)}) {
      if (!*src) continue;
      if ((*src)->ndim() != 1 || (*src)->shape(0) != n_) throw std::invalid_argument("scales must be (N,)");
      *dst = **src;
    }
    const int64_t padded = segpost::padded_labels(labels_);
    if (kind == 1) {
      if (!compat || compat->ndim() != 1 || compat->shape(0) != labels_)
        throw std::invalid_argument("diagonal compatibility must be (L,)");
      term.compat.assign(padded, 0.0f);
      std::copy(compat->data(), compat->data() + labels_, term.compat.begin());
    } else if (kind == 2) {
      if (!compat || compat->ndim() != 2 || compat->shape(0) != labels_ || compat->shape(1) != labels_)
        throw std::invalid_argument("matrix compatibility must be (L, L)");
      // Column j of M as a padded row: the kernel walks columns.
      term.compat.assign(labels_ * padded, 0.0f);
      const float* m = compat->data();
      for (int64_t i = 0; i < labels_; ++i)
        for (int64_t j = 0; j < labels_; ++j) term.compat[j * padded + i] = m[i * labels_ + j];
    } else if (kind != 0) {
      throw std::invalid_argument("unknown compatibility kind");
    }
    terms_.push_back(std::move(term));
  }

  // Runs `iterations` updates from q (softmax(-unary) when None); returns
  // (Q or None, labels or None) as asked.
  py::tuple infer(const FloatArray& unary, int iterations, std::optional<FloatArray> q_init, bool return_q,
                  bool return_labels) const {
    const int64_t padded = segpost::padded_labels(labels_);
    if (unary.ndim() != 2 || unary.shape(0) != n_ || (unary.shape(1) != labels_ && unary.shape(1) != padded))
      throw std::invalid_argument("unary must be (N, L) or (N, L padded to a multiple of 8) float32");
    if (q_init) check(*q_init, "q");
    if (iterations < 0) throw std::invalid_argument("iterations must be >= 0");
    std::optional<FloatArray> q;
    std::optional<py::array_t<int64_t>> labels;
    if (return_q) q.emplace(pooled_array<float>({n_, labels_}));
    if (return_labels) labels.emplace(pooled_array<int64_t>({n_}));
    const float* u = unary.data();
    const bool pad = unary.shape(1) != padded;
    const float* init = q_init ? q_init->data() : nullptr;
    float* q_ptr = q ? q->mutable_data() : nullptr;
    int64_t* labels_ptr = labels ? labels->mutable_data() : nullptr;
    const auto terms = view();
    {
      segpost::ReleaseGil release;
      // The kernel reads whole blocks of 8 labels: pad an unpadded unary once.
      segpost::PooledVector<float> padded_unary;
      if (pad) {
        padded_unary.assign(static_cast<std::size_t>(n_) * padded, 0.0f);
        for (int64_t p = 0; p < n_; ++p) std::copy(u + p * labels_, u + (p + 1) * labels_, &padded_unary[p * padded]);
        u = padded_unary.data();
      }
      with_workspace([&](segpost::Workspace& w) {
        segpost::mean_field(u, n_, labels_, terms, iterations, init, q_ptr, labels_ptr, w, row_length_,
                            segpost::check_signals);  // Ctrl-C between iterations
      });
    }
    return py::make_tuple(q ? py::object(*q) : py::none(), labels ? py::object(*labels) : py::none());
  }

  FloatArray messages(const FloatArray& q) const {
    check(q, "q");
    FloatArray out = pooled_array<float>({n_, labels_});
    const float* q_ptr = q.data();
    float* out_ptr = out.mutable_data();
    const auto terms = view();
    {
      segpost::ReleaseGil release;
      with_workspace(
          [&](segpost::Workspace& w) { segpost::pairwise_messages(q_ptr, n_, labels_, terms, out_ptr, w, row_length_); });
    }
    return out;
  }

 private:
  struct Term {
    py::object owner;  // keeps the kernel alive
    const PermutohedralLattice* lattice = nullptr;
    const SeparableGaussian* gaussian = nullptr;
    segpost::Compatibility kind;
    float potts;
    std::optional<FloatArray> pre, post;
    segpost::PooledVector<float> compat;
  };

  void check(const FloatArray& a, const char* name) const {
    if (a.ndim() != 2 || a.shape(0) != n_ || a.shape(1) != labels_)
      throw std::invalid_argument(std::string(name) + " must be (N, L) float32");
  }

  std::vector<segpost::PairwiseTerm> view() const {
    std::vector<segpost::PairwiseTerm> out;
    for (const Term& t : terms_) {
      out.push_back({t.lattice, t.pre ? t.pre->data() : nullptr, t.post ? t.post->data() : nullptr, t.kind, t.potts,
                     t.compat.empty() ? nullptr : t.compat.data(), t.gaussian});
    }
    return out;
  }

  // Runs fn with the model's workspace, or a private one if another thread holds it.
  template <class F>
  void with_workspace(const F& fn) const {
    std::unique_lock<std::mutex> lock(workspace_mutex_, std::try_to_lock);
    if (lock.owns_lock()) {
      fn(workspace_);
    } else {
      segpost::Workspace own;
      fn(own);
    }
  }

  py::ssize_t n_, labels_, row_length_;
  std::vector<Term> terms_;
  mutable std::mutex workspace_mutex_;
  mutable segpost::Workspace workspace_;
};

}  // namespace python
}  // namespace segpost
