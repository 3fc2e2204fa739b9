// Blocks of 8 floats with GCC vector extensions: one AVX register in the
// x86-64-v3 clones, two SSE registers in the baseline ones.
#pragma once

#include <cstdint>

// Hot loops get an AVX2/FMA clone picked at load time; the default clone keeps
// the extension portable to any x86-64 CPU. A -march=native build
// (SEGPOST_NATIVE=1, which defines SEGPOST_NO_MULTIVERSION) compiles each
// loop once, for the build machine.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(__clang__) && \
    !defined(SEGPOST_NO_MULTIVERSION)
#define SEGPOST_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SEGPOST_MULTIVERSION
#endif

// Everything called from a multiversioned entry point must inline into it, so
// that each clone compiles it for its own instruction set.
#define SEGPOST_INLINE __attribute__((always_inline)) inline

namespace segpost {
namespace simd {

// Under-aligned on purpose: blocks live in std::vector and on the stack at
// any 4-byte boundary, so the compiler must use unaligned loads and stores.
typedef float Block __attribute__((vector_size(32), aligned(4)));
typedef int32_t IntBlock __attribute__((vector_size(32), aligned(4)));

__attribute__((always_inline)) inline Block load(const float* p) {
  Block b;
  __builtin_memcpy(&b, p, sizeof(Block));
  return b;
}

__attribute__((always_inline)) inline void store(float* p, Block b) { __builtin_memcpy(p, &b, sizeof(Block)); }

__attribute__((always_inline)) inline Block splat(float x) { return Block{} + x; }

// Maximum / sum of the 8 lanes, in every lane, by three butterfly steps (a
// fixed order: the same bits on every call).
__attribute__((always_inline)) inline Block reduce_max(Block x) {
  x = x > __builtin_shuffle(x, IntBlock{4, 5, 6, 7, 0, 1, 2, 3}) ? x : __builtin_shuffle(x, IntBlock{4, 5, 6, 7, 0, 1, 2, 3});
  x = x > __builtin_shuffle(x, IntBlock{2, 3, 0, 1, 6, 7, 4, 5}) ? x : __builtin_shuffle(x, IntBlock{2, 3, 0, 1, 6, 7, 4, 5});
  x = x > __builtin_shuffle(x, IntBlock{1, 0, 3, 2, 5, 4, 7, 6}) ? x : __builtin_shuffle(x, IntBlock{1, 0, 3, 2, 5, 4, 7, 6});
  return x;
}

__attribute__((always_inline)) inline Block reduce_sum(Block x) {
  x += __builtin_shuffle(x, IntBlock{4, 5, 6, 7, 0, 1, 2, 3});
  x += __builtin_shuffle(x, IntBlock{2, 3, 0, 1, 6, 7, 4, 5});
  x += __builtin_shuffle(x, IntBlock{1, 0, 3, 2, 5, 4, 7, 6});
  return x;
}

// exp(x) for x <= 0 (a softmax's shifted scores; nothing else needs exp):
// Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2 (ln2 split in two so
// that r is exact), then a degree-6 Taylor polynomial (relative error below
// 2e-7) scaled by 2^n through the exponent bits. Lanes below -87 (where
// float underflows) give 0.
__attribute__((always_inline)) inline Block exp_nonpositive(Block x) {
  const Block too_small = splat(-87.0f);
  const IntBlock underflow = x < too_small;
  x = x < too_small ? too_small : x;
  const IntBlock n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, IntBlock);  // round half away from 0
  const Block nf = __builtin_convertvector(n, Block);
  const Block r = (x - nf * 0.693359375f) + nf * 2.12194440e-4f;
  Block p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const IntBlock bits = (n + 127) << 23;
  Block scale;
  __builtin_memcpy(&scale, &bits, sizeof(Block));
  const Block result = p * scale;
  return underflow ? Block{} : result;
}

}  // namespace simd
}  // namespace segpost
