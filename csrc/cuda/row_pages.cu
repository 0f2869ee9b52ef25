#include "cuda/row_pages.hpp"

#include <cstdlib>
#include <string>

#include "hive_gpu/error.hpp"

namespace hive_gpu::cuda {

namespace k = hive_gpu::kernels;

namespace {

constexpr std::size_t kMaxPageBytes = std::size_t{256} << 20;  // the largest pages
constexpr std::size_t kFirstPageBytes = std::size_t{1} << 20;  // the smallest

int floor_shift(std::size_t v) { return v <= 1 ? 0 : k::floor_log2(v); }

// HIVE_GPU_CUDA_PAGE_ROWS (read when a store is created): the largest page's rows, rounded
// down to a power of two, at least 64. Lets tests spread a small store over many pages.
std::size_t page_rows_from_env() {
    const char* v = std::getenv("HIVE_GPU_CUDA_PAGE_ROWS");
    if (v == nullptr || *v == '\0') return 0;
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v, &end, 10);
    if (end == v || *end != '\0' || n == 0)
        throw InvalidArgumentError(std::string("HIVE_GPU_CUDA_PAGE_ROWS must be a positive integer, not '") + v + "'");
    return static_cast<std::size_t>(n);
}

}  // namespace

RowPages::RowPages(CudaContext& ctx, std::size_t row_bytes, std::size_t max_page_rows)
    : ctx_(ctx), row_bytes_(row_bytes) {
    if (max_page_rows == 0) max_page_rows = page_rows_from_env();
    if (max_page_rows == 0) max_page_rows = kMaxPageBytes / row_bytes_;
    map_.max_shift = std::min(std::max(floor_shift(max_page_rows), k::kMinPageShift), 40);
    map_.base_shift = std::min(std::max(floor_shift(kFirstPageBytes / row_bytes_), k::kMinPageShift), map_.max_shift);
}

RowPages::~RowPages() {
    for (std::size_t p = 0; p < pages_.size(); ++p) {
        cudaFree(const_cast<void*>(pages_[p].rows));
        ctx_.uncharge(bytes_for(held_[p]));
    }
}

std::size_t RowPages::bytes_for(std::size_t rows) const {
    return rows * (row_bytes_ + sizeof(float) + sizeof(std::uint32_t));
}

unsigned char* RowPages::row(std::size_t slot) const {
    const k::PagePlace at = map_.place(slot);
    return static_cast<unsigned char*>(const_cast<void*>(pages_[at.page].rows)) + at.row * row_bytes_;
}

float* RowPages::factor(std::size_t slot) const {
    const k::PagePlace at = map_.place(slot);
    return pages_[at.page].factors + at.row;
}

std::uint32_t* RowPages::ordinal(std::size_t slot) const {
    const k::PagePlace at = map_.place(slot);
    return pages_[at.page].ordinals + at.row;
}

