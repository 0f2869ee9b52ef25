#include "hive_gpu/storage.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <numeric>
#include <string>
#include <thread>
#include <utility>

#include "core/rows.hpp"
#include "core/storage_impl.hpp"
#include "core/validate.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu {

namespace {

using ReadLock = std::shared_lock<detail::WriterPreferringMutex>;
using WriteLock = std::unique_lock<detail::WriterPreferringMutex>;

// Room for `need` elements, growing geometrically: std::vector::reserve takes exactly what it
// is asked for, which would make a run of single adds copy the whole vector each time.
template <typename Vec>
void make_room(Vec& v, std::size_t need) {
    if (need > v.capacity()) v.reserve(std::max(need, v.capacity() + v.capacity() / 2));
}

// A batch of n rows takes n ids, and no metadata or one entry per row.
void check_batch_sizes(std::size_t ids, std::size_t metadata, std::size_t n) {
    if (ids != n)
        throw InvalidArgumentError("got " + std::to_string(ids) + " ids for " + std::to_string(n) + " vectors");
    if (metadata != 0 && metadata != n)
        throw InvalidArgumentError("got " + std::to_string(metadata) + " metadata entries for " +
                                   std::to_string(n) + " vectors");
}

// Whether every byte of s is ASCII, read 8 bytes at a time: ids nearly always are, and
// then they are valid UTF-8 without the byte-by-byte decode.
bool all_ascii(const std::string& s) {
    const char* p = s.data();
    const std::size_t n = s.size();
    std::uint64_t seen = 0;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t w;
        std::memcpy(&w, p + i, 8);
        seen |= w;
    }
    std::uint64_t tail = 0;
    std::memcpy(&tail, p + i, n - i);
    return ((seen | tail) & 0x8080808080808080ull) == 0;
}

}  // namespace

VectorStorage::VectorStorage(std::shared_ptr<Context> context, std::unique_ptr<Engine> engine)
    : impl_(std::make_unique<Impl>(std::move(context), std::move(engine))) {}

VectorStorage::~VectorStorage() = default;

std::size_t VectorStorage::dimension() const { return impl_->dimension_; }
Metric VectorStorage::metric() const { return impl_->metric_; }
Dtype VectorStorage::dtype() const { return impl_->dtype_; }
const std::shared_ptr<Context>& VectorStorage::context() const { return impl_->context_; }

void VectorStorage::check_id(const std::string& id) {
    if (id.empty()) throw InvalidArgumentError("vector id must not be empty");
    if (id.size() > kMaxIdBytes)
        throw InvalidArgumentError("vector id is " + std::to_string(id.size()) +
                                   " bytes long; the limit is " + std::to_string(kMaxIdBytes));
    // Files hold UTF-8 only (load refuses anything else): refuse what could not be reloaded.
    if (!all_ascii(id) && !detail::valid_utf8(id)) throw InvalidArgumentError("vector id is not valid UTF-8");
}

void VectorStorage::check_length(std::size_t len, const char* what) const {
    if (len != impl_->dimension_)
        throw DimensionMismatchError(std::string(what) + " has dimension " + std::to_string(len) +
                                     ", the storage has dimension " + std::to_string(impl_->dimension_));
}

std::size_t VectorStorage::size() const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    return impl_->id_of_.size();
}

bool VectorStorage::contains(const std::string& id) const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    return impl_->index_->find(impl_->id_of_, id) != detail::IdIndex::npos;
}

std::vector<std::string> VectorStorage::ids() const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    return ids_by_age();
}

std::vector<std::string> VectorStorage::ids_by_age() const {
    if (std::is_sorted(impl_->ordinal_of_.begin(), impl_->ordinal_of_.end())) return impl_->id_of_;  // no row moved
    std::vector<std::string> out;
    out.reserve(impl_->id_of_.size());
    for (std::size_t slot : slots_by_age()) out.push_back(impl_->id_of_[slot]);
    return out;
}

std::vector<std::size_t> VectorStorage::slots_by_age() const {
    // Sorting (ordinal, slot) keys in place is several times faster than sorting slots through
    // a comparator that looks their ordinals up. Slots fit in 32 bits as ordinals do.
    std::vector<std::uint64_t> keys(impl_->ordinal_of_.size());
    for (std::size_t slot = 0; slot < keys.size(); ++slot)
        keys[slot] = (std::uint64_t{impl_->ordinal_of_[slot]} << 32) | slot;
    std::sort(keys.begin(), keys.end());
    std::vector<std::size_t> by_age(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) by_age[i] = static_cast<std::size_t>(keys[i] & 0xffffffffu);
    return by_age;
}

std::size_t VectorStorage::memory_bytes() const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    return impl_->engine_->memory_bytes();
}

