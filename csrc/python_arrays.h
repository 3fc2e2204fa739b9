// numpy arrays for the binding: the array types and arrays in pooled memory.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "memory_pool.h"

namespace segpost {
namespace python {

namespace py = pybind11;

using FloatArray = py::array_t<float, py::array::c_style>;
using IndexArray = py::array_t<int64_t, py::array::c_style>;

// A new C-contiguous numpy array whose memory comes from the buffer pool and
// goes back to it when numpy frees the array (outputs are large: a fresh
// allocation would page-fault on every call).
template <class T>
inline py::array_t<T, py::array::c_style> pooled_array(const std::vector<py::ssize_t>& shape) {
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

}  // namespace python
}  // namespace segpost
