// Thin torch binding of the CUDA lattice kernels (segpost._C_cuda).
//
// It validates tensors, allocates buffers, runs the scans and sorts with
// torch ops, and launches the plain CUDA kernels of permutohedral_cuda.cu on
// the current stream. Built only with a CUDA-enabled torch (SEGPOST_CUDA=1
// pip install ., or just in time by segpost/lattice/cuda.py).
//
// c10's stream and guard headers, not ATen/cuda/CUDAContext.h: that one pulls
// in the cuBLAS/cuSPARSE/cuSOLVER headers, which a toolkit assembled from the
// nvidia-* wheels may lack, and nothing here uses them.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <climits>
#include <cmath>
#include <vector>

#include "permutohedral_cuda.h"

namespace {

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "segpost CUDA lattice: ", what, " failed: ", cudaGetErrorString(status));
}

// Returns [corner_vertex (N, d+1) int32 shifted, weights (N, d+1) float32,
//          neighbour (d+1, M, 2) int32 shifted, chunk_start (K+1) int64,
//          vertex_chunk (M+1) int64, csr_corner (N(d+1)) int32]: the splat's
//          chunks of the CSR of corners by vertex (permutohedral_cuda.h).
// points_per_image > 0: a batch of N / points_per_image images, one lattice
// whose images share no vertex (each image's vertices as its own build's).
std::vector<torch::Tensor> build(torch::Tensor features, int64_t points_per_image) {
  TORCH_CHECK(features.is_cuda() && features.dim() == 2, "features must be a 2-D CUDA tensor");
  TORCH_CHECK(features.is_floating_point(), "features must be floating-point");
  const c10::cuda::CUDAGuard guard(features.device());
  features = features.to(torch::kFloat32).contiguous();
  const int64_t n = features.size(0);
  const int d = static_cast<int>(features.size(1));
  TORCH_CHECK(d >= 1 && d <= segpost::cuda::kMaxDim, "features must have 1 to ", segpost::cuda::kMaxDim,
              " columns on the GPU, got ", d);
  TORCH_CHECK(points_per_image >= 0 && (points_per_image == 0 || n % points_per_image == 0),
              "points_per_image must divide the number of points (", n, "), got ", points_per_image);
  const int key_size = d + (points_per_image > 0 ? 1 : 0);
  const int d1 = d + 1;
  auto dev = features.options();
  if (n == 0) {  // no point (an empty batch): an empty lattice, which filters (0, C) values to (0, C)
    return {torch::empty({0, d1}, dev.dtype(torch::kInt32)), torch::empty({0, d1}, dev),
            torch::empty({d1, 0, 2}, dev.dtype(torch::kInt32)), torch::zeros({1}, dev.dtype(torch::kInt64)),
            torch::zeros({1}, dev.dtype(torch::kInt64)), torch::empty({0}, dev.dtype(torch::kInt32))};
  }
  const int64_t images = points_per_image > 0 ? n / points_per_image : 1;
  // Corners are counted and indexed in int32 by the kernels and the CSR.
  TORCH_CHECK(n * d1 < INT32_MAX, "too many points for the GPU lattice: N * (d + 1) = ", n * d1,
              " must be below 2**31 - 1");
  auto stream = c10::cuda::getCurrentCUDAStream();
  // Scales and the origin moved by whole lattice periods (see the CPU lattice), per image.
  auto scale = torch::empty({d}, dev.dtype(torch::kFloat64));
  {
    std::vector<double> host(d);
    for (int i = 0; i < d; ++i) host[i] = std::sqrt(2.0 / 3.0) * d1 / std::sqrt((i + 1.0) * (i + 2.0));
    scale.copy_(torch::from_blob(host.data(), {d}, torch::kFloat64));
  }
  auto period = d1 / scale;
  auto lowest = std::get<0>(features.to(torch::kFloat64).reshape({images, n / images, d}).min(1));
  auto origin = (torch::floor(lowest / period) * period).contiguous();
  const int64_t corners = n * d1;
  auto keys = torch::empty({corners, key_size}, dev.dtype(torch::kInt32));
  auto weights = torch::empty({n, d1}, dev);
  auto overflow = torch::zeros({1}, dev.dtype(torch::kInt32));
  check(segpost::cuda::launch_simplex(features.data_ptr<float>(), origin.data_ptr<double>(), scale.data_ptr<double>(),
                                      n, d, points_per_image, keys.data_ptr<int32_t>(), weights.data_ptr<float>(),
                                      overflow.data_ptr<int32_t>(), stream),
        "simplex");
  // One host sync for both flags. Non-finite features are told apart here: the simplex kernel
  // reports NaN as a key overflow.
  auto flags = torch::stack({overflow[0], torch::isfinite(features).all().logical_not().to(torch::kInt32)}).cpu();
  TORCH_CHECK(flags[1].item<int32_t>() == 0, "features must be finite (NaN or infinite found)");
  TORCH_CHECK(flags[0].item<int32_t>() == 0,
              "features span too large a range for the lattice's int32 keys; use larger bandwidths");
  uint64_t capacity = 1;
  while (capacity < static_cast<uint64_t>(corners) * 2) capacity <<= 1;
  auto slots = torch::full({static_cast<int64_t>(capacity)}, -1, dev.dtype(torch::kInt32));
  auto claimant = torch::empty({corners}, dev.dtype(torch::kInt32));
  check(segpost::cuda::launch_insert(keys.data_ptr<int32_t>(), corners, key_size, slots.data_ptr<int32_t>(),
                                     capacity, claimant.data_ptr<int32_t>(), stream),
        "insert");
  // Which corner claims a key's slot depends on timing; its first corner does not. Compact vertex
  // ids in corner order of first occurrence, as the CPU lattice numbers them: the same on every run.
  auto index = torch::arange(corners, dev.dtype(torch::kInt32));
  auto claimant_index = claimant.to(torch::kInt64);
  auto first_of_claimant = torch::full({corners}, INT32_MAX, dev.dtype(torch::kInt32))
                               .scatter_reduce(0, claimant_index, index, "amin");
  auto rep = first_of_claimant.index_select(0, claimant_index);
  auto first = rep.eq(index);
  auto ids = torch::cumsum(first.to(torch::kInt32), 0, torch::kInt32) - 1;
  auto vertex_of_corner = ids.index_select(0, rep.to(torch::kInt64)).contiguous();
  const int64_t m = first.sum().item<int64_t>();
  // Each vertex's key from its first corner, found by a scatter: a boolean mask (keys[first]) would
  // read its count back to the host once more.
  auto vertex_long = vertex_of_corner.to(torch::kInt64);
  auto first_corner =
      torch::full({m}, INT32_MAX, dev.dtype(torch::kInt32)).scatter_reduce(0, vertex_long, index, "amin");
  auto vertex_keys = keys.index_select(0, first_corner.to(torch::kInt64)).contiguous();
  auto neighbour = torch::empty({d1, m, 2}, dev.dtype(torch::kInt32));
  check(segpost::cuda::launch_neighbours(vertex_keys.data_ptr<int32_t>(), m, d, key_size, keys.data_ptr<int32_t>(),
                                         slots.data_ptr<int32_t>(), capacity, vertex_of_corner.data_ptr<int32_t>(),
                                         neighbour.data_ptr<int32_t>(), stream),
        "neighbours");
  // CSR of corners by vertex, stable: each vertex's corners in point order (deterministic splat),
  // cut into chunks of at most kSplatChunk corners.
  auto csr_corner = std::get<1>(torch::sort(vertex_long, /*stable=*/true, 0, false)).to(torch::kInt32).contiguous();
  // scatter_add, not bincount: bincount on CUDA reads the input's range back to the host.
  auto counts =
      torch::zeros({m}, dev.dtype(torch::kInt64)).scatter_add_(0, vertex_long, torch::ones_like(vertex_long));
  auto csr_start = torch::cumsum(counts, 0) - counts;
  auto chunks_of_vertex = torch::div(counts + (segpost::cuda::kSplatChunk - 1), segpost::cuda::kSplatChunk, "floor");
  auto vertex_chunk =
      torch::cat({torch::zeros({1}, dev.dtype(torch::kInt64)), torch::cumsum(chunks_of_vertex, 0)}).contiguous();
  auto owner = torch::repeat_interleave(chunks_of_vertex);
  const int64_t chunks = owner.size(0);
  auto within = torch::arange(chunks, dev.dtype(torch::kInt64)) - vertex_chunk.index_select(0, owner);
  auto chunk_start = torch::cat({csr_start.index_select(0, owner) + within * segpost::cuda::kSplatChunk,
                                 torch::full({1}, corners, dev.dtype(torch::kInt64))})
                         .contiguous();
  auto corner_vertex = (vertex_of_corner + 1).reshape({n, d1}).contiguous();
  return {corner_vertex, weights, neighbour, chunk_start, vertex_chunk, csr_corner};
}