std::uint32_t VectorStorage::take_ordinals(std::size_t n) {
    constexpr std::uint64_t kLimit = std::numeric_limits<std::uint32_t>::max();
    if (impl_->next_ordinal_ + n > kLimit) renumber_ordinals();
    if (impl_->next_ordinal_ + n > kLimit) throw InvalidArgumentError("too many vectors for one storage");
    auto first = static_cast<std::uint32_t>(impl_->next_ordinal_);
    impl_->next_ordinal_ += n;
    return first;
}

void VectorStorage::renumber_ordinals() {
    // Keep insertion order, close the gaps left by removals.
    const std::vector<std::size_t> by_age = slots_by_age();
    std::vector<std::uint32_t> fresh(impl_->ordinal_of_.size());
    for (std::size_t rank = 0; rank < by_age.size(); ++rank)
        fresh[by_age[rank]] = static_cast<std::uint32_t>(rank);
    impl_->engine_->set_ordinals(fresh.data(), fresh.size());
    impl_->ordinal_of_ = std::move(fresh);
    impl_->next_ordinal_ = impl_->ordinal_of_.size();
}

void VectorStorage::add_vector(const std::string& id, const float* data, std::size_t len,
                               const Metadata& metadata) {
    add_vector(id, data, Dtype::Float32, len, metadata);
}

void VectorStorage::add_vector(const std::string& id, const void* data, Dtype dtype, std::size_t len,
                               const Metadata& metadata) {
    check_id(id);
    check_length(len, "vector");
    // Checked here, so that the errors say "vector"; the rows part takes the checked row.
    detail::StoreRows row(data, dtype, 1, len, impl_->dtype_, "vector");
    Source src{row.data()};
    src.dtype = impl_->dtype_;
    add_rows(std::vector<std::string>{id}, src, 1, len, std::vector<Metadata>{metadata});
}

void VectorStorage::add_vectors(std::vector<std::string> ids, const void* data, Dtype dtype, std::size_t n,
                                std::size_t dim, std::vector<Metadata> metadata,
                                std::unique_ptr<StagedRows> staged) {
    if (dtype == Dtype::Float32)
        return add_vectors(std::move(ids), static_cast<const float*>(data), n, dim, std::move(metadata),
                           std::move(staged));
    Source src{data};
    src.dtype = dtype;
    add_rows(std::move(ids), src, n, dim, std::move(metadata));
}

void VectorStorage::add_vectors_device(std::vector<std::string> ids, const void* data, Dtype dtype,
                                       std::size_t n, std::size_t dim, std::size_t ld, std::uintptr_t stream,
                                       std::vector<Metadata> metadata) {
    if (n > 0 && ld < dim)
        throw InvalidArgumentError("device rows have a stride of " + std::to_string(ld) +
                                   " elements, less than their dimension " + std::to_string(dim));
    Source src{data, true, ld, stream};
    src.dtype = dtype;
    add_rows(std::move(ids), src, n, dim, std::move(metadata));
}

VectorStorage::Source VectorStorage::Impl::store_rows(const Source& src, std::size_t n, std::size_t dim,
                                                      const char* what, detail::StoreRows& holder) const {
    if (src.dtype == Dtype::Float32 && dtype_ == Dtype::Float32) {
        if (!engine_checks_rows_) check_rows(static_cast<const float*>(src.data), n, dim, what);
        return src;
    }
    holder = detail::StoreRows(src.data, src.dtype, n, dim, dtype_, what);
    Source out = src;
    out.data = holder.data();
    out.dtype = dtype_;
    return out;
}

void VectorStorage::add_vectors(std::vector<std::string> ids, const float* data, std::size_t n,
                                std::size_t dim, std::vector<Metadata> metadata,
                                std::unique_ptr<StagedRows> staged) {
    if (staged && staged->rows() != n)
        throw InvalidArgumentError("staged rows are " + std::to_string(staged->rows()) + " rows, the batch " +
                                   std::to_string(n));
    add_rows(std::move(ids), Source{data}, n, dim, std::move(metadata), std::move(staged));
}

void VectorStorage::add_vectors_device(std::vector<std::string> ids, const float* data,
                                       std::size_t n, std::size_t dim, std::size_t ld,
                                       std::uintptr_t stream, std::vector<Metadata> metadata) {
    add_vectors_device(std::move(ids), data, Dtype::Float32, n, dim, ld, stream, std::move(metadata));
}

// impl_->context_ and impl_->dimension_ never change, so no lock is needed; a store closed meanwhile
// fails in the add. A wrong dimension is add_vectors' error to report.
std::unique_ptr<StagedRows> VectorStorage::stage_rows(const float* data, std::size_t n,
                                                      std::size_t dim) const {
    // Staged rows are float32 on the device; a 16-bit store converts host rows on the host.
    if (n == 0 || dim != impl_->dimension_ || impl_->dtype_ != Dtype::Float32) return nullptr;
    return impl_->context_->stage_rows(data, n, dim);
}

