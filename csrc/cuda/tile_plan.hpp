// How a batch's columns (the store's slots) are cut into GEMM tiles, and where each tile's
// scores go (host code; CudaEngine::select_tiles follows the plan, tests/cpp/cuda_tile_plan
// checks it).
//
// Tiles follow the pages: a tile holds whole pages, one GEMM each, and a page wider than a
// tile is split into equal parts (its last part may share a tile with the pages after it). A batch of several tiles ramps up: the first tile is
// narrow, since it is selected block-wide before any running k-th bounds it (at a cost that
// grows with its width), and each later tile is at most as wide as the columns before it,
// so that it passes about as many columns to the merge as the running top k holds.
//
// Scores go to two buffers of `ldt` columns per query. Tiles are packed side by side into
// one buffer (at offsets that keep float4 alignment) until the next does not fit, then into
// the other. A tile's GEMM waits for the selections of earlier tiles only when it moves
// into a buffer used before, so the narrow tiles of a ramp never wait for a selection.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/numeric.hpp"
#include "kernels/pages.cuh"

namespace hive_gpu::cuda {

struct TilePlace {
    int buffer;          // 0 or 1
    std::size_t offset;  // the tile's first column in the buffer (a multiple of 4)
    bool waits;          // the GEMM waits for the selections already queued on the buffer
};

struct TilePlan {
    std::vector<std::size_t> widths;  // columns per tile, in slot order; they sum to n
    std::vector<TilePlace> place;
};

// n columns (n > 0) over the pages of `map`; tiles at most `tile` wide (tile <= ldt), the
// ramp starting at `first` columns when there is more than one tile.
inline TilePlan plan_tiles(const kernels::PageMap& map, std::size_t n, std::size_t tile, std::size_t first,
                           std::size_t ldt) {
    TilePlan plan;
    std::size_t at = 0, target = n > tile ? std::min(first, tile) : tile;
    while (at < n) {
        std::size_t w = 0;
        while (at + w < n && w < target) {
            const kernels::PagePlace pl = map.place(at + w);
            const std::size_t part = std::min(map.rows(pl.page) - pl.row, n - at - w);
            if (w == 0 && part > target) {  // a page wider than the tile: equal parts of it
                w = std::min(target, ceil_div(ceil_div(part, ceil_div(part, target)), 256) * 256);
                break;
            }
            if (w + part > target) break;  // the page starts the next tile
            w += part;
        }
        plan.widths.push_back(w);
        at += w;
        target = std::min(tile, std::max(target, at));
    }
    int b = 0;
    std::size_t off = 0;
    bool used[2] = {true, false};
    for (std::size_t w : plan.widths) {
        bool waits = false;
        if (off + w > ldt) {
            b ^= 1;
            off = 0;
            waits = used[b];
            used[b] = true;
        }
        plan.place.push_back(TilePlace{b, off, waits});
        off += (w + 3) / 4 * 4;
    }
    return plan;
}

}  // namespace hive_gpu::cuda
