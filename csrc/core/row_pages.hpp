// Where rows live in a device engine that keeps them in pages (separate buffers that never
// move): growing adds a page, so existing rows are never copied and a store never needs
// twice its memory to grow. Page capacities double from `first` rows up to `most` (what one
// buffer or binding may hold) and then stay at `most`, so a small store stays small and a
// large one wastes at most one page. Pure arithmetic; the engine owns the buffers.
#pragma once

#include <algorithm>
#include <cstddef>

namespace hive_gpu {

struct PageLayout {
    std::size_t first = 1;  // rows of page 0
    std::size_t most = 1;   // rows of every page once doubling reaches it

    PageLayout() = default;
    PageLayout(std::size_t first_rows, std::size_t most_rows)
        : first(std::max<std::size_t>(1, std::min(first_rows, most_rows))), most(std::max<std::size_t>(1, most_rows)) {}

    // Rows page i holds.
    std::size_t rows(std::size_t i) const {
        std::size_t r = first;
        for (std::size_t j = 0; j < i && r < most; ++j) r *= 2;
        return std::min(r, most);
    }
    // Slot of page i's first row.
    std::size_t start(std::size_t i) const {
        std::size_t s = 0, r = first;
        for (std::size_t j = 0; j < i; ++j) {
            if (r >= most) return s + (i - j) * most;
            s += r;
            r *= 2;
        }
        return s;
    }
    struct Place {
        std::size_t page, offset;
    };
    // The page holding `slot` and the row within it.
    Place locate(std::size_t slot) const {
        std::size_t page = 0, r = first;
        for (; r < most; r *= 2, ++page) {
            if (slot < r) return {page, slot};
            slot -= r;
        }
        return {page + slot / most, slot % most};
    }
    // Pages that hold `n` rows together (0 for none).
    std::size_t pages_for(std::size_t n) const { return n == 0 ? 0 : locate(n - 1).page + 1; }
};

}  // namespace hive_gpu