void RowPages::grow(std::size_t rows, cudaStream_t stream) {
    if (rows <= capacity_) return;
    const std::size_t need = map_.pages_for(rows);
    // A last page held in part (see below) is replaced first, then new pages follow.
    const std::size_t first = !pages_.empty() && held_.back() < map_.rows(pages_.size() - 1) ? pages_.size() - 1
                                                                                             : pages_.size();
    std::vector<k::PageRef> next(pages_.begin(), pages_.begin() + static_cast<std::ptrdiff_t>(first));
    std::vector<std::size_t> next_held(held_.begin(), held_.begin() + static_cast<std::ptrdiff_t>(first));
    next.reserve(need);
    next_held.reserve(need);
    std::size_t charged = 0;
    // Undoes this call's allocations when a later step fails; the store keeps what it had.
    auto undo = [&] {
        for (std::size_t p = first; p < next.size(); ++p) cudaFree(const_cast<void*>(next[p].rows));
        ctx_.uncharge(charged);
        cudaGetLastError();
    };
    // A page of `n` rows, or nullptr when neither the cap nor the device has room for it.
    auto try_page = [&](std::size_t n) -> void* {
        const std::size_t bytes = bytes_for(n);
        if (!ctx_.try_charge(bytes)) return nullptr;
        void* mem = nullptr;
        cudaError_t e = cudaMalloc(&mem, bytes);
        if (e == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            ctx_.trim_pool();  // the scratch pool's cache is the first thing to give back
            e = cudaMalloc(&mem, bytes);
        }
        if (e != cudaSuccess) {
            ctx_.uncharge(bytes);
            if (e == cudaErrorMemoryAllocation) {
                cudaGetLastError();
                return nullptr;
            }
            throw_cuda(e, "cudaMalloc");
        }
        charged += bytes;
        return mem;
    };
    try {
        for (std::size_t p = first; p < need; ++p) {
            // A whole page; else, for the last one, only the rows asked for (a multiple of
            // 64): so a store can fill the cap or the device to the row. Growing into the
            // rest of such a page later moves its rows once, to a whole page.
            std::size_t n = map_.rows(p);
            void* mem = try_page(n);
            if (mem == nullptr && p + 1 == need) {
                n = std::min(n, (rows - map_.start(p) + 63) / 64 * 64);
                if (p < held_.size()) n = std::max(n, held_[p]);
                if (n < map_.rows(p)) mem = try_page(n);
            }
            if (mem == nullptr)
                throw OutOfMemoryError(HIVE_GPU_BACKEND_NAME ": cannot hold " + std::to_string(rows) +
                                       " rows on the device (" + std::to_string((bytes_ + charged) >> 20) +
                                       " MiB of rows held or just allocated" +
                                       (ctx_.max_bytes() != 0 ? ", the context's cap is " +
                                                                    std::to_string(ctx_.max_bytes()) + " bytes"
                                                              : std::string()) +
                                       ")");
            auto* base = static_cast<unsigned char*>(mem);
            auto* factors = reinterpret_cast<float*>(base + n * row_bytes_);
            next.push_back(k::PageRef{mem, factors, reinterpret_cast<std::uint32_t*>(factors + n)});
            next_held.push_back(n);
            if (p < pages_.size()) {  // the partial page being replaced: its rows move over
                const std::size_t old = held_[p];
                check(cudaMemcpyAsync(mem, pages_[p].rows, old * row_bytes_, cudaMemcpyDeviceToDevice, stream),
                      "cudaMemcpyAsync");
                check(cudaMemcpyAsync(next[p].factors, pages_[p].factors, old * sizeof(float),
                                      cudaMemcpyDeviceToDevice, stream),
                      "cudaMemcpyAsync");
                check(cudaMemcpyAsync(next[p].ordinals, pages_[p].ordinals, old * sizeof(std::uint32_t),
                                      cudaMemcpyDeviceToDevice, stream),
                      "cudaMemcpyAsync");
            }
        }
        DevicePtr bigger;
        std::size_t slots = table_slots_;
        if (need > table_slots_) {
            slots = std::max<std::size_t>({need, table_slots_ * 2, 64});
            bigger = device_alloc(slots * sizeof(k::PageRef));
        }
        void* table = bigger ? bigger.get() : table_.get();
        check(cudaMemcpyAsync(table, next.data(), next.size() * sizeof(k::PageRef), cudaMemcpyHostToDevice, stream),
              "cudaMemcpyAsync");
        check(cudaStreamSynchronize(stream), "page table");
        if (bigger) {
            table_ = std::move(bigger);
            table_slots_ = slots;
        }
    } catch (...) {
        undo();
        throw;
    }
    if (first < pages_.size()) {  // the replaced partial page
        cudaFree(const_cast<void*>(pages_[first].rows));
        ctx_.uncharge(bytes_for(held_[first]));
        bytes_ -= bytes_for(held_[first]);
    }
    pages_ = std::move(next);
    held_ = std::move(next_held);
    bytes_ += charged;
    capacity_ = map_.start(pages_.size() - 1) + held_.back();
}

void RowPages::shrink(std::size_t rows, cudaStream_t stream) {
    const std::size_t keep = rows == 0 ? 0 : map_.pages_for(rows) + 1;
    if (keep < pages_.size()) free_from(keep, stream);
}

void RowPages::free_from(std::size_t keep, cudaStream_t stream) {
    check(cudaStreamSynchronize(stream), "freeing pages");
    for (std::size_t p = keep; p < pages_.size(); ++p) {
        cudaFree(const_cast<void*>(pages_[p].rows));
        ctx_.uncharge(bytes_for(held_[p]));
        bytes_ -= bytes_for(held_[p]);
    }
    pages_.resize(keep);
    held_.resize(keep);
    capacity_ = keep == 0 ? 0 : map_.start(keep - 1) + held_.back();
    if (keep == 0) {  // an emptied store gives its table back too
        table_.reset();
        table_slots_ = 0;
    }
    // The table's first `keep` entries are unchanged: nothing to upload.
}

}  // namespace hive_gpu::cuda