torch::Tensor filter(torch::Tensor corner_vertex, torch::Tensor weights, torch::Tensor neighbour,
                     torch::Tensor chunk_start, torch::Tensor vertex_chunk, torch::Tensor csr_corner, torch::Tensor values,
                     c10::optional<torch::Tensor> pre_scale, c10::optional<torch::Tensor> post_scale, bool transpose) {
  TORCH_CHECK(values.is_cuda() && values.dim() == 2, "values must be a 2-D CUDA tensor");
  for (const torch::Tensor* part : {&weights, &neighbour, &chunk_start, &vertex_chunk, &csr_corner})
    TORCH_CHECK(part->device() == corner_vertex.device(), "the lattice's tensors must share one device");
  TORCH_CHECK(values.device() == corner_vertex.device(), "values (on ", values.device(),
              ") must be on the lattice's device (", corner_vertex.device(), ")");
  const c10::cuda::CUDAGuard guard(values.device());
  values = values.to(torch::kFloat32).contiguous();
  const int64_t n = corner_vertex.size(0);
  const int d1 = static_cast<int>(corner_vertex.size(1));
  const int d = d1 - 1;
  const int64_t m = neighbour.size(1);
  TORCH_CHECK(values.size(1) < INT32_MAX, "values must have at most 2**31 - 2 channels, got ", values.size(1));
  const int c = static_cast<int>(values.size(1));
  TORCH_CHECK(values.size(0) == n, "values must have one row per lattice point (", n, "), got ", values.size(0));
  if (n == 0 || c == 0) return torch::empty({n, c}, values.options());  // nothing to filter
  // The scales as float32 tensors held here for the launches (a temporary's pointer would dangle).
  auto row_scale = [&](const c10::optional<torch::Tensor>& scale, const char* name) {
    if (!scale) return torch::Tensor();
    TORCH_CHECK(scale->device() == values.device(), name, " must be on the lattice's device");
    TORCH_CHECK(scale->dim() == 1 && scale->size(0) == n, name, " must be 1-D with one entry per lattice point");
    TORCH_CHECK(scale->is_floating_point(), name, " must be floating-point");
    return scale->to(torch::kFloat32).contiguous();
  };
  const torch::Tensor pre_rows = row_scale(pre_scale, "pre_scale"), post_rows = row_scale(post_scale, "post_scale");
  const float* pre = pre_rows.defined() ? pre_rows.data_ptr<float>() : nullptr;
  const float* post = post_rows.defined() ? post_rows.data_ptr<float>() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  // Splat and blur write every vertex row; only row 0 (the missing neighbour) must be zero.
  // The two buffers in one allocation, so that one launch zeroes both rows 0.
  auto buffers = torch::empty({2, m + 1, c}, values.options());
  buffers.select(1, 0).zero_();
  auto grid = buffers[0], next = buffers[1];
  const int64_t chunks = chunk_start.size(0) - 1;
  torch::Tensor chunk_sums = chunks > m ? torch::empty({chunks, c}, values.options()) : torch::Tensor();
  check(segpost::cuda::launch_splat(chunk_start.data_ptr<int64_t>(), vertex_chunk.data_ptr<int64_t>(), chunks,
                                    csr_corner.data_ptr<int32_t>(), weights.data_ptr<float>(),
                                    values.data_ptr<float>(), pre, m, d, c,
                                    chunk_sums.defined() ? chunk_sums.data_ptr<float>() : nullptr,
                                    grid.data_ptr<float>(), stream),
        "splat");
  for (int step = 0; step <= d; ++step) {
    const int axis = transpose ? d - step : step;
    check(segpost::cuda::launch_blur(grid.data_ptr<float>(), neighbour[axis].data_ptr<int32_t>(), m, c,
                                     next.data_ptr<float>(), stream),
          "blur");
    std::swap(grid, next);
  }
  auto out = torch::empty({n, c}, values.options());
  const float alpha = static_cast<float>(1.0 / (1.0 + std::pow(2.0, -d)));
  check(segpost::cuda::launch_slice(grid.data_ptr<float>(), corner_vertex.data_ptr<int32_t>(),
                                    weights.data_ptr<float>(), post, n, d, c, alpha, out.data_ptr<float>(), stream),
        "slice");
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "segpost CUDA lattice kernels (private; use segpost's Python API)";
  m.def("build", &build, "build a permutohedral lattice on the GPU", py::arg("features"),
        py::arg("points_per_image") = 0);
  m.def("filter", &filter, "filter values on a GPU lattice");
}