void VectorStorage::unindex(std::size_t first, std::size_t count) noexcept {
    // Erasing costs about what inserting did, id by id: when more ids go than stay, index the
    // ones that stay afresh instead.
    if (count > first) {
        impl_->index_->reindex_prefix(impl_->id_of_, first);
    } else {
        for (std::size_t i = 0; i < count; ++i) impl_->index_->erase_slot(impl_->id_of_, first + i);
    }
}

// A batch add. Under the write lock, every host allocation happens first (the by-slot vectors
// and the index get room for the batch), then two independent parts run:
//   ids:  move the ids into impl_->id_of_ and enter them in the index, which finds an id already
//         stored or repeated in the batch;
//   rows: append empty or given metadata, take ordinals and append the rows to the engine
//         (the upload to the device on GPU backends).
// Large batches run the two on two threads. Then everything is kept, or all of it undone:
// the index entries, the by-slot vectors, the engine rows and the ordinal counter.
void VectorStorage::add_rows(std::vector<std::string>&& ids, const Source& src, std::size_t n,
                             std::size_t dim, std::vector<Metadata>&& metadata,
                             std::unique_ptr<StagedRows> staged) {
    check_batch_sizes(ids.size(), metadata.size(), n);
    if (n == 0) {
        ReadLock lock(impl_->mutex_);
        impl_->check_open();
        return;
    }
    if (dim != impl_->dimension_)
        throw DimensionMismatchError("vectors have dimension " + std::to_string(dim) +
                                     ", the storage has dimension " + std::to_string(impl_->dimension_));
    for (const auto& id : ids) check_id(id);
    for (const auto& md : metadata) detail::check_metadata(md);
    // Device rows, and float32 host rows of engines that check after their upload, are
    // checked by the engine under the lock instead; other host rows are converted to the
    // store's dtype here, before the lock, and checked on the values stored.
    detail::StoreRows converted;
    const Source rows = src.device ? src : impl_->store_rows(src, n, dim, "vectors", converted);
    // Staged rows are device rows to the engine, which checks those.
    if (staged && !impl_->engine_checks_rows_) staged.reset();

    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    append_locked(std::move(ids), rows, n, std::move(metadata), std::move(staged));
}

// How far an add got, for roll_back(). index_ids() and append_rows() may run on two threads
// at once: each writes its own fields only.
struct VectorStorage::AddProgress {
    std::size_t old = 0;                        // rows stored before the add
    std::size_t indexed = 0;                    // ids entered in the index
    std::size_t clash = detail::IdIndex::npos;  // slot already holding id_of_[old + indexed]
    bool appended = false;                      // the engine holds the rows
    bool took = false;                          // ordinals were taken
    std::uint64_t ordinals_before = 0;
};

// Room for n more rows in every host structure, so that what follows allocates nothing
// before the engine's rows (an empty store takes the batch's ids as they are).
void VectorStorage::reserve_rows(std::size_t n) {
    const std::size_t old = impl_->id_of_.size();
    try {
        if (old != 0) make_room(impl_->id_of_, old + n);
        make_room(*impl_->metadata_of_, old + n);
        make_room(impl_->ordinal_of_, old + n);
        impl_->index_->reserve(old + n);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("host memory exhausted while growing the id map");
    }
}

// With the room reserved (an empty store takes the batch's vector whole), moving strings in
// and entering them in the index allocate nothing and cannot throw. The index stops at the
// first id it already holds.
void VectorStorage::index_ids(std::vector<std::string>&& ids, std::size_t n, AddProgress& p) noexcept {
    if (p.old == 0)
        impl_->id_of_ = std::move(ids);
    else
        impl_->id_of_.insert(impl_->id_of_.end(), std::make_move_iterator(ids.begin()),
                             std::make_move_iterator(ids.end()));
    p.indexed = impl_->index_->insert_range(impl_->id_of_, p.old, n, &p.clash);
}

// Ordinals, the engine's rows (the upload, on GPU backends the long part), then metadata.
void VectorStorage::append_rows(const Source& src, std::size_t n, std::vector<Metadata>&& metadata,
                                std::unique_ptr<StagedRows>& staged, AddProgress& p) {
    const std::size_t old = p.old;
    const std::uint32_t first = take_ordinals(n);  // may renumber the stored rows first
    p.ordinals_before = first;
    p.took = true;
    impl_->ordinal_of_.resize(old + n);  // reserved, unless a renumbering replaced the vector
    std::iota(impl_->ordinal_of_.begin() + old, impl_->ordinal_of_.end(), first);
    const std::uint32_t* ordinals = impl_->ordinal_of_.data() + old;
    if (src.device) {
        impl_->engine_->append_device(src.data, src.dtype, src.ld, ordinals, n, src.stream);
    } else if (!(staged && append_staged(*staged, old, ordinals, n))) {
        staged.reset();  // its device memory goes before a host add that may need it to grow
        impl_->engine_->append(src.data, ordinals, n);
    }
    p.appended = true;
    if (metadata.empty()) {
        impl_->metadata_of_->append_empty(n);
    } else {
        for (Metadata& md : metadata) impl_->metadata_of_->push_back(detail::MetadataTable::make(std::move(md)));
    }
}

