// VectorStorage: the one vector store. String ids, metadata, validation, locking and
// swap-remove are written here once; the floats live in a backend Engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hive_gpu/context.hpp"
#include "hive_gpu/filter.hpp"
#include "hive_gpu/limits.hpp"
#include "hive_gpu/types.hpp"

namespace hive_gpu {


// What a saved store's header says; VectorStorage::inspect_file() returns it after checking
// every byte of the file.
struct StoreFileInfo {
    std::uint32_t format_version = 0;
    Metric metric = Metric::Cosine;
    std::uint64_t dimension = 0;
    std::uint64_t count = 0;
    std::uint64_t next_ordinal = 0;
    std::uint64_t file_bytes = 0;
    std::string dtype = "float32";  // element type of the stored rows
};

// Made by Context::create_storage() or VectorStorage::load(). Rows are `dimension()` floats,
// row major, in host memory unless a *_device call says otherwise.
//
// Thread safety: any number of concurrent readers (search, get, contains, size), writers
// exclusive. Every mutating call is all-or-nothing: when it throws, the store is unchanged.
// Validation: a row of the wrong length throws DimensionMismatchError, NaN or infinity
// NonFiniteValueError, an empty id or one over kMaxIdBytes InvalidArgumentError. Every call
// on a closed store throws StorageClosedError.
class VectorStorage {
   public:
    VectorStorage(std::shared_ptr<Context> context, std::unique_ptr<Engine> engine);
    ~VectorStorage();
    VectorStorage(const VectorStorage&) = delete;
    VectorStorage& operator=(const VectorStorage&) = delete;

    std::size_t dimension() const;
    Metric metric() const;
    Dtype dtype() const;  // how the rows are stored; reads and scores are float32
    const std::shared_ptr<Context>& context() const;
    std::size_t size() const;
    bool contains(const std::string& id) const;
    std::vector<std::string> ids() const;  // insertion order (an update keeps an id's place)
    // Bytes the engine holds for rows and per-row data (device memory on GPU backends).
    std::size_t memory_bytes() const;

    // `len` must equal dimension(). Throws DuplicateIdError if `id` exists.
    void add_vector(const std::string& id, const float* data, std::size_t len,
                    const Metadata& metadata = {});
    // n rows of `dim` floats, row major; metadata empty or one per row. All or nothing: one
    // bad row, or an id repeated in `ids` or already stored, rejects the whole batch.
    // `ids` and `metadata` are taken by value: pass them with std::move to spare a copy.
    // `staged`, from stage_rows(data, n, dim), is the same rows on their way to the device:
    // the add waits for them and uses them instead of `data`, and adds from `data` when the
    // copy failed or the store needs its memory to grow.
    void add_vectors(std::vector<std::string> ids, const float* data, std::size_t n,
                     std::size_t dim, std::vector<Metadata> metadata = {},
                     std::unique_ptr<StagedRows> staged = nullptr);
    // The first half of a bulk add from host memory, so that the caller can do other work
    // while the rows travel (the Python binding converts the ids meanwhile): starts copying
    // the rows to the device, without taking the storage's lock, for add_vectors(..., staged).
    // Null when the backend does not stage or the batch is small.
    std::unique_ptr<StagedRows> stage_rows(const float* data, std::size_t n, std::size_t dim) const;
    // Replaces the row of `id` (its insertion order, hence its rank among ties, stays).
    // false when `id` is unknown. metadata == nullptr keeps the current metadata.
    bool update_vector(const std::string& id, const float* data, std::size_t len,
                       const Metadata* metadata = nullptr);
    // Adds the ids not stored and replaces the rows of those stored, all or nothing (an id
    // given twice is a DuplicateIdError). metadata: empty, or one per row, where nullopt keeps
    // a stored id's metadata and gives a new one none. Stored ids keep their insertion order.
    void upsert_vectors(std::vector<std::string> ids, const float* data, std::size_t n,
                        std::size_t dim, std::vector<std::optional<Metadata>> metadata = {});
    // false when `id` is unknown. O(1): the last row moves into the freed slot.
    bool remove_vector(const std::string& id);
    // Number of ids removed; unknown ids are skipped.
    std::size_t remove_vectors(const std::vector<std::string>& ids);
    void clear();

