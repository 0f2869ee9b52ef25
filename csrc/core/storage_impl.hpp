// VectorStorage's state behind its public header: the lock, the id and metadata indexes and
// the by-slot vectors. Used by storage.cpp (the calls) and persist.cpp (the file format).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "core/id_index.hpp"
#include "core/metadata_index.hpp"
#include "core/rows.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/storage.hpp"

namespace hive_gpu {

namespace detail {
class ByteSink;    // core/persist.cpp: where save() and to_bytes() write the format
class ByteSource;  // core/persist.cpp: where load() and from_bytes() read it

// A shared mutex that never starves writers: a writer waits at the gate for the readers in
// flight and closes it behind them, so a stream of overlapping searches (each of which may
// hold the lock while its device works) cannot keep an add or remove out for ever.
class WriterPreferringMutex {
   public:
    void lock() {
        std::lock_guard<std::mutex> gate(gate_);
        rw_.lock();
    }
    bool try_lock() {
        std::unique_lock<std::mutex> gate(gate_, std::try_to_lock);
        return gate.owns_lock() && rw_.try_lock();
    }
    void unlock() { rw_.unlock(); }
    void lock_shared() {
        { std::lock_guard<std::mutex> gate(gate_); }
        rw_.lock_shared();
    }
    bool try_lock_shared() {
        std::unique_lock<std::mutex> gate(gate_, std::try_to_lock);
        return gate.owns_lock() && rw_.try_lock_shared();
    }
    void unlock_shared() { rw_.unlock_shared(); }

   private:
    std::mutex gate_;
    std::shared_mutex rw_;
};
}  // namespace detail

struct VectorStorage::Impl {
    Impl(std::shared_ptr<Context> context, std::unique_ptr<Engine> engine)
        : context_(std::move(context)),
          engine_(std::move(engine)),
          dimension_(engine_->dimension()),
          metric_(engine_->metric()),
          dtype_(engine_->dtype()),
          engine_checks_rows_(engine_->checks_appended_rows()),
          index_(std::make_unique<detail::IdIndex>()),
          metadata_of_(std::make_unique<detail::MetadataTable>()) {}

    void check_open() const {
        if (closed_) throw StorageClosedError("the storage is closed");
    }
    // Host rows in the store's dtype, converted and checked (core/rows.hpp) into `holder`
    // unless they are float32 rows of a float32 store, which pass as they are.
    VectorStorage::Source store_rows(const VectorStorage::Source& src, std::size_t n, std::size_t dim,
                                     const char* what, detail::StoreRows& holder) const;
    // The slots `filter` passes, under the caller's lock.
    detail::SlotBits select(const Filter& filter) const;
    // The same answer in place (MetadataTable::select), for searches and counts.
    detail::Selection view(const Filter& filter, bool bits) const;
    // The format itself (persist.cpp), over any sink or source. read_from() with a null
    // context only checks, and returns null.
    void write_to(detail::ByteSink& out) const;
    static std::shared_ptr<VectorStorage> read_from(const std::shared_ptr<Context>& context,
                                                    detail::ByteSource& in, StoreFileInfo* info);

    std::shared_ptr<Context> context_;
    std::unique_ptr<Engine> engine_;
    std::size_t dimension_;
    Metric metric_;
    Dtype dtype_;
    // Read once: engine_ is null after close() and may not be touched outside the lock.
    bool engine_checks_rows_;

    mutable detail::WriterPreferringMutex mutex_;
    bool closed_ = false;
    std::unique_ptr<detail::IdIndex> index_;  // id -> slot; stores no ids, reads id_of_
    std::vector<std::string> id_of_;          // by slot
    std::unique_ptr<detail::MetadataTable> metadata_of_;  // by slot, with its indexes
    std::vector<std::uint32_t> ordinal_of_;   // by slot, mirrors the engine's
    std::uint64_t next_ordinal_ = 0;
};

}  // namespace hive_gpu