// The staged copy of the rows into the engine; false leaves the host rows to add from: the
// copy failed (no room for it, say), or the store cannot grow while the staged copy holds
// device memory. The store grows while the copy is still running.
bool VectorStorage::append_staged(StagedRows& staged, std::size_t old, const std::uint32_t* ordinals,
                                  std::size_t n) {
    try {
        impl_->engine_->reserve(old + n);
        staged.wait();
    } catch (const std::exception&) {
        return false;
    }
    try {
        impl_->engine_->append_device(staged.data(), Dtype::Float32, staged.ld(), ordinals, n, 0);
    } catch (const OutOfMemoryError&) {
        return false;
    }
    return true;
}

// Undoes what the add did, then throws: the duplicate id when there is one, else `error`.
void VectorStorage::roll_back(const AddProgress& p, std::exception_ptr error) {
    const std::size_t old = p.old;
    if (p.clash != detail::IdIndex::npos) {
        try {
            throw DuplicateIdError("id '" + impl_->id_of_[old + p.indexed] +
                                   (p.clash >= old ? "' appears twice in the batch" : "' already exists"));
        } catch (...) {
            error = std::current_exception();  // or the bad_alloc of building the message
        }
    }
    if (p.appended) impl_->engine_->truncate(old);
    if (p.took) impl_->next_ordinal_ = p.ordinals_before;
    unindex(old, p.indexed);
    impl_->id_of_.resize(old);
    impl_->metadata_of_->truncate(old);
    impl_->ordinal_of_.resize(old);
    try {
        std::rethrow_exception(error);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("host memory exhausted while adding vectors");
    }
}

// add_rows' work under the write lock, on arguments it has checked. Every host allocation
// happens first; then the ids part (index_ids, which finds an id already stored or repeated
// in the batch) and the rows part (append_rows) run, on two threads for large batches; then
// everything is kept, or all of it undone by roll_back.
void VectorStorage::append_locked(std::vector<std::string>&& ids, const Source& src, std::size_t n,
                                  std::vector<Metadata>&& metadata, std::unique_ptr<StagedRows> staged) {
    AddProgress p;
    p.old = impl_->id_of_.size();
    reserve_rows(n);

    // Both parts finish before anything is kept or undone. When both fail, the duplicate id is
    // reported: that is what running them one after the other (ids first) reports, where the
    // rows are never appended once an id clashes.
    constexpr std::size_t kParallelIds = std::size_t{1} << 16;
    static const bool several_cores = std::thread::hardware_concurrency() > 1;
    std::thread helper;
    if (n >= kParallelIds && several_cores) {
        try {
            helper = std::thread([&]() noexcept { index_ids(std::move(ids), n, p); });
        } catch (...) {
            // No thread (resource limits): both parts run on this one.
        }
    }
    if (!helper.joinable()) {
        index_ids(std::move(ids), n, p);
        if (p.clash != detail::IdIndex::npos) roll_back(p, nullptr);
    }
    std::exception_ptr rows_error;
    try {
        append_rows(src, n, std::move(metadata), staged, p);
    } catch (...) {
        rows_error = std::current_exception();
    }
    if (helper.joinable()) helper.join();
    if (p.clash != detail::IdIndex::npos || rows_error) roll_back(p, rows_error);
}

bool VectorStorage::update_vector(const std::string& id, const float* data, std::size_t len,
                                  const Metadata* metadata) {
    return update_vector(id, data, Dtype::Float32, len, metadata);
}

bool VectorStorage::update_vector(const std::string& id, const void* row, Dtype dtype, std::size_t len,
                                  const Metadata* metadata) {
    check_length(len, "vector");
    // A write is not an append: engines that check appended rows do not check it.
    detail::StoreRows converted(row, dtype, 1, len, impl_->dtype_, "vector");
    const void* data = converted.data();
    if (metadata) detail::check_metadata(*metadata);
    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    const std::size_t slot = impl_->index_->find(impl_->id_of_, id);
    if (slot == detail::IdIndex::npos) return false;
    if (!metadata) {
        impl_->engine_->write(slot, data);
        return true;
    }
    // The metadata (re-indexed, all or nothing) first; a failed engine write puts it back.
    std::unique_ptr<Metadata> old;
    if (!(*impl_->metadata_of_)[slot].empty()) old = std::make_unique<Metadata>((*impl_->metadata_of_)[slot]);
    try {
        impl_->metadata_of_->set(slot, detail::MetadataTable::make(Metadata(*metadata)));
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("host memory exhausted while indexing metadata");
    }
    try {
        impl_->engine_->write(slot, data);
    } catch (...) {
        impl_->metadata_of_->set(slot, std::move(old));
        throw;
    }
    return true;
}

