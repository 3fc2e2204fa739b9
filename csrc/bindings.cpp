// pybind11 binding of the CPU kernels as segpost._C: it converts buffers and
// registers; the mean-field model it exposes lives in cpu/mean_field/model.h.
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

#include "cpu/mean_field/model.h"
#include "memory_pool.h"
#include "parallel.h"
#include "permutohedral.h"
#include "python_arrays.h"
#include "python_gil.h"
#include "resize.h"
#include "separable_gaussian.h"

namespace py = pybind11;
using segpost::PermutohedralLattice;
using segpost::SeparableGaussian;
using segpost::python::FloatArray;
using segpost::python::IndexArray;
using segpost::python::MeanFieldModel;
using segpost::python::pooled_array;

namespace {

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

// K values for the grid Gaussian: (N, C) in, (N, C) out.
FloatArray filter_separable(const SeparableGaussian& gaussian, const FloatArray& values) {
  if (values.ndim() != 2 || values.shape(0) != gaussian.num_points() || values.shape(1) < 1)
    throw std::invalid_argument("values must be (N, C) with one row per grid point and C >= 1");
  const int64_t channels = values.shape(1);
  FloatArray out = pooled_array<float>({static_cast<py::ssize_t>(gaussian.num_points()), static_cast<py::ssize_t>(channels)});
  const float* in = values.data();
  float* out_ptr = out.mutable_data();
  {
    segpost::ReleaseGil release;
    gaussian.filter(in, channels, out_ptr);
  }
  return out;
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

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "segpost compiled CPU kernels (private; use the segpost Python API)";
  // Every allocation failure of the kernels (an address-space limit, a
  // container's memory limit) as one MemoryError with the size and the fix.
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const segpost::AllocationFailed& failed) {
      const std::string size = std::to_string((failed.bytes() + (1 << 20) - 1) >> 20) + " MiB";
      PyErr_SetString(PyExc_MemoryError,
                      ("segpost's compiled kernels could not allocate " + size +
                       " (the process's memory limit: ulimit -v, a container, or the machine's memory); free memory, "
                       "downscale the input or process it in tiles, or set SEGPOST_MAX_MEMORY_GB so that segpost "
                       "refuses such work before it starts").c_str());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError,
                      "segpost's compiled kernels could not allocate memory (the process's memory limit: ulimit -v, "
                      "a container, or the machine's memory); free memory, downscale the input or process it in "
                      "tiles, or set SEGPOST_MAX_MEMORY_GB so that segpost refuses such work before it starts");
    }
  });
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
      .def_property_readonly("nbytes", &PermutohedralLattice::nbytes);

  py::class_<SeparableGaussian>(m, "SeparableGaussian", py::module_local())
      .def(py::init<std::vector<int64_t>, std::vector<std::vector<float>>>(), py::arg("shape"), py::arg("taps"))
      .def("filter", &filter_separable, py::arg("values"))
      .def_property_readonly("num_points", &SeparableGaussian::num_points)
      .def_property_readonly("shape", &SeparableGaussian::shape)
      .def_property_readonly("taps", &SeparableGaussian::taps)
      .def_property_readonly("nbytes", &SeparableGaussian::nbytes);

  py::class_<MeanFieldModel>(m, "MeanFieldModel", py::module_local())
      .def(py::init<int64_t, int64_t, int64_t>(), py::arg("num_points"), py::arg("num_labels"),
           py::arg("row_length") = 0)
      .def("add_term", &MeanFieldModel::add_term, py::arg("lattice"), py::arg("pre_scale"), py::arg("post_scale"),
           py::arg("kind"), py::arg("potts"), py::arg("compat"))
      .def("infer", &MeanFieldModel::infer, py::arg("unary"), py::arg("iterations"), py::arg("q") = py::none(),
           py::arg("return_q") = true, py::arg("return_labels") = false)
      .def("messages", &MeanFieldModel::messages, py::arg("q"));
}
