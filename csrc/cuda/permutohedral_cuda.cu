// CUDA kernels of the permutohedral lattice (see permutohedral_cuda.h).
#include "permutohedral_cuda.h"

#include "../simplex.h"

namespace segpost {
namespace cuda {

namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t count) { return static_cast<int>((count + kThreads - 1) / kThreads); }

__device__ inline bool same_key(const int32_t* a, const int32_t* b, int key_size) {
  for (int i = 0; i < key_size; ++i)
    if (a[i] != b[i]) return false;
  return true;
}

__global__ void simplex_kernel(const float* features, const double* origin, const double* scale, int64_t n, int d,
                               int64_t points_per_image, int32_t* keys, float* weights, int32_t* overflow) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= n) return;
  const int d1 = d + 1;
  const int key_size = d + (points_per_image > 0);
  const int64_t image = points_per_image > 0 ? p / points_per_image : 0;
  const double* image_origin = origin + image * d;
  double position[kMaxDim], elevated[kMaxDim + 1], bary[kMaxDim + 2];
  int32_t rem0[kMaxDim + 1], rank[kMaxDim + 1];
  for (int i = 0; i < d; ++i) position[i] = (static_cast<double>(features[p * d + i]) - image_origin[i]) * scale[i];
  elevate(position, d, elevated);
  const bool in_range = enclosing_simplex(elevated, d, rem0, rank, bary);
  if (!in_range) atomicExch(overflow, 1);
  for (int r = 0; r <= d; ++r) {
    int32_t* key = keys + (p * d1 + r) * key_size;
    weights[p * d1 + r] = in_range ? static_cast<float>(bary[r]) : 0.0f;
    if (in_range)
      vertex_key(rem0, rank, d, r, key);
    else
      for (int k = 0; k < d; ++k) key[k] = 0;
    // The image's index as a last key component: images of a batch share no vertex.
    if (points_per_image > 0) key[d] = static_cast<int32_t>(image);
  }
}

__global__ void insert_kernel(const int32_t* keys, int64_t count, int key_size, int32_t* slots, uint64_t mask,
                              int32_t* rep) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= count) return;
  const int32_t* key = keys + e * key_size;
  uint64_t slot = hash_key(key, key_size) & mask;
  for (;;) {
    const int32_t claimed = atomicCAS(slots + slot, -1, static_cast<int32_t>(e));
    const int32_t holder = claimed < 0 ? static_cast<int32_t>(e) : claimed;
    if (holder == e || same_key(keys + static_cast<int64_t>(holder) * key_size, key, key_size)) {
      rep[e] = holder;
      return;
    }
    slot = (slot + 1) & mask;
  }
}

__device__ int32_t find_key(const int32_t* key, int key_size, const int32_t* keys, const int32_t* slots, uint64_t mask) {
  uint64_t slot = hash_key(key, key_size) & mask;
  for (;;) {
    const int32_t holder = slots[slot];
    if (holder < 0) return -1;
    if (same_key(keys + static_cast<int64_t>(holder) * key_size, key, key_size)) return holder;
    slot = (slot + 1) & mask;
  }
}

__global__ void neighbour_kernel(const int32_t* vertex_keys, int64_t m, int d, int key_size, const int32_t* keys,
                                 const int32_t* slots, uint64_t mask, const int32_t* vertex_of_corner,
                                 int32_t* neighbour) {
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= m) return;
  const int32_t* key = vertex_keys + v * key_size;
  int32_t lo[kMaxDim + 1], hi[kMaxDim + 1];
  for (int axis = 0; axis <= d; ++axis) {
    neighbour_keys(key, d, axis, lo, hi);
    for (int i = d; i < key_size; ++i) lo[i] = hi[i] = key[i];  // the batch component: same image
    const int32_t a = find_key(lo, key_size, keys, slots, mask);
    const int32_t b = find_key(hi, key_size, keys, slots, mask);
    int32_t* out = neighbour + (static_cast<int64_t>(axis) * m + v) * 2;
    out[0] = a < 0 ? 0 : vertex_of_corner[a] + 1;
    out[1] = b < 0 ? 0 : vertex_of_corner[b] + 1;
  }
}