// All checks and allocations come before the first change. Then the stored ids' rows are
// written and the new ids added last: the add undoes itself when it fails, and the writes are
// undone by writing back the rows they replaced.
void VectorStorage::upsert_vectors(std::vector<std::string> ids, const float* data, std::size_t n,
                                   std::size_t dim, std::vector<std::optional<Metadata>> metadata) {
    upsert_vectors(std::move(ids), data, Dtype::Float32, n, dim, std::move(metadata));
}

void VectorStorage::upsert_vectors(std::vector<std::string> ids, const void* rows, Dtype dtype, std::size_t n,
                                   std::size_t dim, std::vector<std::optional<Metadata>> metadata) {
    check_batch_sizes(ids.size(), metadata.size(), n);
    if (n != 0 && dim != impl_->dimension_)
        throw DimensionMismatchError("vectors have dimension " + std::to_string(dim) +
                                     ", the storage has dimension " + std::to_string(impl_->dimension_));
    for (const auto& id : ids) check_id(id);
    for (const auto& md : metadata)
        if (md) detail::check_metadata(*md);
    // The rows in the store's dtype from here on: `row_bytes` apart.
    const detail::StoreRows converted(rows, dtype, n, dim, impl_->dtype_, "vectors");
    const auto* data = static_cast<const unsigned char*>(converted.data());
    const std::size_t row_bytes = dim * dtype_size(impl_->dtype_);

    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    std::vector<std::size_t> stored;  // batch positions of ids already stored
    std::vector<std::size_t> slots;   // their slots
    std::vector<std::size_t> fresh;   // batch positions of new ids
    std::vector<std::string> fresh_ids;
    std::vector<Metadata> fresh_md;
    std::vector<unsigned char> fresh_rows;
    std::vector<std::unique_ptr<Metadata>> stored_md;
    std::vector<float> replaced;  // the stored rows as they were, for the undo
    std::vector<unsigned char> replaced_rows;  // the same in the store's dtype
    try {
        for (std::size_t i = 0; i < n; ++i) {
            const std::size_t slot = impl_->index_->find(impl_->id_of_, ids[i]);
            (slot == detail::IdIndex::npos ? fresh : stored).push_back(i);
            if (slot != detail::IdIndex::npos) slots.push_back(slot);
        }
        std::vector<std::size_t> sorted(slots);
        std::sort(sorted.begin(), sorted.end());
        auto twice = std::adjacent_find(sorted.begin(), sorted.end());
        if (twice != sorted.end())
            throw DuplicateIdError("id '" + impl_->id_of_[*twice] + "' appears twice in the batch");
        const bool md_given = !metadata.empty();
        // A batch of new ids only goes to the add as it is.
        const bool as_given = stored.empty();
        if (!as_given) {
            fresh_rows.reserve(fresh.size() * row_bytes);
            fresh_ids.reserve(fresh.size());
            for (std::size_t i : fresh) {
                fresh_rows.insert(fresh_rows.end(), data + i * row_bytes, data + (i + 1) * row_bytes);
                fresh_ids.push_back(std::move(ids[i]));
            }
        }
        if (md_given) {
            fresh_md.reserve(fresh.size());
            for (std::size_t i : fresh) fresh_md.push_back(metadata[i] ? std::move(*metadata[i]) : Metadata{});
            stored_md.resize(stored.size());
            for (std::size_t j = 0; j < stored.size(); ++j)
                if (metadata[stored[j]]) stored_md[j] = detail::MetadataTable::make(std::move(*metadata[stored[j]]));
        }
        replaced.resize(stored.size() * dim);
        for (std::size_t j = 0; j < stored.size(); ++j) impl_->engine_->read(slots[j], 1, replaced.data() + j * dim);
        replaced_rows.resize(stored.size() * row_bytes);
        detail::narrow_stored(replaced.data(), replaced.size(), impl_->dtype_, replaced_rows.data());
        if (as_given) fresh_ids = std::move(ids);
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("host memory exhausted while upserting vectors");
    }

    // The stored ids' metadata first (re-indexed, each set all or nothing), keeping what it
    // replaces; then the rows; then the new ids. A failure undoes what was done, in reverse.
    std::vector<std::unique_ptr<Metadata>> replaced_md(stored_md.size());
    std::size_t relabelled = 0, written = 0;
    auto undo_metadata = [&]() noexcept {
        try {
            for (std::size_t j = 0; j < relabelled; ++j)
                if (metadata[stored[j]]) impl_->metadata_of_->set(slots[j], std::move(replaced_md[j]));
        } catch (...) {
            // Restoring a row's entries failed for want of memory; the first error is reported.
        }
    };
    try {
        for (; relabelled < stored_md.size(); ++relabelled) {
            if (!metadata[stored[relabelled]]) continue;
            const Metadata& was = (*impl_->metadata_of_)[slots[relabelled]];
            if (!was.empty()) replaced_md[relabelled] = std::make_unique<Metadata>(was);
            impl_->metadata_of_->set(slots[relabelled], std::move(stored_md[relabelled]));
        }
    } catch (const std::bad_alloc&) {
        undo_metadata();
        throw OutOfMemoryError("host memory exhausted while indexing metadata");
    }
    try {
        for (; written < stored.size(); ++written) impl_->engine_->write(slots[written], data + stored[written] * row_bytes);
        if (!fresh.empty()) {
            Source src{fresh_rows.empty() ? data : fresh_rows.data()};
            src.dtype = impl_->dtype_;
            append_locked(std::move(fresh_ids), src, fresh.size(), std::move(fresh_md));
        }
    } catch (...) {
        try {
            for (std::size_t j = 0; j < written; ++j) impl_->engine_->write(slots[j], replaced_rows.data() + j * row_bytes);
        } catch (...) {
            // The device failed twice; the first error is the one to report.
        }
        undo_metadata();
        throw;
    }
}

