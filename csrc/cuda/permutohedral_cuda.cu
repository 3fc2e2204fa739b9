// CUDA kernels of the permutohedral lattice (see permutohedral_cuda.h).
#include "permutohedral_cuda.h"

#include "../simplex.h"

namespace segpost {
namespace cuda {

namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t count) { return static_cast<int>((count + kThreads - 1) / kThreads); }

__device__ inline bool same_key(const int32_t* a, const int32_t* b, int d) {
  for (int i = 0; i < d; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

__global__ void simplex_kernel(const float* features, const double* origin, const double* scale, int64_t n, int d,
                               int32_t* keys, float* weights, int32_t* overflow) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= n) return;
  const int d1 = d + 1;
  double position[kMaxDim], elevated[kMaxDim + 1], bary[kMaxDim + 2];
  int32_t rem0[kMaxDim + 1], rank[kMaxDim + 1];
  for (int i = 0; i < d; ++i) position[i] = (static_cast<double>(features[p * d + i]) - origin[i]) * scale[i];
  elevate(position, d, elevated);
  if (!enclosing_simplex(elevated, d, rem0, rank, bary)) {
    atomicExch(overflow, 1);
    for (int r = 0; r <= d; ++r) {
      weights[p * d1 + r] = 0.0f;
      for (int k = 0; k < d; ++k) keys[(p * d1 + r) * d + k] = 0;
    }
    return;
  }
  for (int r = 0; r <= d; ++r) {
    weights[p * d1 + r] = static_cast<float>(bary[r]);
    vertex_key(rem0, rank, d, r, keys + (p * d1 + r) * d);
  }
}

__global__ void insert_kernel(const int32_t* keys, int64_t count, int d, int32_t* slots, uint64_t mask,
                              int32_t* rep) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= count) return;
  const int32_t* key = keys + e * d;
  uint64_t slot = hash_key(key, d) & mask;
  for (;;) {
    const int32_t claimed = atomicCAS(slots + slot, -1, static_cast<int32_t>(e));
    const int32_t holder = claimed < 0 ? static_cast<int32_t>(e) : claimed;
    if (holder == e || same_key(keys + static_cast<int64_t>(holder) * d, key, d)) {
      rep[e] = holder;
      return;
    }
    slot = (slot + 1) & mask;
  }
}

__device__ int32_t find_key(const int32_t* key, int d, const int32_t* keys, const int32_t* slots, uint64_t mask) {
  uint64_t slot = hash_key(key, d) & mask;
  for (;;) {
    const int32_t holder = slots[slot];
    if (holder < 0) return -1;
    if (same_key(keys + static_cast<int64_t>(holder) * d, key, d)) return holder;
    slot = (slot + 1) & mask;
  }
}

__global__ void neighbour_kernel(const int32_t* vertex_keys, int64_t m, int d, const int32_t* keys,
                                 const int32_t* slots, uint64_t mask, const int32_t* vertex_of_corner,
                                 int32_t* neighbour) {
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= m) return;
  const int32_t* key = vertex_keys + v * d;
  int32_t lo[kMaxDim], hi[kMaxDim];
  for (int axis = 0; axis <= d; ++axis) {
    neighbour_keys(key, d, axis, lo, hi);
    const int32_t a = find_key(lo, d, keys, slots, mask);
    const int32_t b = find_key(hi, d, keys, slots, mask);
    int32_t* out = neighbour + (static_cast<int64_t>(axis) * m + v) * 2;
    out[0] = a < 0 ? 0 : vertex_of_corner[a] + 1;
    out[1] = b < 0 ? 0 : vertex_of_corner[b] + 1;
  }
}

__global__ void splat_kernel(const int64_t* csr_start, const int32_t* csr_corner, const float* weights,
                             const float* values, const float* pre_scale, int64_t m, int d, int c, float* grid) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m * c) return;
  const int64_t v = i / c;
  const int k = static_cast<int>(i % c);
  const int d1 = d + 1;
  float total = 0.0f;
  for (int64_t e = csr_start[v]; e < csr_start[v + 1]; ++e) {
    const int32_t corner = csr_corner[e];
    const int64_t p = corner / d1;
    const float scale = pre_scale ? pre_scale[p] : 1.0f;
    total += weights[corner] * scale * values[p * c + k];
  }
  grid[(v + 1) * c + k] = total;
}

