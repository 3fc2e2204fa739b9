// pybind11 binding of the CPU kernels as segpost._C.
//
// Plain buffers only (no torch ABI): the Python wrappers in segpost/ validate
// and convert every input once; the checks here are a last line of defence so
// that a wrong call raises instead of crashing the interpreter.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "parallel.h"
#include "permutohedral.h"

namespace py = pybind11;
using segpost::PermutohedralLattice;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;

template <typename T>
std::unique_ptr<PermutohedralLattice> build_lattice(const py::array_t<T, py::array::c_style>& features) {
  if (features.ndim() != 2)
    throw std::invalid_argument("features must be 2-D (N, d), got ndim=" +
                                std::to_string(features.ndim()));
  const int64_t n = features.shape(0);
  const int64_t d = features.shape(1);
  if (d < 1 || d > PermutohedralLattice::kMaxDim)
    throw std::invalid_argument("features dimension d out of range: " + std::to_string(d));
  const T* data = features.data();
  py::gil_scoped_release release;
  return std::make_unique<PermutohedralLattice>(data, n, static_cast<int>(d));
}

FloatArray filter(const PermutohedralLattice& lattice, const FloatArray& values, bool transpose,
                  std::optional<FloatArray> divisor) {
  if (values.ndim() != 2) throw std::invalid_argument("values must be 2-D (N, C)");
  if (values.shape(0) != lattice.num_points())
    throw std::invalid_argument("values must have one row per lattice point");
  if (values.shape(1) < 1) throw std::invalid_argument("values must have at least one channel");
  if (divisor && (divisor->ndim() != 1 || divisor->shape(0) != lattice.num_points()))
    throw std::invalid_argument("divisor must be 1-D with one entry per lattice point");
  const int64_t channels = values.shape(1);
  FloatArray out({static_cast<py::ssize_t>(lattice.num_points()), static_cast<py::ssize_t>(channels)});
  const float* in_ptr = values.data();
  const float* divisor_ptr = divisor ? divisor->data() : nullptr;
  float* out_ptr = out.mutable_data();
  {
    py::gil_scoped_release release;
    lattice.filter(in_ptr, channels, out_ptr, transpose, divisor_ptr);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "segpost compiled CPU kernels (private; use the segpost Python API)";
  m.def("get_num_threads", &segpost::get_num_threads);
  m.def("set_num_threads", &segpost::set_num_threads, py::arg("n"));
  m.attr("max_lattice_dim") = PermutohedralLattice::kMaxDim;

  py::class_<PermutohedralLattice>(m, "PermutohedralLattice")
      .def(py::init(&build_lattice<float>), py::arg("features"))
      .def(py::init(&build_lattice<double>), py::arg("features"))
      .def("filter", &filter, py::arg("values"), py::arg("transpose") = false, py::arg("divisor") = py::none())
      .def_property_readonly("num_points", &PermutohedralLattice::num_points)
      .def_property_readonly("dim", &PermutohedralLattice::dim)
      .def_property_readonly("num_vertices", &PermutohedralLattice::num_vertices)
      .def_property_readonly("nbytes", &PermutohedralLattice::nbytes)
      .def("filter_scratch_bytes", &PermutohedralLattice::filter_scratch_bytes,
           py::arg("channels"));
}
