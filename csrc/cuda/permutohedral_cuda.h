// CUDA kernels of the permutohedral lattice: plain CUDA C++ over raw device
// pointers with a stream argument, so that `nvcc -c` compile-checks them on
// machines whose torch has no CUDA headers. The torch binding
// (bindings_cuda.cpp) allocates the buffers and does the scans and sorts with
// torch ops between these launches.
//
// Pipeline (mirrors csrc/cpu/lattice/):
//   1. simplex:    per point, the d+1 vertex keys and barycentric weights
//                  (keys carry the image's index as one more component in a
//                  batched build, so a batch is one lattice of disjoint parts);
//   2. insert:     per corner, claim a hash slot with atomicCAS or find the
//                  corner that holds the same key (keys are written before
//                  the launch and never change, so duplicates resolve on the
//                  fly: no separate merge pass);
//   3. (torch)     each key's first corner (the slot's claimant depends on
//                  timing; the minimum does not) -> compact vertex ids in
//                  first-occurrence order (cumsum), CSR of corners by vertex
//                  (stable sort), cut into chunks of at most kSplatChunk;
//   4. neighbours: per vertex and lattice axis, hash lookups;
//   5. splat:      per chunk, a gather over its corners in point order, then
//                  per vertex its chunks' sums in order: deterministic (no
//                  float atomics), and a vertex with thousands of corners (a
//                  flat region under a wide bilateral kernel) is many threads;
//   6. blur:       per vertex and axis, [1/2, 1, 1/2];
//   7. slice:      per point, barycentric interpolation.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace segpost {
namespace cuda {

constexpr int kMaxDim = 16;  // the GPU kernels keep per-point arrays in registers

// Corners one splat thread gathers at most. Untuned (no GPU run yet): large
// enough that most vertices are one chunk, so the reduction pass is skipped.
constexpr int kSplatChunk = 64;

// features (n, d) float32; scale (d); origin (images, d), one row per image
// when points_per_image > 0 (a batched build), else one row. Writes keys
// (n*(d+1), key_size) int32 with key_size = d + (points_per_image > 0),
// weights (n*(d+1)) float32, and sets *overflow to 1 if a key would leave int32.
cudaError_t launch_simplex(const float* features, const double* origin, const double* scale, int64_t n, int d,
                           int64_t points_per_image, int32_t* keys, float* weights, int32_t* overflow,
                           cudaStream_t stream);

// slots (capacity, a power of two) initialised to -1; writes rep[e] = the
// corner whose key claimed the slot (some corner of the same key, which one
// depends on timing).
cudaError_t launch_insert(const int32_t* keys, int64_t count, int key_size, int32_t* slots, uint64_t capacity,
                          int32_t* rep, cudaStream_t stream);

// vertex_keys (m, key_size); writes neighbour (d+1, m, 2), shifted (0 = missing).
// slot entries are corners; vertex_of_corner maps them to compact ids.
cudaError_t launch_neighbours(const int32_t* vertex_keys, int64_t m, int d, int key_size, const int32_t* keys,
                              const int32_t* slots, uint64_t capacity, const int32_t* vertex_of_corner,
                              int32_t* neighbour, cudaStream_t stream);

// grid ((m+1), c) row 0 zero: grid[v+1] = sum over v's chunks in order of the
// chunk's sum over its corners in CSR order of w * pre[p] * values[p]. Chunk j
// covers CSR entries [chunk_start[j], chunk_start[j+1]); vertex v owns chunks
// [vertex_chunk[v], vertex_chunk[v+1]). chunk_sums (chunks, c) is scratch,
// unused (may be null) when chunks == m.
cudaError_t launch_splat(const int64_t* chunk_start, const int64_t* vertex_chunk, int64_t chunks,
                         const int32_t* csr_corner, const float* weights, const float* values, const float* pre_scale,
                         int64_t m, int d, int c, float* chunk_sums, float* grid, cudaStream_t stream);

cudaError_t launch_blur(const float* in, const int32_t* neighbour_axis, int64_t m, int c, float* out,
                        cudaStream_t stream);

// out (n, c) = alpha * post[p] * sum_r w_r grid[vertex_r]; corner_vertex shifted.
cudaError_t launch_slice(const float* grid, const int32_t* corner_vertex, const float* weights,
                         const float* post_scale, int64_t n, int d, int c, float alpha, float* out,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace segpost