    // Replaces the metadata of `id` (an empty map removes it all); false when `id` is unknown.
    bool update_metadata(const std::string& id, const Metadata& metadata);
    // The filtered forms (see Filter for the language): only vectors the filter passes are
    // counted, listed (slot order), removed or returned. A search returns min(k, matches)
    // hits; a batch with no match returns nq rows of 0 columns.
    std::size_t count(const Filter& filter) const;
    std::vector<std::string> ids(const Filter& filter) const;
    std::size_t remove_vectors(const Filter& filter);
    std::vector<SearchHit> search(const float* query, std::size_t len, std::int64_t k,
                                  const Filter& filter) const;
    BatchResult search_batch(const float* queries, std::size_t nq, std::size_t dim, std::int64_t k,
                             const Filter& filter) const;

    // Copies: the row as stored (bit for bit as given for float32 stores; the rounded values,
    // widened exactly to float32, for 16-bit ones), and its metadata. nullopt for an unknown id.
    std::optional<Vector> get_vector(const std::string& id) const;
    std::optional<Metadata> get_metadata(const std::string& id) const;
    // The rows of `ids`, in order, into `out` (ids.size() * dimension() floats) and, when
    // `metadata` is set, their metadata; one consistent read. Throws VectorNotFoundError
    // naming the first unknown id.
    void get_vectors(const std::vector<std::string>& ids, float* out,
                     std::vector<Metadata>* metadata = nullptr) const;

    // k >= 1 (InvalidArgumentError otherwise); returns min(k, size()) hits, best first (an
    // empty store returns none). SearchHit::score follows Metric; equal scores rank the
    // vector added first first. The query is validated like a row.
    std::vector<SearchHit> search(const float* query, std::size_t len, std::int64_t k) const;
    // nq queries of `dim` floats, row major; the result holds nq rows of min(k, size()) hits.
    BatchResult search_batch(const float* queries, std::size_t nq, std::size_t dim,
                             std::int64_t k) const;

    // Device arrays (backends with device memory): `data`/`queries` are device pointers on
    // this storage's device with a row stride of `ld` floats; `stream` as in
    // Engine::append_device. Same rules, errors and atomicity as the host calls.
    void add_vectors_device(std::vector<std::string> ids, const float* data, std::size_t n,
                            std::size_t dim, std::size_t ld, std::uintptr_t stream,
                            std::vector<Metadata> metadata = {});
    std::vector<SearchHit> search_device(const float* query, std::size_t len, std::int64_t k,
                                         std::uintptr_t stream) const;
    // device_scores (nq * k' floats on the device, k' = min(k, size())) also receives the
    // scores when set.
    BatchResult search_batch_device(const float* queries, std::size_t nq, std::size_t dim,
                                    std::size_t ld, std::int64_t k, std::uintptr_t stream,
                                    float* device_scores = nullptr) const;

    // Rows of any storage dtype (float32, float16, bfloat16), `data` pointing at elements of
    // `dtype`: the forms above take float32. Rows are rounded once to dtype() (nearest even)
    // and checked on the values stored: besides NaN/inf and the norm bound, a value beyond
    // the store dtype's range (|x| > 65504 for float16) is a NonFiniteValueError naming its
    // row. Input already in dtype() is read without conversion.
    void add_vector(const std::string& id, const void* data, Dtype dtype, std::size_t len,
                    const Metadata& metadata = {});
    void add_vectors(std::vector<std::string> ids, const void* data, Dtype dtype, std::size_t n,
                     std::size_t dim, std::vector<Metadata> metadata = {},
                     std::unique_ptr<StagedRows> staged = nullptr);
    bool update_vector(const std::string& id, const void* data, Dtype dtype, std::size_t len,
                       const Metadata* metadata = nullptr);
    void upsert_vectors(std::vector<std::string> ids, const void* data, Dtype dtype, std::size_t n,
                        std::size_t dim, std::vector<std::optional<Metadata>> metadata = {});
    // Device rows and queries of `dtype`, `ld` elements apart; the engine converts them on
    // its device (queries to float32, rows to dtype()).
    void add_vectors_device(std::vector<std::string> ids, const void* data, Dtype dtype, std::size_t n,
                            std::size_t dim, std::size_t ld, std::uintptr_t stream,
                            std::vector<Metadata> metadata = {});
    std::vector<SearchHit> search_device(const void* query, Dtype dtype, std::size_t len, std::int64_t k,
                                         std::uintptr_t stream) const;
    BatchResult search_batch_device(const void* queries, Dtype dtype, std::size_t nq, std::size_t dim,
                                    std::size_t ld, std::int64_t k, std::uintptr_t stream,
                                    float* device_scores = nullptr) const;