void VectorStorage::get_vectors(const std::vector<std::string>& ids, float* out,
                                std::vector<Metadata>* metadata) const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    std::vector<std::size_t> slots(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
        slots[i] = impl_->index_->find(impl_->id_of_, ids[i]);
        if (slots[i] == detail::IdIndex::npos) throw VectorNotFoundError("no vector has id '" + ids[i] + "'");
    }
    if (metadata) {
        metadata->clear();
        metadata->reserve(ids.size());
        for (std::size_t slot : slots) metadata->push_back((*impl_->metadata_of_)[slot]);
    }
    for (std::size_t i = 0; i < slots.size(); ++i) impl_->engine_->read(slots[i], 1, out + i * impl_->dimension_);
}

void VectorStorage::remove_slot(std::size_t slot) {
    const std::size_t last = impl_->id_of_.size() - 1;
    if (slot != last) {
        impl_->engine_->move(last, slot);
        impl_->index_->relocate(impl_->id_of_, last, slot);
        impl_->id_of_[slot] = std::move(impl_->id_of_[last]);
        impl_->metadata_of_->move(last, slot);
        impl_->ordinal_of_[slot] = impl_->ordinal_of_[last];
    }
    impl_->engine_->truncate(last);
    impl_->id_of_.pop_back();
    impl_->metadata_of_->truncate(last);
    impl_->ordinal_of_.pop_back();
}

bool VectorStorage::remove_vector(const std::string& id) {
    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    const std::size_t slot = impl_->index_->erase(impl_->id_of_, id);
    if (slot == detail::IdIndex::npos) return false;
    remove_slot(slot);
    return true;
}

std::size_t VectorStorage::remove_vectors(const std::vector<std::string>& ids) {
    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    std::size_t removed = 0;
    for (const auto& id : ids) {
        const std::size_t slot = impl_->index_->erase(impl_->id_of_, id);
        if (slot == detail::IdIndex::npos) continue;
        remove_slot(slot);
        ++removed;
    }
    return removed;
}

void VectorStorage::clear() {
    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    impl_->engine_->truncate(0);
    impl_->index_->release();
    impl_->id_of_.clear();
    impl_->metadata_of_->clear();
    impl_->ordinal_of_.clear();
    impl_->next_ordinal_ = 0;
}

std::optional<Vector> VectorStorage::get_vector(const std::string& id) const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    const std::size_t slot = impl_->index_->find(impl_->id_of_, id);
    if (slot == detail::IdIndex::npos) return std::nullopt;
    Vector v{id, std::vector<float>(impl_->dimension_), (*impl_->metadata_of_)[slot]};
    impl_->engine_->read(slot, 1, v.data.data());
    return v;
}

std::optional<Metadata> VectorStorage::get_metadata(const std::string& id) const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    const std::size_t slot = impl_->index_->find(impl_->id_of_, id);
    if (slot == detail::IdIndex::npos) return std::nullopt;
    return (*impl_->metadata_of_)[slot];
}

std::size_t VectorStorage::clamp_k(std::int64_t k) const {
    if (k <= 0) throw InvalidArgumentError("k must be >= 1, got " + std::to_string(k));
    return std::min<std::size_t>(static_cast<std::size_t>(k), impl_->id_of_.size());
}

