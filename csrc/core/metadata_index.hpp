// The metadata column of a store and its indexes, one class: every mutation (append, set,
// move, truncate, clear) keeps the indexes current, so any storage method built on it
// stays correct. Filters evaluate against the indexes into a bitset over slots, at a cost
// proportional to the matching rows (and ceil(n / 64) words), never a scan of the metadata;
// a filter that one posting answers costs O(1) once its sorted slots are cached.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/filter.hpp"
#include "hive_gpu/types.hpp"

namespace hive_gpu::detail {

// The slots holding one indexed value. A short posting is an unsorted list (erase and
// relabel scan it); once its bitmap would be at most kBitmapFactor times the list's memory
// it becomes a bitmap, so dense postings serve as a filter's bitset as they are. A bitmap
// that grows spans the table's capacity (given at insert), so one still receiving rows
// covers the whole table. Erase and relabel never allocate.
class Posting {
   public:
    static constexpr std::size_t kBitmapFactor = 8;  // bitmap bytes <= 8 x list bytes
    static constexpr std::size_t kMinBitmap = 16;

    Posting() = default;
    Posting(Posting&& o) noexcept;
    Posting& operator=(Posting&&) = delete;

    std::size_t count() const { return count_; }
    bool empty() const { return count_ == 0; }
    // `rows`: the table's row count, which sizes the choice of form; `cover_words`: the
    // words a bitmap spans (at least ceil(rows / 64)). May throw bad_alloc, leaving the
    // posting as it was.
    void insert(std::uint32_t slot, std::size_t rows, std::size_t cover_words);
    void erase(std::uint32_t slot, std::size_t rows) noexcept;
    // Slot `from` becomes `to` (to < from, to not in the posting).
    void relabel(std::uint32_t from, std::uint32_t to) noexcept;
    // The slots, unsorted, while the posting is a list (null once it is a bitmap).
    const std::vector<std::uint32_t>* list() const { return bitmap_ ? nullptr : &list_; }
    // The bitmap's words while the posting is a bitmap (null while a list); they may cover
    // fewer or more words than the table, never a slot past it.
    const std::vector<std::uint64_t>* bitmap() const { return bitmap_ ? &words_ : nullptr; }
    // Sets the posting's bits in `words` (nwords words, covering every slot of the table).
    void or_into(std::uint64_t* words, std::size_t nwords) const;
    // The slots in ascending order, built on the first call after a change and kept until
    // the next one. Callers hold the storage's lock (shared); `build` serialises readers
    // that find the cache stale.
    const std::vector<std::uint32_t>& sorted(std::mutex& build) const;

   private:
    void changed() noexcept { sorted_ok_.store(false, std::memory_order_relaxed); }

    bool bitmap_ = false;
    std::size_t count_ = 0;
    std::vector<std::uint32_t> list_;   // !bitmap_
    std::vector<std::uint64_t> words_;  // bitmap_: covers every slot set
    mutable std::vector<std::uint32_t> sorted_;
    mutable std::atomic<bool> sorted_ok_{false};
};

// Everything indexed under one metadata key.
struct KeyIndex {
    Posting all;  // rows holding the key
    std::map<bool, Posting> bools;
    std::map<NumKey, Posting> nums;  // ordered: ranges walk it
    std::map<std::string, Posting, std::less<>> strs;
    std::map<std::string, Posting, std::less<>> tags;  // tag -> rows whose list holds it
    Posting lists;                                     // rows holding a list of str
    bool unused() const { return all.empty(); }
};

// A filter's answer, owned: bit s of words[s / 64] is set when slot s passes; bits past the
// table size are zero. `slots` (ascending) is filled when count <= rows / SlotFilter::kSparseListRatio.
struct SlotBits {
    std::vector<std::uint64_t> words;
    std::size_t count = 0;
    std::vector<std::uint32_t> slots;
};

class MetadataTable;

// A filter's answer as an engine takes it (SlotFilter's fields), pointing into the indexes
// or into buffers leased from the table: valid while the table is unchanged (the storage
// holds its lock) and until destroyed, which hands the buffers back.
class Selection {
   public:
    Selection() = default;
    Selection(Selection&& o) noexcept;
    Selection& operator=(Selection&&) = delete;
    ~Selection();