// One thread per (chunk, channel): the chunk's corners in CSR (point) order.
__global__ void splat_chunk_kernel(const int64_t* chunk_start, const int32_t* csr_corner, const float* weights,
                                   const float* values, const float* pre_scale, int64_t chunks, int d, int c,
                                   float* sums) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= chunks * c) return;
  const int64_t j = i / c;
  const int k = static_cast<int>(i % c);
  const int d1 = d + 1;
  float total = 0.0f;
  for (int64_t e = chunk_start[j]; e < chunk_start[j + 1]; ++e) {
    const int32_t corner = csr_corner[e];
    const int64_t p = corner / d1;
    const float scale = pre_scale ? pre_scale[p] : 1.0f;
    total += weights[corner] * scale * values[p * c + k];
  }
  sums[j * c + k] = total;
}

// One thread per (vertex, channel): its chunks' sums in order (fixed order: deterministic).
__global__ void splat_reduce_kernel(const float* sums, const int64_t* vertex_chunk, int64_t m, int c, float* grid) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= m * c) return;
  const int64_t v = i / c;
  const int k = static_cast<int>(i % c);
  float total = 0.0f;
  for (int64_t j = vertex_chunk[v]; j < vertex_chunk[v + 1]; ++j) total += sums[j * c + k];
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
                           int64_t points_per_image, int32_t* keys, float* weights, int32_t* overflow,
                           cudaStream_t stream) {
  if (d < 1 || d > kMaxDim || points_per_image < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  simplex_kernel<<<blocks_for(n), kThreads, 0, stream>>>(features, origin, scale, n, d, points_per_image, keys,
                                                         weights, overflow);
  return cudaGetLastError();
}

cudaError_t launch_insert(const int32_t* keys, int64_t count, int key_size, int32_t* slots, uint64_t capacity,
                          int32_t* rep, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (capacity == 0 || (capacity & (capacity - 1)) != 0 || capacity < static_cast<uint64_t>(count))
    return cudaErrorInvalidValue;  // a power of two with room for every corner: probing always ends
  insert_kernel<<<blocks_for(count), kThreads, 0, stream>>>(keys, count, key_size, slots, capacity - 1, rep);
  return cudaGetLastError();
}

cudaError_t launch_neighbours(const int32_t* vertex_keys, int64_t m, int d, int key_size, const int32_t* keys,
                              const int32_t* slots, uint64_t capacity, const int32_t* vertex_of_corner,
                              int32_t* neighbour, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  if (key_size < d || key_size > d + 1) return cudaErrorInvalidValue;
  neighbour_kernel<<<blocks_for(m), kThreads, 0, stream>>>(vertex_keys, m, d, key_size, keys, slots, capacity - 1,
                                                           vertex_of_corner, neighbour);
  return cudaGetLastError();
}

cudaError_t launch_splat(const int64_t* chunk_start, const int64_t* vertex_chunk, int64_t chunks,
                         const int32_t* csr_corner, const float* weights, const float* values, const float* pre_scale,
                         int64_t m, int d, int c, float* chunk_sums, float* grid, cudaStream_t stream) {
  if (m * c == 0) return cudaSuccess;
  if (chunks < m) return cudaErrorInvalidValue;
  // With one chunk per vertex the chunk sums are the vertex rows: no reduction pass.
  float* sums = chunks == m ? grid + c : chunk_sums;
  if (sums == nullptr) return cudaErrorInvalidValue;
  splat_chunk_kernel<<<blocks_for(chunks * c), kThreads, 0, stream>>>(chunk_start, csr_corner, weights, values,
                                                                      pre_scale, chunks, d, c, sums);
  if (chunks == m) return cudaGetLastError();
  splat_reduce_kernel<<<blocks_for(m * c), kThreads, 0, stream>>>(chunk_sums, vertex_chunk, m, c, grid);
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