float VectorStorage::finish_score(float engine_score) const {
    if (impl_->metric_ == Metric::Euclidean) return std::sqrt(std::max(engine_score, 0.0f));
    return engine_score;
}

std::vector<SearchHit> VectorStorage::search(const float* query, std::size_t len,
                                             std::int64_t k) const {
    return hits_of(checked_search(Source{query}, 1, len, k, nullptr));
}

std::vector<SearchHit> VectorStorage::search_device(const float* query, std::size_t len,
                                                    std::int64_t k, std::uintptr_t stream) const {
    return search_device(query, Dtype::Float32, len, k, stream);
}

std::vector<SearchHit> VectorStorage::search_device(const void* query, Dtype dtype, std::size_t len,
                                                    std::int64_t k, std::uintptr_t stream) const {
    Source src{query, true, len, stream};
    src.dtype = dtype;
    return hits_of(checked_search(src, 1, len, k, nullptr));
}

std::vector<SearchHit> VectorStorage::hits_of(BatchResult&& r) const {
    std::vector<SearchHit> hits;
    hits.reserve(r.k);
    for (std::size_t j = 0; j < r.k; ++j)
        hits.push_back(SearchHit{std::move(r.ids[j]), r.scores[j],
                                 (*impl_->metadata_of_)[static_cast<std::size_t>(r.slots[j])]});
    return hits;
}

BatchResult VectorStorage::search_batch(const float* queries, std::size_t nq, std::size_t dim,
                                        std::int64_t k) const {
    Source src{queries};
    src.batch = true;
    return checked_search(src, nq, dim, k, nullptr);
}

BatchResult VectorStorage::search_batch_device(const float* queries, std::size_t nq,
                                               std::size_t dim, std::size_t ld, std::int64_t k,
                                               std::uintptr_t stream, float* device_scores) const {
    return search_batch_device(queries, Dtype::Float32, nq, dim, ld, k, stream, device_scores);
}

BatchResult VectorStorage::search_batch_device(const void* queries, Dtype dtype, std::size_t nq, std::size_t dim,
                                               std::size_t ld, std::int64_t k, std::uintptr_t stream,
                                               float* device_scores) const {
    Source src{queries, true, ld, stream, device_scores, true};
    src.dtype = dtype;
    return checked_search(src, nq, dim, k, nullptr);
}

// Every search entry point comes here: the queries are checked once, before the lock, and
// the search runs under the reader lock. Source::batch picks the wording of the errors.
BatchResult VectorStorage::checked_search(const Source& queries, std::size_t nq, std::size_t dim,
                                          std::int64_t k, const Filter* filter) const {
    if (k <= 0) throw InvalidArgumentError("k must be >= 1, got " + std::to_string(k));
    const char* what = queries.batch ? "queries" : "query";
    if (dim != impl_->dimension_)
        throw DimensionMismatchError(std::string(what) + (queries.batch ? " have" : " has") + " dimension " +
                                     std::to_string(dim) + ", the storage has dimension " +
                                     std::to_string(impl_->dimension_));
    if (queries.device && nq > 0 && queries.ld < dim)
        throw InvalidArgumentError("device queries have a stride of " + std::to_string(queries.ld) +
                                   " elements, less than their dimension " + std::to_string(dim));
    // Host queries are float32 (callers widen 16-bit ones, exactly).
    if (!queries.device) check_rows(static_cast<const float*>(queries.data), nq, dim, what);
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    if (filter) return search_filtered_locked(static_cast<const float*>(queries.data), nq, k, *filter);
    return search_locked(queries, nq, k);
}

BatchResult VectorStorage::search_locked(const Source& queries, std::size_t nq,
                                         std::int64_t k) const {
    BatchResult r;
    r.nq = nq;
    r.k = clamp_k(k);
    if (nq == 0 || r.k == 0) return r;
    r.scores.resize(nq * r.k);
    r.slots.resize(nq * r.k);
    if (queries.device)
        impl_->engine_->search_device(queries.data, queries.dtype, queries.ld, nq, r.k, queries.stream, r.scores.data(),
                               r.slots.data(), queries.device_scores);
    else
        impl_->engine_->search(static_cast<const float*>(queries.data), nq, r.k, r.scores.data(), r.slots.data());
    name_hits(r);
    return r;
}

void VectorStorage::name_hits(BatchResult& r) const {
    r.ids.reserve(r.nq * r.k);
    for (std::size_t i = 0; i < r.nq * r.k; ++i) {
        r.scores[i] = finish_score(r.scores[i]);
        r.ids.push_back(impl_->id_of_[static_cast<std::size_t>(r.slots[i])]);
    }
}

// ---- Filtered calls ------------------------------------------------------------------------

