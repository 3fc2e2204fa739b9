// pybind11 binding of the CPU kernels as segpost._C.
//
// Plain buffers only (no torch ABI): the Python wrappers in segpost/ validate
// and convert every input once; the checks here are a last line of defence so
// that a wrong call raises instead of crashing the interpreter.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>

#include "mean_field.h"
#include "memory_pool.h"
#include "parallel.h"
#include "permutohedral.h"
#include "python_gil.h"
#include "resize.h"

namespace py = pybind11;
using segpost::PermutohedralLattice;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;

// A new C-contiguous numpy array whose memory comes from the buffer pool and
// goes back to it when numpy frees the array (outputs are large: a fresh
// allocation would page-fault on every call).
template <class T>
py::array_t<T, py::array::c_style> pooled_array(const std::vector<py::ssize_t>& shape) {
  struct Owner {
    void* ptr;
    std::size_t bytes;
  };
  std::size_t count = 1;
  for (const py::ssize_t n : shape) count *= static_cast<std::size_t>(n);
  const std::size_t bytes = std::max<std::size_t>(count * sizeof(T), sizeof(T));
  auto* owner = new Owner{segpost::pool_allocate(bytes), bytes};
  py::capsule base(owner, [](void* o) {
    auto* held = static_cast<Owner*>(o);
    segpost::pool_deallocate(held->ptr, held->bytes);
    delete held;
  });
  return py::array_t<T, py::array::c_style>(shape, static_cast<T*>(owner->ptr), base);
}

template <typename T>
std::unique_ptr<PermutohedralLattice> build_lattice(const py::array_t<T, py::array::c_style>& features,
                                                    int64_t row_length) {
  if (features.ndim() != 2)
    throw std::invalid_argument("features must be 2-D (N, d), got ndim=" +
                                std::to_string(features.ndim()));
  const int64_t n = features.shape(0);
  const int64_t d = features.shape(1);
  if (d < 1 || d > PermutohedralLattice::kMaxDim)
    throw std::invalid_argument("features dimension d out of range: " + std::to_string(d));
  const T* data = features.data();
  segpost::ReleaseGil release;
  // Ctrl-C between the build's phases.
  return std::make_unique<PermutohedralLattice>(data, n, static_cast<int>(d), row_length, segpost::check_signals);
}

FloatArray filter(const PermutohedralLattice& lattice, const FloatArray& values, bool transpose,
                  std::optional<FloatArray> pre_scale, std::optional<FloatArray> post_scale) {
  if (values.ndim() != 2) throw std::invalid_argument("values must be 2-D (N, C)");
  if (values.shape(0) != lattice.num_points())
    throw std::invalid_argument("values must have one row per lattice point");
  if (values.shape(1) < 1) throw std::invalid_argument("values must have at least one channel");
  for (const auto* scale : {&pre_scale, &post_scale})
    if (*scale && ((*scale)->ndim() != 1 || (*scale)->shape(0) != lattice.num_points()))
      throw std::invalid_argument("row scales must be 1-D with one entry per lattice point");
  const int64_t channels = values.shape(1);
  FloatArray out = pooled_array<float>({static_cast<py::ssize_t>(lattice.num_points()), static_cast<py::ssize_t>(channels)});
  const float* in_ptr = values.data();
  const float* pre_ptr = pre_scale ? pre_scale->data() : nullptr;
  const float* post_ptr = post_scale ? post_scale->data() : nullptr;
  float* out_ptr = out.mutable_data();
  {
    segpost::ReleaseGil release;
    lattice.filter(in_ptr, channels, out_ptr, transpose, pre_ptr, post_ptr);
  }
  return out;
}

// A CRF's pairwise terms as the mean-field kernel sees them. Holds references
// to its lattices (Python objects, kept alive) and padded copies of the
// compatibilities and normalisation scales.
using IndexArray = py::array_t<int64_t, py::array::c_style>;

