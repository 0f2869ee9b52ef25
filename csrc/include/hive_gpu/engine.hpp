// The narrow interface every backend implements: a matrix of rows on a device and
// "top-k of these queries against my rows". Ids, metadata, validation, locking and
// persistence live in VectorStorage, never in an engine.
#pragma once

#include <cstddef>
#include <cstdint>

#include "hive_gpu/dtype.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/limits.hpp"
#include "hive_gpu/types.hpp"

namespace hive_gpu {

// A filter as an engine sees it: which slots may appear in a result. The core evaluates the
// user's predicate against its metadata indexes and hands over the answer; an engine never
// sees metadata.
struct SlotFilter {
    // ceil(size() / 64) words; slot s passes when bit (s % 64) of bits[s / 64] is set. Bits
    // at or past size() are zero.
    const std::uint64_t* bits = nullptr;
    // How many slots pass; the core guarantees 1 <= k <= count.
    std::size_t count = 0;
    // The passing slots in ascending order (count of them). Always set when
    // count <= size() / kSparseListRatio, so an engine may rely on it for a sparse path;
    // may be set for larger counts too, else null.
    const std::uint32_t* slots = nullptr;
    static constexpr std::size_t kSparseListRatio = 16;
};

// Contract
// - Rows are dense, slot i in [0, size()). Each row carries a 32-bit ordinal given by the
//   core (insertion order); ties in score rank the smaller ordinal first, so results are
//   deterministic whatever the slot layout after swap-removes.
// - Rows are kept in the engine's dtype() (float32, float16 or bfloat16). Host rows reach
//   append()/write() already in that dtype (the core rounds and checks them); device rows
//   reach append_device() in their own dtype and the engine rounds them on the device, bit
//   for bit as dtype.hpp's host conversions do. read() returns the stored values widened to
//   float32, exactly.
// - The engine owns the metric arithmetic, over the stored values: scores accumulate in
//   float32 and must equal a float64 reference on the stored (rounded) rows within float32
//   rounding, with the ranks that reference gives (ties: smaller ordinal first). It may keep
//   whatever per-row data it wants (norms, computed once at insert, from the stored values).
//   Cosine with a zero row or zero query scores 0.
// - Memory: growth must not copy the rows (fixed-size pages, or the host's own allocator
//   for the CPU), so a store can fill its device.
// - search() writes for each query the k best (slot, score) pairs, best first:
//     Cosine     -> cosine similarity            (higher first)
//     DotProduct -> inner product                (higher first)
//     Euclidean  -> SQUARED L2 distance, >= 0    (lower first; the core takes the root)
//   1 <= k <= size() is guaranteed by the caller; inputs are finite (checked by the core).
// - Thread safety: search() and read() may run concurrently with each other; the mutating
//   calls are never concurrent with anything (the core holds a writer lock).
// - Failure atomicity: a mutating call that throws leaves the engine as it was before.
//   Allocation failures throw OutOfMemoryError, driver failures BackendError.
class Engine {
   public:
    virtual ~Engine() = default;

    virtual std::size_t dimension() const = 0;
    virtual Metric metric() const = 0;
    virtual std::size_t size() const = 0;
    virtual Dtype dtype() const = 0;

    // Make room for at least `rows` rows without changing size().
    virtual void reserve(std::size_t rows) = 0;
    // Append n rows (host memory, n * dimension() elements of dtype()) with their ordinals.
    virtual void append(const void* rows, const std::uint32_t* ordinals, std::size_t n) = 0;
    // Overwrite the data of one slot (dimension() elements of dtype()); its ordinal stays.
    virtual void write(std::size_t slot, const void* row) = 0;
    // Copy slot src (data, per-row data, ordinal) onto slot dst. Used for O(1) swap-remove.
    virtual void move(std::size_t src, std::size_t dst) = 0;
    // Drop rows [n, size()). Engines may give memory back when the store shrinks a lot.
    virtual void truncate(std::size_t n) = 0;
    // Replace every ordinal (n == size()); used when the core renumbers.
    virtual void set_ordinals(const std::uint32_t* ordinals, std::size_t n) = 0;