detail::SlotBits VectorStorage::Impl::select(const Filter& filter) const {
    return metadata_of_->evaluate(filter, [this](const std::string& id) { return index_->find(id_of_, id); });
}

detail::Selection VectorStorage::Impl::view(const Filter& filter, bool bits) const {
    return metadata_of_->select(filter, [this](const std::string& id) { return index_->find(id_of_, id); }, bits);
}

bool VectorStorage::update_metadata(const std::string& id, const Metadata& metadata) {
    detail::check_metadata(metadata);
    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    const std::size_t slot = impl_->index_->find(impl_->id_of_, id);
    if (slot == detail::IdIndex::npos) return false;
    try {
        impl_->metadata_of_->set(slot, detail::MetadataTable::make(Metadata(metadata)));
    } catch (const std::bad_alloc&) {
        throw OutOfMemoryError("host memory exhausted while indexing metadata");
    }
    return true;
}

std::size_t VectorStorage::count(const Filter& filter) const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    if (filter.matches_all()) return impl_->id_of_.size();
    return impl_->view(filter, false).count;
}

std::vector<std::string> VectorStorage::ids(const Filter& filter) const {
    ReadLock lock(impl_->mutex_);
    impl_->check_open();
    if (filter.matches_all()) return ids_by_age();
    const detail::SlotBits sel = impl_->select(filter);
    // Insertion order, as ids() gives: the passing slots sorted by ordinal.
    std::vector<std::uint64_t> keys;
    keys.reserve(sel.count);
    for (std::size_t w = 0; w < sel.words.size(); ++w)
        for (std::uint64_t b = sel.words[w]; b; b &= b - 1) {
            const std::size_t slot = w * 64 + static_cast<std::size_t>(__builtin_ctzll(b));
            keys.push_back((std::uint64_t{impl_->ordinal_of_[slot]} << 32) | slot);
        }
    std::sort(keys.begin(), keys.end());
    std::vector<std::string> out;
    out.reserve(keys.size());
    for (std::uint64_t key : keys) out.push_back(impl_->id_of_[static_cast<std::size_t>(key & 0xffffffffu)]);
    return out;
}

std::size_t VectorStorage::remove_vectors(const Filter& filter) {
    WriteLock lock(impl_->mutex_);
    impl_->check_open();
    const detail::SlotBits sel = impl_->select(filter);
    // From the last slot down: every slot above the one removed is then a row that stays,
    // so the swap-remove never moves a row that is still to be removed.
    for (std::size_t w = sel.words.size(); w-- > 0;) {
        for (std::uint64_t b = sel.words[w]; b;) {
            const int top = 63 - __builtin_clzll(b);
            b &= ~(std::uint64_t{1} << top);
            const std::size_t slot = w * 64 + static_cast<std::size_t>(top);
            impl_->index_->erase_slot(impl_->id_of_, slot);
            remove_slot(slot);
        }
    }
    return sel.count;
}

std::vector<SearchHit> VectorStorage::search(const float* query, std::size_t len, std::int64_t k,
                                             const Filter& filter) const {
    return hits_of(checked_search(Source{query}, 1, len, k, &filter));
}

BatchResult VectorStorage::search_batch(const float* queries, std::size_t nq, std::size_t dim,
                                        std::int64_t k, const Filter& filter) const {
    Source src{queries};
    src.batch = true;
    return checked_search(src, nq, dim, k, &filter);
}

// The filter is evaluated under the reader lock, so the slots it names are the ones the
// engine holds while it searches.
BatchResult VectorStorage::search_filtered_locked(const float* queries, std::size_t nq, std::int64_t k,
                                                  const Filter& filter) const {
    if (filter.matches_all()) return search_locked(Source{queries}, nq, k);
    const detail::Selection sel = impl_->view(filter, true);
    if (sel.count == impl_->id_of_.size()) return search_locked(Source{queries}, nq, k);
    BatchResult r;
    r.nq = nq;
    r.k = std::min<std::size_t>(static_cast<std::size_t>(k), sel.count);
    if (nq == 0 || r.k == 0) return r;
    r.scores.resize(nq * r.k);
    r.slots.resize(nq * r.k);
    const SlotFilter slots{sel.bits, sel.count, sel.slots};
    impl_->engine_->search_filtered(queries, nq, r.k, slots, r.scores.data(), r.slots.data());
    name_hits(r);
    return r;
}

void VectorStorage::close() {
    WriteLock lock(impl_->mutex_);
    if (impl_->closed_) return;
    impl_->closed_ = true;
    impl_->engine_.reset();
    impl_->index_->release();
    impl_->id_of_.clear();
    impl_->metadata_of_->clear();
    impl_->ordinal_of_.clear();
}

bool VectorStorage::closed() const {
    ReadLock lock(impl_->mutex_);
    return impl_->closed_;
}

}  // namespace hive_gpu
