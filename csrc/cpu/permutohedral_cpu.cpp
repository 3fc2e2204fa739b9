// CPU construction and filtering of the permutohedral lattice.
// Construction follows the steps of Adams et al. 2010 (see shared REFERENCE.md):
// scale, elevate onto the hyperplane x . 1 = 0 in R^{d+1}, find the enclosing
// simplex from the nearest zero-coloured point and the rank of the remainders,
// compute barycentric weights, hash the d+1 vertices.
#include "../permutohedral.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "../parallel.h"

namespace segpost {

namespace {

// Grain sizes: below these a loop stays on the calling thread.
constexpr int64_t kPointGrain = 2048;
constexpr int64_t kVertexGrain = 1024;

// Open-addressing hash table from d-dimensional integer keys (the last lattice
// coordinate is implied by the zero sum) to dense vertex ids in insertion
// order. Sequential inserts in point order make the numbering independent of
// the thread count.
class KeyTable {
 public:
  KeyTable(int key_size, int64_t expected) : key_size_(key_size) {
    std::size_t capacity = 1024;
    while (capacity < static_cast<std::size_t>(expected) * 2) capacity <<= 1;
    slots_.assign(capacity, -1);
    mask_ = capacity - 1;
    keys_.reserve(static_cast<std::size_t>(expected) * key_size);
  }

  int64_t size() const { return size_; }

  int32_t insert(const int32_t* key) {
    if (static_cast<std::size_t>(size_ + 1) * 2 > slots_.size()) grow();
    std::size_t slot = hash(key) & mask_;
    for (;;) {
      const int32_t id = slots_[slot];
      if (id < 0) {
        if (size_ >= std::numeric_limits<int32_t>::max() - 1)
          throw std::length_error("permutohedral lattice: too many vertices for int32 indices");
        slots_[slot] = static_cast<int32_t>(size_);
        keys_.insert(keys_.end(), key, key + key_size_);
        return static_cast<int32_t>(size_++);
      }
      if (equal(id, key)) return id;
      slot = (slot + 1) & mask_;
    }
  }

  int32_t find(const int32_t* key) const {
    std::size_t slot = hash(key) & mask_;
    for (;;) {
      const int32_t id = slots_[slot];
      if (id < 0) return -1;
      if (equal(id, key)) return id;
      slot = (slot + 1) & mask_;
    }
  }

  const int32_t* key(int64_t id) const { return keys_.data() + id * key_size_; }

 private:
  std::size_t hash(const int32_t* key) const {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < key_size_; ++i) {
      h ^= static_cast<uint32_t>(key[i]);
      h *= 0xBF58476D1CE4E5B9ull;
      h ^= h >> 31;
    }
    return static_cast<std::size_t>(h);
  }

  bool equal(int32_t id, const int32_t* key) const {
    const int32_t* stored = keys_.data() + static_cast<int64_t>(id) * key_size_;
    for (int i = 0; i < key_size_; ++i)
      if (stored[i] != key[i]) return false;
    return true;
  }

  void grow() {
    std::vector<int32_t> bigger(slots_.size() * 2, -1);
    const std::size_t mask = bigger.size() - 1;
    for (int64_t id = 0; id < size_; ++id) {
      std::size_t slot = hash(key(id)) & mask;
      while (bigger[slot] >= 0) slot = (slot + 1) & mask;
      bigger[slot] = static_cast<int32_t>(id);
    }
    slots_.swap(bigger);
    mask_ = mask;
  }

  int key_size_;
  int64_t size_ = 0;
  std::size_t mask_ = 0;
  std::vector<int32_t> slots_;
  std::vector<int32_t> keys_;
};

}  // namespace

