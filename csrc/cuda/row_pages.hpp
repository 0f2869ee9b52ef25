// The device row buffer of one store: fixed pages that are never moved (kernels/pages.cuh
// gives their sizes), each holding its rows followed by their factors and ordinals, and the
// page table the kernels read. Growing adds pages, so it never copies a row and never needs
// more memory than the new pages; shrinking gives whole pages back. Only where the cap or the
// device has no room for a whole last page is it allocated in part, to the rows asked for;
// growing into the rest of it later moves that one page's rows (never more).
#pragma once

#include "kernels/compat.cuh"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/cuda_context.hpp"
#include "cuda/device_owners.hpp"
#include "kernels/pages.cuh"

namespace hive_gpu::cuda {

class RowPages {
   public:
    // row_bytes: bytes of one padded row (a multiple of 16). max_page_rows (a power of two,
    // 0: automatic) caps the rows of a page; HIVE_GPU_CUDA_PAGE_ROWS sets it for tests.
    RowPages(CudaContext& ctx, std::size_t row_bytes, std::size_t max_page_rows = 0);
    ~RowPages();
    RowPages(const RowPages&) = delete;
    RowPages& operator=(const RowPages&) = delete;

    const kernels::PageMap& map() const { return map_; }
    std::size_t capacity() const { return capacity_; }  // rows the allocated pages hold
    std::size_t page_count() const { return pages_.size(); }
    std::size_t bytes() const { return bytes_; }  // device bytes of the pages
    const kernels::PageRef& page(std::size_t p) const { return pages_[p]; }
    const kernels::PageRef* host_table() const { return pages_.data(); }
    const kernels::PageRef* device_table() const { return static_cast<const kernels::PageRef*>(table_.get()); }

    // Pages until `rows` fit. All or nothing: on failure (the context's cap, or no device
    // memory after the pool gave its cache back) the new pages go and OutOfMemoryError says
    // so. `stream` is the store's write stream, synchronized before the table changes.
    // Pages are whole, but for a last page that only fits in part.
    void grow(std::size_t rows, cudaStream_t stream);
    // Gives back every page past the one holding row `rows` - 1, keeping one empty page as
    // slack so that a remove and an add at a page boundary do not free and allocate each
    // time; rows == 0 gives everything back.
    void shrink(std::size_t rows, cudaStream_t stream);

    // Host-side addresses of one slot's row, factor and ordinal.
    unsigned char* row(std::size_t slot) const;
    float* factor(std::size_t slot) const;
    std::uint32_t* ordinal(std::size_t slot) const;

    // f(slot0, count, page, offset) for each run of slots [first, first + n) that lies in one
    // page, `offset` being slot0's row in that page.
    template <typename F>
    void for_each_run(std::size_t first, std::size_t n, F&& f) const {
        const std::size_t end = first + n;
        while (first < end) {
            const kernels::PagePlace at = map_.place(first);
            const std::size_t count = std::min(end - first, map_.rows(at.page) - at.row);
            f(first, count, at.page, at.row);
            first += count;
        }
    }

   private:
    std::size_t bytes_for(std::size_t rows) const;  // a page of `rows` rows with their row data
    // Frees pages [keep, page_count()) and uploads the table for what is left.
    void free_from(std::size_t keep, cudaStream_t stream);

    CudaContext& ctx_;
    std::size_t row_bytes_;
    kernels::PageMap map_;
    std::vector<kernels::PageRef> pages_;
    std::vector<std::size_t> held_;  // rows each page holds: all of map_.rows(p), or fewer for a last page
    std::size_t capacity_ = 0;
    std::size_t bytes_ = 0;
    DevicePtr table_;           // device copy of pages_
    std::size_t table_slots_ = 0;
};

}  // namespace hive_gpu::cuda
