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
        ctx_.uncharge(page_bytes(p));
    }
}

std::size_t RowPages::page_bytes(std::size_t p) const {
    return map_.rows(p) * (row_bytes_ + sizeof(float) + sizeof(std::uint32_t));
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
    std::vector<k::PageRef> next = pages_;
    next.reserve(need);
    std::size_t charged = 0;
    // Undoes this call's pages when a later step fails; the store keeps what it had.
    auto undo = [&] {
        for (std::size_t p = pages_.size(); p < next.size(); ++p) cudaFree(const_cast<void*>(next[p].rows));
        ctx_.uncharge(charged);
        cudaGetLastError();
    };
    try {
        for (std::size_t p = pages_.size(); p < need; ++p) {
            const std::size_t bytes = page_bytes(p);
            ctx_.charge(bytes, "rows");
            charged += bytes;
            void* mem = nullptr;
            cudaError_t e = cudaMalloc(&mem, bytes);
            if (e == cudaErrorMemoryAllocation) {
                cudaGetLastError();
                ctx_.trim_pool();  // the scratch pool's cache is the first thing to give back
                e = cudaMalloc(&mem, bytes);
            }
            if (e == cudaErrorMemoryAllocation)
                throw OutOfMemoryError(HIVE_GPU_BACKEND_NAME ": cannot hold " + std::to_string(rows) +
                                       " rows on the device: no room for a page of " + std::to_string(bytes >> 20) +
                                       " MiB after " + std::to_string((bytes_ + charged - bytes) >> 20) +
                                       " MiB of rows");
            check(e, "cudaMalloc");
            const std::size_t n = map_.rows(p);
            auto* base = static_cast<unsigned char*>(mem);
            auto* factors = reinterpret_cast<float*>(base + n * row_bytes_);
            next.push_back(k::PageRef{mem, factors, reinterpret_cast<std::uint32_t*>(factors + n)});
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
    pages_ = std::move(next);
    bytes_ += charged;
    capacity_ = map_.start(pages_.size());
}

void RowPages::shrink(std::size_t rows, cudaStream_t stream) {
    const std::size_t keep = rows == 0 ? 0 : map_.pages_for(rows) + 1;
    if (keep < pages_.size()) free_from(keep, stream);
}

void RowPages::free_from(std::size_t keep, cudaStream_t stream) {
    check(cudaStreamSynchronize(stream), "freeing pages");
    for (std::size_t p = keep; p < pages_.size(); ++p) {
        cudaFree(const_cast<void*>(pages_[p].rows));
        ctx_.uncharge(page_bytes(p));
        bytes_ -= page_bytes(p);
    }
    pages_.resize(keep);
    capacity_ = map_.start(keep);
    if (keep == 0) {  // an emptied store gives its table back too
        table_.reset();
        table_slots_ = 0;
    }
    // The table's first `keep` entries are unchanged: nothing to upload.
}

}  // namespace hive_gpu::cuda