PermutohedralLattice::PermutohedralLattice(const double* features, int64_t num_points, int dim)
    : num_points_(num_points), dim_(dim) {
  if (num_points < 1) throw std::invalid_argument("permutohedral lattice: need at least one point");
  if (dim < 1 || dim > kMaxDim)
    throw std::invalid_argument("permutohedral lattice: dim must be in [1, " +
                                std::to_string(kMaxDim) + "], got " + std::to_string(dim));
  const int d = dim;
  const int d1 = d + 1;
  if (num_points > (std::numeric_limits<int32_t>::max() - 1) / d1)
    throw std::length_error("permutohedral lattice: num_points * (dim + 1) must fit in int32");

  const std::size_t corners = static_cast<std::size_t>(num_points) * d1;
  corner_weight_.resize(corners);
  // Per corner: the nearest zero-coloured coordinate and the rank of the
  // remainder; together they give the vertex keys in the sequential pass.
  std::vector<int32_t> rem0(corners);
  std::vector<int32_t> rank(corners);

  // Scaling that makes the lattice blur a unit-variance Gaussian.
  std::vector<double> scale(d);
  const double inv_std_dev = std::sqrt(2.0 / 3.0) * d1;
  for (int i = 0; i < d; ++i) scale[i] = inv_std_dev / std::sqrt((i + 1.0) * (i + 2.0));

  // Keys must stay well inside int32 (neighbour keys add +-d).
  const double key_limit = static_cast<double>(1 << 30);
  std::atomic<bool> overflow{false};

  parallel_for(num_points, kPointGrain, [&](int64_t begin, int64_t end) {
    double elevated[kMaxDim + 1];
    double bary[kMaxDim + 2];
    bool local_overflow = false;
    for (int64_t p = begin; p < end; ++p) {
      const double* f = features + p * d;
      double running = 0.0;
      for (int j = d; j > 0; --j) {
        const double cf = f[j - 1] * scale[j - 1];
        elevated[j] = running - j * cf;
        running += cf;
      }
      elevated[0] = running;

      int32_t* r0 = rem0.data() + p * d1;
      int32_t* rk = rank.data() + p * d1;
      int sum = 0;
      for (int i = 0; i <= d; ++i) {
        if (!(std::fabs(elevated[i]) < key_limit)) local_overflow = true;
        const double v = elevated[i] / d1;
        const double up = std::ceil(v) * d1;
        const double down = std::floor(v) * d1;
        const double nearest = (up - elevated[i] < elevated[i] - down) ? up : down;
        r0[i] = local_overflow ? 0 : static_cast<int32_t>(nearest);
        sum += local_overflow ? 0 : static_cast<int>(nearest / d1);
        rk[i] = 0;
      }
      if (local_overflow) continue;  // reported after the loop
      // Rank the remainders, larger first; ties broken by index.
      for (int i = 0; i < d; ++i) {
        const double di = elevated[i] - r0[i];
        for (int j = i + 1; j <= d; ++j) {
          if (di < elevated[j] - r0[j]) ++rk[i];
          else ++rk[j];
        }
      }
      // The nearest zero-coloured point may lie off the hyperplane by `sum`
      // steps; move the coordinates with the largest/smallest remainders.
      if (sum > 0) {
        for (int i = 0; i <= d; ++i) {
          if (rk[i] >= d1 - sum) {
            r0[i] -= d1;
            rk[i] += sum - d1;
          } else {
            rk[i] += sum;
          }
        }
      } else if (sum < 0) {
        for (int i = 0; i <= d; ++i) {
          if (rk[i] < -sum) {
            r0[i] += d1;
            rk[i] += d1 + sum;
          } else {
            rk[i] += sum;
          }
        }
      }
      for (int i = 0; i <= d + 1; ++i) bary[i] = 0.0;
      for (int i = 0; i <= d; ++i) {
        const double delta = (elevated[i] - r0[i]) / d1;
        bary[d - rk[i]] += delta;
        bary[d + 1 - rk[i]] -= delta;
      }
      bary[0] += 1.0 + bary[d + 1];
      float* w = corner_weight_.data() + p * d1;
      for (int r = 0; r <= d; ++r) w[r] = static_cast<float>(bary[r]);
    }
    if (local_overflow) overflow.store(true);
  });
  if (overflow)
    throw std::overflow_error(
        "permutohedral lattice: features span too large a range for int32 lattice keys");

  // Sequential hashing in point order: deterministic vertex numbering.
  KeyTable table(d, num_points * 2);
  corner_vertex_.resize(corners);
  {
    int32_t key[kMaxDim];
    for (int64_t p = 0; p < num_points; ++p) {
      const int32_t* r0 = rem0.data() + p * d1;
      const int32_t* rk = rank.data() + p * d1;
      for (int r = 0; r <= d; ++r) {
        for (int i = 0; i < d; ++i) key[i] = r0[i] + r - (rk[i] > d - r ? d1 : 0);
        corner_vertex_[p * d1 + r] = table.insert(key) + 1;
      }
    }
  }
  num_vertices_ = table.size();
  std::vector<int32_t>().swap(rem0);
  std::vector<int32_t>().swap(rank);

  // Blur neighbours: read-only lookups, parallel over vertices.
  const int64_t m = num_vertices_;
  blur_neighbour_.assign(static_cast<std::size_t>(d1) * m * 2, 0);
  parallel_for(m, kVertexGrain, [&](int64_t begin, int64_t end) {
    int32_t lo[kMaxDim], hi[kMaxDim];
    for (int64_t v = begin; v < end; ++v) {
      const int32_t* key = table.key(v);
      for (int axis = 0; axis <= d; ++axis) {
        for (int i = 0; i < d; ++i) {
          lo[i] = key[i] - 1;
          hi[i] = key[i] + 1;
        }
        if (axis < d) {
          lo[axis] = key[axis] + d;
          hi[axis] = key[axis] - d;
        }
        int32_t* out = blur_neighbour_.data() + (static_cast<std::size_t>(axis) * m + v) * 2;
        out[0] = table.find(lo) + 1;
        out[1] = table.find(hi) + 1;
      }
    }
  });

  // CSR transpose of the corner -> vertex map (counting sort, stable in point order).
  splat_start_.assign(m + 1, 0);
  for (std::size_t c = 0; c < corners; ++c) ++splat_start_[corner_vertex_[c]];
  for (int64_t v = 0; v < m; ++v) splat_start_[v + 1] += splat_start_[v];
  splat_corner_.resize(corners);
  {
    std::vector<int64_t> cursor(splat_start_.begin(), splat_start_.end() - 1);
    for (std::size_t c = 0; c < corners; ++c)
      splat_corner_[cursor[corner_vertex_[c] - 1]++] = static_cast<int32_t>(c);
  }
}