    const std::uint64_t* bits = nullptr;  // ceil(rows / 64) words; null for a count only
    std::size_t count = 0;
    const std::uint32_t* slots = nullptr;  // ascending; set when count <= rows / kSparseListRatio

    struct Pool;  // metadata_index.cpp

   private:
    friend class MetadataTable;
    Pool* pool_ = nullptr;
    std::vector<std::uint64_t> words_;     // leased bits, when `bits` points here
    const std::uint32_t* clear_ = nullptr;  // words_ back to zero: clear these slots' bits
    std::size_t clear_n_ = 0;
    bool words_zero_ = false;               // words_ are all zero once clear_ is cleared
    std::vector<std::uint32_t> slot_buf_;   // leased slot list, when `slots` points here
};

class MetadataTable {
   public:
    MetadataTable();
    ~MetadataTable();
    MetadataTable(MetadataTable&&) noexcept;
    MetadataTable& operator=(MetadataTable&&) noexcept;

    std::size_t size() const { return n_; }
    std::size_t capacity() const { return cap_; }
    // Room for n rows: bitmaps span it, and a table holding metadata grows its column.
    void reserve(std::size_t n);
    const Metadata& operator[](std::size_t slot) const {
        return slot < rows_.size() && rows_[slot] ? *rows_[slot] : empty();
    }

    // The stored form of one row's metadata: null when empty. May throw bad_alloc.
    static std::unique_ptr<Metadata> make(Metadata&& md) {
        return md.empty() ? nullptr : std::make_unique<Metadata>(std::move(md));
    }
    // Appends n rows without metadata: O(1), nothing allocated (the column holds no
    // entries for rows past the last one with metadata).
    void append_empty(std::size_t n) { n_ += n; }
    // Appends and indexes one row. All or nothing (bad_alloc).
    void push_back(std::unique_ptr<Metadata> md);
    // Replaces a row's metadata. All or nothing (bad_alloc).
    void set(std::size_t slot, std::unique_ptr<Metadata> md);
    // Row src replaces row dst (dst < src); row src is left empty. Allocates nothing.
    void move(std::size_t src, std::size_t dst) noexcept;
    void truncate(std::size_t n) noexcept;
    void clear() noexcept;

    // Evaluates `filter` over slots [0, size()). slot_of(id) gives an id's slot or a value
    // >= size() when unknown ($id). Throws InvalidArgumentError for an ordering that meets
    // values it cannot order (see Filter).
    SlotBits evaluate(const Filter& filter,
                      const std::function<std::size_t(const std::string&)>& slot_of) const;
    // The same answer without copies where the indexes hold it (one posting: its bitmap and
    // cached sorted slots). `bits` false: only `count` is wanted. Safe from concurrent readers.
    Selection select(const Filter& filter, const std::function<std::size_t(const std::string&)>& slot_of,
                     bool bits) const;

   private:
    static const Metadata& empty() {
        static const Metadata none;
        return none;
    }
   public:
    struct Entry;  // one posting a row is in (metadata_index.cpp)

   private:
    // The entries of md that `except` (another version of the row, or null) lacks.
    void add_entries(std::uint32_t slot, const Metadata& md, const Metadata* except, std::size_t rows);
    void drop_entries(std::uint32_t slot, const Metadata& md, const Metadata* except, std::size_t rows) noexcept;
    Posting* posting(const Entry& e, bool create);
    std::size_t cover_words() const { return ((cap_ > n_ ? cap_ : n_) + 63) / 64; }
    class Evaluator;

    std::size_t n_ = 0;    // rows
    std::size_t cap_ = 0;  // rows reserved
    // By slot, up to the last row given metadata (rows past its end have none).
    std::vector<std::unique_ptr<Metadata>> rows_;
    std::unordered_map<std::string, KeyIndex> keys_;
    // Buffers that evaluations lease and give back, and the lock of the postings' caches.
    std::unique_ptr<Selection::Pool> pool_;
};

// Checks what the core requires of metadata, naming the key: strings (keys, values, tags)
// valid UTF-8, floats not NaN. Throws InvalidArgumentError.
void check_metadata(const Metadata& md);

}  // namespace hive_gpu::detail