// (out_h * out_w, C) bilinear resize of point-major rows (see resize.h). The
// Python caller computes the source indices and weights; they are checked here.
FloatArray resize_bilinear_points(const FloatArray& in, int64_t in_h, int64_t in_w, const IndexArray& y_lo,
                                  const IndexArray& y_hi, const FloatArray& y_weight, const IndexArray& x_lo,
                                  const IndexArray& x_hi, const FloatArray& x_weight, bool negate) {
  if (in.ndim() != 2 || in.shape(0) != in_h * in_w || in.shape(1) % 8 != 0 || in.shape(1) == 0)
    throw std::invalid_argument("in must be (in_h * in_w, C) float32 with C a multiple of 8");
  const int64_t out_h = y_lo.size(), out_w = x_lo.size();
  if (y_hi.size() != out_h || y_weight.size() != out_h || x_hi.size() != out_w || x_weight.size() != out_w ||
      out_h < 1 || out_w < 1)
    throw std::invalid_argument("index and weight arrays must match in length and be non-empty");
  for (const auto* idx : {&y_lo, &y_hi})
    for (int64_t i = 0; i < out_h; ++i)
      if (idx->data()[i] < 0 || idx->data()[i] >= in_h) throw std::invalid_argument("row index out of range");
  for (const auto* idx : {&x_lo, &x_hi})
    for (int64_t i = 0; i < out_w; ++i)
      if (idx->data()[i] < 0 || idx->data()[i] >= in_w) throw std::invalid_argument("column index out of range");
  const int64_t channels = in.shape(1);
  FloatArray out = pooled_array<float>({static_cast<py::ssize_t>(out_h * out_w), static_cast<py::ssize_t>(channels)});
  float* out_ptr = out.mutable_data();
  {
    segpost::ReleaseGil release;
    segpost::resize_bilinear_points(in.data(), in_w, channels, y_lo.data(), y_hi.data(), y_weight.data(), out_h,
                                    x_lo.data(), x_hi.data(), x_weight.data(), out_w, negate, out_ptr);
  }
  return out;
}

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
    const auto& lattice = lattice_obj.cast<const PermutohedralLattice&>();
    if (lattice.num_points() != n_) throw std::invalid_argument("lattice has the wrong number of points");
    Term term;
    term.lattice = lattice_obj;
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
    py::object lattice;
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
      out.push_back({&t.lattice.cast<const PermutohedralLattice&>(), t.pre ? t.pre->data() : nullptr,
                     t.post ? t.post->data() : nullptr, t.kind, t.potts,
                     t.compat.empty() ? nullptr : t.compat.data()});
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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "segpost compiled CPU kernels (private; use the segpost Python API)";
  m.def("get_num_threads", &segpost::get_num_threads);
  m.def("set_num_threads", &segpost::set_num_threads, py::arg("n"));
  m.attr("max_lattice_dim") = PermutohedralLattice::kMaxDim;
  m.def("resize_bilinear_points", &resize_bilinear_points, py::arg("values"), py::arg("in_h"), py::arg("in_w"),
        py::arg("y_lo"), py::arg("y_hi"), py::arg("y_weight"), py::arg("x_lo"), py::arg("x_hi"), py::arg("x_weight"),
        py::arg("negate"));
  m.def(
      "pooled_empty",
      [](py::ssize_t rows, py::ssize_t columns) {
        if (rows < 0 || columns < 0) throw std::invalid_argument("shape must be non-negative");
        return pooled_array<float>({rows, columns});
      },
      py::arg("rows"), py::arg("columns"), "An uninitialised (rows, columns) float32 array in pooled memory.");
  m.def("cached_memory_bytes", &segpost::pool_cached_bytes);
  m.def("memory_cache_limit", &segpost::pool_cache_limit);
  m.def("set_memory_cache_limit", &segpost::set_pool_cache_limit, py::arg("bytes"));
  m.def("release_cached_memory", &segpost::pool_release_cached);

  py::class_<PermutohedralLattice>(m, "PermutohedralLattice", py::module_local())
      .def(py::init(&build_lattice<float>), py::arg("features"), py::arg("row_length") = 0)
      .def(py::init(&build_lattice<double>), py::arg("features"), py::arg("row_length") = 0)
      .def("filter", &filter, py::arg("values"), py::arg("transpose") = false, py::arg("pre_scale") = py::none(),
           py::arg("post_scale") = py::none())
      .def("filter_ones",
           [](const PermutohedralLattice& lattice) {
             FloatArray out = pooled_array<float>({static_cast<py::ssize_t>(lattice.num_points())});
             float* out_ptr = out.mutable_data();
             {
               segpost::ReleaseGil release;
               lattice.filter_ones(out_ptr);
             }
             return out;
           })
      .def_property_readonly("num_points", &PermutohedralLattice::num_points)
      .def_property_readonly("dim", &PermutohedralLattice::dim)
      .def_property_readonly("num_vertices", &PermutohedralLattice::num_vertices)
      .def_property_readonly("exact_keys", &PermutohedralLattice::exact_keys)
      .def_property_readonly("nbytes", &PermutohedralLattice::nbytes)
      .def("filter_scratch_bytes", &PermutohedralLattice::filter_scratch_bytes,
           py::arg("channels"));

  py::class_<MeanFieldModel>(m, "MeanFieldModel", py::module_local())
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("num_points"), py::arg("num_labels"),
           py::arg("row_length") = 0)
      .def("add_term", &MeanFieldModel::add_term, py::arg("lattice"), py::arg("pre_scale"), py::arg("post_scale"),
           py::arg("kind"), py::arg("potts"), py::arg("compat"))
      .def("infer", &MeanFieldModel::infer, py::arg("unary"), py::arg("iterations"), py::arg("q") = py::none(),
           py::arg("return_q") = true, py::arg("return_labels") = false)
      .def("messages", &MeanFieldModel::messages, py::arg("q"));
}