void PermutohedralLattice::filter(const float* values, int64_t channels, float* out,
                                  bool transpose) const {
  const int d = dim_;
  const int d1 = d + 1;
  const int64_t m = num_vertices_;
  const int64_t c = channels;
  // Row 0 of each buffer stays zero: it is what missing neighbours read.
  std::vector<float> current(static_cast<std::size_t>(m + 1) * c, 0.0f);
  std::vector<float> next(static_cast<std::size_t>(m + 1) * c, 0.0f);

  // Splat: gather each vertex's weighted contributions in point order.
  parallel_for(m, kVertexGrain, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      float* dst = current.data() + (v + 1) * c;
      for (int64_t e = splat_start_[v]; e < splat_start_[v + 1]; ++e) {
        const int32_t corner = splat_corner_[e];
        const float w = corner_weight_[corner];
        const float* src = values + static_cast<int64_t>(corner / d1) * c;
        for (int64_t k = 0; k < c; ++k) dst[k] += w * src[k];
      }
    }
  });

  // Blur with [1/2, 1, 1/2] along each lattice axis; reversed order is the adjoint.
  for (int step = 0; step <= d; ++step) {
    const int axis = transpose ? d - step : step;
    const int32_t* nbr = blur_neighbour_.data() + static_cast<std::size_t>(axis) * m * 2;
    parallel_for(m, kVertexGrain, [&](int64_t begin, int64_t end) {
      for (int64_t v = begin; v < end; ++v) {
        const float* self = current.data() + (v + 1) * c;
        const float* lo = current.data() + static_cast<int64_t>(nbr[2 * v]) * c;
        const float* hi = current.data() + static_cast<int64_t>(nbr[2 * v + 1]) * c;
        float* dst = next.data() + (v + 1) * c;
        for (int64_t k = 0; k < c; ++k) dst[k] = self[k] + 0.5f * (lo[k] + hi[k]);
      }
    });
    current.swap(next);
  }

  // Slice: barycentric interpolation, scaled by the lattice's constant.
  const float alpha = static_cast<float>(1.0 / (1.0 + std::pow(2.0, -d)));
  parallel_for(num_points_, kPointGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* dst = out + p * c;
      for (int64_t k = 0; k < c; ++k) dst[k] = 0.0f;
      for (int r = 0; r < d1; ++r) {
        const float w = alpha * corner_weight_[p * d1 + r];
        const float* src = current.data() + static_cast<int64_t>(corner_vertex_[p * d1 + r]) * c;
        for (int64_t k = 0; k < c; ++k) dst[k] += w * src[k];
      }
    }
  });
}

std::size_t PermutohedralLattice::nbytes() const {
  return corner_vertex_.size() * sizeof(int32_t) + corner_weight_.size() * sizeof(float) +
         splat_start_.size() * sizeof(int64_t) + splat_corner_.size() * sizeof(int32_t) +
         blur_neighbour_.size() * sizeof(int32_t);
}

std::size_t PermutohedralLattice::filter_scratch_bytes(int64_t channels) const {
  return 2 * static_cast<std::size_t>(num_vertices_ + 1) * channels * sizeof(float);
}

}  // namespace segpost
