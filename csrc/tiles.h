// Tile order of the points of an image-like grid, shared by the lattice
// construction (which numbers vertices in this order) and the mean field
// (which sweeps the points in it). Points on one tile are near each other in
// the image, so they share lattice vertices; numbering the vertices in the
// same order keeps the rows a tile touches close together in memory.
#pragma once

#include <algorithm>
#include <cstdint>

namespace segpost {

// Tiles are kTileRows rows by kTileColumns columns.
constexpr int64_t kTileRows = 64;
constexpr int64_t kTileColumns = 64;

// Calls fn(begin, end) on runs of consecutive points covering [begin, end),
// tile by tile when the points are a grid with rows of `row_length` points
// (0, or rows no wider than a tile: one run, in point order).
template <class F>
void for_tiles(int64_t begin, int64_t end, int64_t row_length, const F& fn) {
  if (row_length <= kTileColumns) return fn(begin, end);
  const int64_t first_row = begin / row_length, last_row = (end - 1) / row_length;
  for (int64_t band = first_row; band <= last_row; band += kTileRows) {
    const int64_t band_end = std::min(band + kTileRows, last_row + 1);
    for (int64_t x = 0; x < row_length; x += kTileColumns) {
      for (int64_t row = band; row < band_end; ++row) {
        const int64_t run_begin = std::max(begin, row * row_length + x);
        const int64_t run_end = std::min(end, row * row_length + std::min(x + kTileColumns, row_length));
        if (run_begin < run_end) fn(run_begin, run_end);
      }
    }
  }
}

}  // namespace segpost
