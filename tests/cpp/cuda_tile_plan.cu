// The CUDA engine's batch tile plan (csrc/cuda/tile_plan.hpp) against its invariants, over
// many page geometries, store sizes, tile widths and ramp starts. Host code only: no GPU.
//
//  - the widths cover the n columns in order, each between 1 and the tile width;
//  - a tile is a part of one page, or ends where a page does (the rest of a split page may
//    share a tile with the pages after it);
//  - a page is split only where it is wider than the tile being formed, and a tile of whole
//    pages takes every page that fits;
//  - the ramp: the first tile is at most `first` columns when there are several tiles, and
//    each later one at most as wide as the columns before it (or `first`);
//  - placement: offsets are multiples of 4 and tiles fit their buffer; a tile's region never
//    overlaps an earlier tile's region in the same buffer unless a tile in between (or the
//    tile itself) waited on that buffer after the earlier tile's selection was queued; a
//    tile waits only when it changes buffers.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "cuda/tile_plan.hpp"

namespace {

int failures = 0;

void fail(const std::string& what, const hive_gpu::kernels::PageMap& m, std::size_t n, std::size_t tile,
          std::size_t first) {
    if (++failures <= 20)
        std::fprintf(stderr, "FAIL %s (base %d, max %d, n %zu, tile %zu, first %zu)\n", what.c_str(), m.base_shift,
                     m.max_shift, n, tile, first);
}

void check(const hive_gpu::kernels::PageMap& m, std::size_t n, std::size_t tile, std::size_t first) {
    using hive_gpu::cuda::plan_tiles;
    const std::size_t ldt = (tile + 3) / 4 * 4;
    const auto plan = plan_tiles(m, n, tile, first, ldt);
    const auto& w = plan.widths;
    if (w.empty() || plan.place.size() != w.size()) return fail("no tiles, or no place for each", m, n, tile, first);
    std::size_t at = 0;
    for (std::size_t t = 0; t < w.size(); ++t) {
        if (w[t] == 0 || w[t] > tile) return fail("width out of range", m, n, tile, first);
        // The tile formed at column `at` is at most min(tile, max(first, at)) wide (the
        // whole tile when there is only one).
        const std::size_t target = n > tile ? std::min(tile, std::max(std::min(first, tile), at)) : tile;
        const auto a = m.place(at), z = m.place(at + w[t] - 1);
        const bool one_page = a.page == z.page;
        const bool starts_page = a.row == 0;
        const bool ends_page = at + w[t] == n || z.row + 1 == m.rows(z.page);
        // Over several pages, a tile ends where a page (or the store) does; it may start
        // within a page, with the rest of a page split before it.
        if (!one_page && !ends_page) return fail("a tile over several pages ends within one", m, n, tile, first);
        if (one_page && starts_page && !ends_page) {  // the first part of a split page
            // Only a page wider than the tile being formed is split.
            const std::size_t page_cols = std::min(m.rows(a.page), n - m.start(a.page));
            if (page_cols <= target) return fail("a page split though it fits the tile", m, n, tile, first);
        }
        if (starts_page && ends_page && at + w[t] < n) {  // whole pages: as many as fit
            const std::size_t next = m.place(at + w[t]).page;
            const std::size_t next_cols = std::min(m.rows(next), n - m.start(next));
            if (w[t] + next_cols <= target) return fail("a page left out of a tile it fits", m, n, tile, first);
        }
        // the ramp
        if (w.size() > 1) {
            if (t == 0 && w[0] > first) return fail("first tile wider than the ramp start", m, n, tile, first);
            if (t > 0 && w[t] > std::max(first, at)) return fail("tile wider than the columns before it", m, n, tile, first);
        }
        at += w[t];
    }
    if (at != n) return fail("widths do not sum to n", m, n, tile, first);
    // placement
    const auto& p = plan.place;
    for (std::size_t t = 0; t < w.size(); ++t) {
        if (p[t].buffer != 0 && p[t].buffer != 1) return fail("buffer out of range", m, n, tile, first);
        if (p[t].offset % 4 != 0 || p[t].offset + w[t] > ldt) return fail("tile outside its buffer", m, n, tile, first);
        const bool changes = t > 0 && p[t].buffer != p[t - 1].buffer;
        if (p[t].waits && !changes) return fail("waits without changing buffers", m, n, tile, first);
        if (t == 0 && (p[0].buffer != 0 || p[0].offset != 0 || p[0].waits)) return fail("first tile misplaced", m, n, tile, first);
        for (std::size_t u = 0; u < t; ++u) {
            if (p[u].buffer != p[t].buffer) continue;
            const bool overlap = p[u].offset < p[t].offset + w[t] && p[t].offset < p[u].offset + w[u];
            if (!overlap) continue;
            bool guarded = false;
            for (std::size_t v = u + 1; v <= t && !guarded; ++v) guarded = p[v].buffer == p[t].buffer && p[v].waits;
            if (!guarded) return fail("a tile overwrites scores not yet selected", m, n, tile, first);
        }
    }
}

}  // namespace

int main() {
    std::mt19937_64 rng(20261203);
    std::size_t cases = 0;
    for (int base = 6; base <= 12; ++base) {
        for (int max = base; max <= base + 10; ++max) {
            const hive_gpu::kernels::PageMap m{base, max};
            for (int i = 0; i < 60; ++i) {
                // stores from one row to a few dozen full pages
                const std::size_t n = 1 + rng() % ((std::size_t{40} << max) + 1);
                const std::size_t tile = 256 + rng() % (std::size_t{4} << max);
                const std::size_t first = 256 * (1 + rng() % 64);
                check(m, n, tile, first);
                ++cases;
            }
            // edges: n on and around page boundaries, tiles equal to a page
            for (std::size_t p = 0; p < 8; ++p) {
                const std::size_t edge = m.start(p + 1);
                for (std::size_t n : {edge - 1, edge, edge + 1}) {
                    for (std::size_t tile : {std::size_t{256}, m.rows(p), std::size_t{1} << max, n}) {
                        check(m, n, std::max<std::size_t>(tile, 1), 1024);
                        ++cases;
                    }
                }
            }
        }
    }
    // the H200's shapes: 1M rows of 768 float32 (pages of 256 to 65536 rows) and float16
    // (512 to 131072), 16 and 1024 queries
    check(hive_gpu::kernels::PageMap{8, 16}, 1000000, 250112, 1024);
    check(hive_gpu::kernels::PageMap{8, 16}, 1000000, 131072, 1024);
    check(hive_gpu::kernels::PageMap{9, 17}, 1000000, 250112, 1024);
    check(hive_gpu::kernels::PageMap{9, 17}, 1000000, 131072, 1024);
    cases += 4;
    if (failures) {
        std::fprintf(stderr, "%d of %zu plans failed\n", failures, cases);
        return 1;
    }
    std::printf("%zu tile plans hold their invariants\n", cases);
    return 0;
}