    // Copy rows [first, first + n) to host memory, widened to float32.
    virtual void read(std::size_t first, std::size_t n, float* out) const = 0;

    // queries: nq * dimension() host floats, row major. Outputs: nq * k each.
    virtual void search(const float* queries, std::size_t nq, std::size_t k, float* scores,
                        std::int64_t* slots) const = 0;

    // search() restricted to the slots `filter` passes: only those rows may appear, ranked
    // and tied exactly as search() ranks them. 1 <= k <= filter.count. An engine chooses a
    // dense path (the mask applied in its scan) or a sparse one (score only filter.slots).
    virtual void search_filtered(const float* queries, std::size_t nq, std::size_t k,
                                 const SlotFilter& filter, float* scores,
                                 std::int64_t* slots) const = 0;

    // Bytes of device (or host, for the CPU) memory held for rows and per-row data.
    virtual std::size_t memory_bytes() const = 0;

    // --- Optional: engines with device memory -------------------------------------------
    // True when append() applies check_rows()'s rules itself (on the device, after the
    // upload, throwing through throw_row_fault()), so the core skips its host pass.
    virtual bool checks_appended_rows() const { return false; }

    // Device-resident input on this engine's device: rows/queries of dtype `src` with a
    // stride of `ld` elements. `stream` names the producer's stream as __cuda_array_interface__ v3 does
    // (0: no ordering needed, 1: legacy default, 2: per-thread default, else the handle);
    // the engine orders its work after it. Inputs are checked on the device (same rules and
    // errors as check_rows). search_device fills host scores/slots like search() and, when
    // device_scores is set, also writes the storage's final scores there (Euclidean rooted).
    virtual void append_device(const void* rows, Dtype src, std::size_t ld, const std::uint32_t* ordinals,
                               std::size_t n, std::uintptr_t stream) {
        (void)rows, (void)src, (void)ld, (void)ordinals, (void)n, (void)stream;
        throw InvalidArgumentError("this backend does not accept device arrays");
    }
    virtual void search_device(const void* queries, Dtype src, std::size_t ld, std::size_t nq, std::size_t k,
                               std::uintptr_t stream, float* scores, std::int64_t* slots,
                               float* device_scores) const {
        (void)queries, (void)src, (void)ld, (void)nq, (void)k, (void)stream, (void)scores, (void)slots,
            (void)device_scores;
        throw InvalidArgumentError("this backend does not accept device arrays");
    }
};

}  // namespace hive_gpu

// The operations every backend's engine defines, declared once. An engine class writes
// HIVE_GPU_ENGINE_OPERATIONS in its public part, keeps its dimension, metric and dtype in
// members named dim_, metric_ and dtype_, and declares size() and memory_bytes() itself.
#define HIVE_GPU_ENGINE_OPERATIONS                                                                        \
    std::size_t dimension() const override { return dim_; }                                             \
    Metric metric() const override { return metric_; }                                                   \
    Dtype dtype() const override { return dtype_; }                                                      \
    void reserve(std::size_t rows) override;                                                             \
    void append(const void* rows, const std::uint32_t* ordinals, std::size_t n) override;                \
    void write(std::size_t slot, const void* row) override;                                              \
    void move(std::size_t src, std::size_t dst) override;                                                \
    void truncate(std::size_t n) override;                                                               \
    void set_ordinals(const std::uint32_t* ordinals, std::size_t n) override;                            \
    void read(std::size_t first, std::size_t n, float* out) const override;                              \
    void search(const float* queries, std::size_t nq, std::size_t k, float* scores, std::int64_t* slots) \
        const override;                                                                                  \
    void search_filtered(const float* queries, std::size_t nq, std::size_t k, const SlotFilter& filter,  \
                         float* scores, std::int64_t* slots) const override
