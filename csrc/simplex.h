// The permutohedral lattice's per-point arithmetic (Adams et al. 2010), shared
// by the CPU lattice and the CUDA kernels: elevation onto the hyperplane
// x . 1 = 0 of R^{d+1}, the enclosing simplex, its barycentric weights and
// vertex keys, and the keys of a vertex's blur neighbours.
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SEGPOST_HOST_DEVICE __host__ __device__ inline
#else
// Always inlined: the callers fix d at compile time for the common sizes,
// which pays only if these loops see the constant.
#define SEGPOST_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace segpost {

// Largest elevated coordinate whose keys (and neighbour keys, +-d) fit in int32.
constexpr double kKeyLimit = 1073741824.0;  // 2^30

// position: d coordinates already translated and scaled; elevated: d+1.
SEGPOST_HOST_DEVICE void elevate(const double* position, int d, double* elevated) {
  double running = 0.0;
  for (int j = d; j > 0; --j) {
    const double cf = position[j - 1];
    elevated[j] = running - j * cf;
    running += cf;
  }
  elevated[0] = running;
}

// From an elevated point: the nearest zero-coloured lattice point `rem0`
// (d+1), the rank of each remainder (d+1) and the barycentric weights `bary`
// (d+2; the first d+1 are used). Returns false when a coordinate is beyond the
// int32 key range. Branch-free ranking: the comparisons are data-dependent
// and mispredict badly.
SEGPOST_HOST_DEVICE bool enclosing_simplex(const double* elevated, int d, int32_t* rem0, int32_t* rank, double* bary) {
  const int d1 = d + 1;
  const double down = 1.0 / d1;
  bool in_range = true;
  for (int i = 0; i <= d; ++i) in_range &= fabs(elevated[i]) < kKeyLimit;
  if (!in_range) return false;

  int sum = 0;
  double remainder[65];
  for (int i = 0; i <= d; ++i) {
    const double v = elevated[i] * down;
    const double lo = floor(v);
    // Nearest multiple of d+1: lo or lo + 1 (times d+1); ties go down.
    const int32_t k = static_cast<int32_t>(lo) + ((v - lo) > 0.5 ? 1 : 0);
    rem0[i] = k * d1;
    sum += k;
    rank[i] = 0;
    remainder[i] = elevated[i] - rem0[i];
  }
  // Rank the remainders, larger first; ties broken by index.
  for (int i = 0; i < d; ++i) {
    for (int j = i + 1; j <= d; ++j) {
      const int smaller = remainder[i] < remainder[j];
      rank[i] += smaller;
      rank[j] += 1 - smaller;
    }
  }
  // The nearest zero-coloured point may lie off the hyperplane by `sum`
  // steps; move the coordinates with the largest/smallest remainders.
  if (sum > 0) {
    for (int i = 0; i <= d; ++i) {
      if (rank[i] >= d1 - sum) {
        rem0[i] -= d1;
        rank[i] += sum - d1;
      } else {
        rank[i] += sum;
      }
    }
  } else if (sum < 0) {
    for (int i = 0; i <= d; ++i) {
      if (rank[i] < -sum) {
        rem0[i] += d1;
        rank[i] += d1 + sum;
      } else {
        rank[i] += sum;
      }
    }
  }
  for (int i = 0; i <= d + 1; ++i) bary[i] = 0.0;
  for (int i = 0; i <= d; ++i) {
    const double delta = (elevated[i] - rem0[i]) * down;
    bary[d - rank[i]] += delta;
    bary[d + 1 - rank[i]] -= delta;
  }
  bary[0] += 1.0 + bary[d + 1];
  return true;
}

// Key (first d coordinates; the last is implied by the zero sum) of the
// simplex vertex with remainder r.
SEGPOST_HOST_DEVICE void vertex_key(const int32_t* rem0, const int32_t* rank, int d, int r, int32_t* key) {
  for (int i = 0; i < d; ++i) key[i] = rem0[i] + r - (rank[i] > d - r ? d + 1 : 0);
}

// Keys of the two neighbours of a vertex along lattice axis `axis` (0..d).
SEGPOST_HOST_DEVICE void neighbour_keys(const int32_t* key, int d, int axis, int32_t* lo, int32_t* hi) {
  for (int i = 0; i < d; ++i) {
    lo[i] = key[i] - 1;
    hi[i] = key[i] + 1;
  }
  if (axis < d) {
    lo[axis] = key[axis] + d;
    hi[axis] = key[axis] - d;
  }
}

// MurmurHash3's 64-bit finaliser: spreads a hash over all bits, so that
// linear probing sees well-spread slots.
SEGPOST_HOST_DEVICE uint64_t mix_hash(uint64_t h) {
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 33;
  return h;
}

// Polynomial hash of a key's coordinates, mixed: the CUDA table's. The CPU
// build hashes a linear form instead, which it updates in O(1) from vertex
// to vertex (KeyHash in cpu/lattice/key_table.h).
SEGPOST_HOST_DEVICE uint64_t hash_key(const int32_t* key, int key_size) {
  uint64_t h = 0;
  for (int i = 0; i < key_size; ++i) h = h * 0x100000001B3ull + static_cast<uint32_t>(key[i]);
  return mix_hash(h);
}

}  // namespace segpost