__global__ void blur_kernel(const float* in, const int32_t* neighbour, int64_t m, int c, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m * c) return;
  const int64_t v = i / c;
  const int k = static_cast<int>(i % c);
  const int64_t lo = neighbour[2 * v], hi = neighbour[2 * v + 1];
  out[(v + 1) * c + k] = in[(v + 1) * c + k] + 0.5f * (in[lo * c + k] + in[hi * c + k]);
}

__global__ void slice_kernel(const float* grid, const int32_t* corner_vertex, const float* weights,
                             const float* post_scale, int64_t n, int d, int c, float alpha, float* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * c) return;
  const int64_t p = i / c;
  const int k = static_cast<int>(i % c);
  const int d1 = d + 1;
  float total = 0.0f;
  for (int r = 0; r < d1; ++r) total += weights[p * d1 + r] * grid[static_cast<int64_t>(corner_vertex[p * d1 + r]) * c + k];
  out[p * c + k] = alpha * (post_scale ? post_scale[p] : 1.0f) * total;
}

}  // namespace

cudaError_t launch_simplex(const float* features, const double* origin, const double* scale, int64_t n, int d,
                           int32_t* keys, float* weights, int32_t* overflow, cudaStream_t stream) {
  if (d < 1 || d > kMaxDim) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  simplex_kernel<<<blocks_for(n), kThreads, 0, stream>>>(features, origin, scale, n, d, keys, weights, overflow);
  return cudaGetLastError();
}

cudaError_t launch_insert(const int32_t* keys, int64_t count, int d, int32_t* slots, uint64_t capacity,
                          int32_t* rep, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (capacity == 0 || (capacity & (capacity - 1)) != 0 || capacity < static_cast<uint64_t>(count))
    return cudaErrorInvalidValue;  // a power of two with room for every corner: probing always ends
  insert_kernel<<<blocks_for(count), kThreads, 0, stream>>>(keys, count, d, slots, capacity - 1, rep);
  return cudaGetLastError();
}

cudaError_t launch_neighbours(const int32_t* vertex_keys, int64_t m, int d, const int32_t* keys,
                              const int32_t* slots, uint64_t capacity, const int32_t* vertex_of_corner,
                              int32_t* neighbour, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  neighbour_kernel<<<blocks_for(m), kThreads, 0, stream>>>(vertex_keys, m, d, keys, slots, capacity - 1,
                                                           vertex_of_corner, neighbour);
  return cudaGetLastError();
}

cudaError_t launch_splat(const int64_t* csr_start, const int32_t* csr_corner, const float* weights,
                         const float* values, const float* pre_scale, int64_t m, int d, int c, float* grid,
                         cudaStream_t stream) {
  if (m * c == 0) return cudaSuccess;
  splat_kernel<<<blocks_for(m * c), kThreads, 0, stream>>>(csr_start, csr_corner, weights, values, pre_scale, m,
                                                           d, c, grid);
  return cudaGetLastError();
}

cudaError_t launch_blur(const float* in, const int32_t* neighbour_axis, int64_t m, int c, float* out,
                        cudaStream_t stream) {
  if (m * c == 0) return cudaSuccess;
  blur_kernel<<<blocks_for(m * c), kThreads, 0, stream>>>(in, neighbour_axis, m, c, out);
  return cudaGetLastError();
}

cudaError_t launch_slice(const float* grid, const int32_t* corner_vertex, const float* weights,
                         const float* post_scale, int64_t n, int d, int c, float alpha, float* out,
                         cudaStream_t stream) {
  if (n * c == 0) return cudaSuccess;
  slice_kernel<<<blocks_for(n * c), kThreads, 0, stream>>>(grid, corner_vertex, weights, post_scale, n, d, c, alpha,
                                                           out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace segpost