    // Persistence (see docs/format.md). save() is atomic: temp file, fsync, rename. load()
    // puts the rows on `context`'s device, whichever backend saved them. Failures throw
    // IoError (file system) or CorruptFileError (not a hive_gpu file, truncated, damaged).
    void save(const std::string& path) const;
    static std::shared_ptr<VectorStorage> load(const std::shared_ptr<Context>& context,
                                               const std::string& path);
    // The bytes save() writes, in memory, and their inverse (the same checks as load()).
    std::string to_bytes() const;
    static std::shared_ptr<VectorStorage> from_bytes(const std::shared_ptr<Context>& context,
                                                     const void* data, std::size_t size);
    // Reads and checks a whole file as load() does (every checksum, every row) without
    // putting its rows on any device; returns its header.
    static StoreFileInfo inspect_file(const std::string& path);

    // Frees the rows; every later call throws StorageClosedError.
    void close();
    bool closed() const;

   private:
    // The state, its lock, the id and metadata indexes and the file format (core/storage_impl.hpp).
    struct Impl;
    std::unique_ptr<Impl> impl_;

    void check_length(std::size_t len, const char* what) const;  // DimensionMismatchError
    static void check_id(const std::string& id);
    std::uint32_t take_ordinals(std::size_t n);  // renumbers when the counter would wrap
    void renumber_ordinals();
    void remove_slot(std::size_t slot);
    std::size_t clamp_k(std::int64_t k) const;
    // Where rows or queries come from: host memory, or a device pointer (see *_device).
    struct Source {
        const void* data;
        bool device = false;
        std::size_t ld = 0;
        std::uintptr_t stream = 0;
        float* device_scores = nullptr;
        bool batch = false;  // queries: nq rows rather than one query (the errors' wording)
        Dtype dtype = Dtype::Float32;  // of the elements at `data`
    };
    BatchResult checked_search(const Source& queries, std::size_t nq, std::size_t dim, std::int64_t k,
                               const Filter* filter) const;
    void add_rows(std::vector<std::string>&& ids, const Source& src, std::size_t n,
                  std::size_t dim, std::vector<Metadata>&& metadata,
                  std::unique_ptr<StagedRows> staged = nullptr);
    void append_locked(std::vector<std::string>&& ids, const Source& src, std::size_t n,
                       std::vector<Metadata>&& metadata, std::unique_ptr<StagedRows> staged = nullptr);
    // append_locked's steps (storage.cpp): room, ids, rows, and the undo of a failed add.
    struct AddProgress;
    void reserve_rows(std::size_t n);
    void index_ids(std::vector<std::string>&& ids, std::size_t n, AddProgress& progress) noexcept;
    void append_rows(const Source& src, std::size_t n, std::vector<Metadata>&& metadata,
                     std::unique_ptr<StagedRows>& staged, AddProgress& progress);
    bool append_staged(StagedRows& staged, std::size_t old, const std::uint32_t* ordinals, std::size_t n);
    [[noreturn]] void roll_back(const AddProgress& progress, std::exception_ptr error);
    std::vector<std::size_t> slots_by_age() const;  // slots by ordinal: insertion order
    std::vector<std::string> ids_by_age() const;    // ids in insertion order; lock held
    // Takes slots [first, first + count) out of index_ (their ids still in id_of_).
    void unindex(std::size_t first, std::size_t count) noexcept;
    BatchResult search_locked(const Source& queries, std::size_t nq, std::int64_t k) const;
    BatchResult search_filtered_locked(const float* queries, std::size_t nq, std::int64_t k,
                                       const Filter& filter) const;
    std::vector<SearchHit> hits_of(BatchResult&& r) const;
    // Final scores and ids for the slots the engine returned.
    void name_hits(BatchResult& r) const;
    float finish_score(float engine_score) const;
};

}  // namespace hive_gpu
