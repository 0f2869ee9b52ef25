// The narrow interface every backend implements: a matrix of rows on a device and
// "top-k of these queries against my rows". Ids, metadata, validation, locking and
// persistence live in VectorStorage, never in an engine.
#pragma once

#include <cstddef>
#include <cstdint>

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
// - The engine owns the metric arithmetic. It stores rows exactly as given (read() returns
//   them bit for bit) plus whatever per-row data it wants (norms, computed once at insert).
//   Cosine with a zero row or zero query scores 0.
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

    // Make room for at least `rows` rows without changing size().
    virtual void reserve(std::size_t rows) = 0;
    // Append n rows (host memory, n * dimension() floats) with their ordinals.
    virtual void append(const float* rows, const std::uint32_t* ordinals, std::size_t n) = 0;
    // Overwrite the data of one slot; its ordinal stays.
    virtual void write(std::size_t slot, const float* row) = 0;
    // Copy slot src (data, per-row data, ordinal) onto slot dst. Used for O(1) swap-remove.
    virtual void move(std::size_t src, std::size_t dst) = 0;
    // Drop rows [n, size()). Engines may give memory back when the store shrinks a lot.
    virtual void truncate(std::size_t n) = 0;
    // Replace every ordinal (n == size()); used when the core renumbers.
    virtual void set_ordinals(const std::uint32_t* ordinals, std::size_t n) = 0;

    // Copy rows [first, first + n) to host memory.
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

    // Device-resident input on this engine's device: rows/queries with a stride of `ld`
    // floats. `stream` names the producer's stream as __cuda_array_interface__ v3 does
    // (0: no ordering needed, 1: legacy default, 2: per-thread default, else the handle);
    // the engine orders its work after it. Inputs are checked on the device (same rules and
    // errors as check_rows). search_device fills host scores/slots like search() and, when
    // device_scores is set, also writes the storage's final scores there (Euclidean rooted).
    virtual void append_device(const float* rows, std::size_t ld, const std::uint32_t* ordinals,
                               std::size_t n, std::uintptr_t stream) {
        (void)rows, (void)ld, (void)ordinals, (void)n, (void)stream;
        throw InvalidArgumentError("this backend does not accept device arrays");
    }
    virtual void search_device(const float* queries, std::size_t ld, std::size_t nq, std::size_t k,
                               std::uintptr_t stream, float* scores, std::int64_t* slots,
                               float* device_scores) const {
        (void)queries, (void)ld, (void)nq, (void)k, (void)stream, (void)scores, (void)slots,
            (void)device_scores;
        throw InvalidArgumentError("this backend does not accept device arrays");
    }
};

}  // namespace hive_gpu
