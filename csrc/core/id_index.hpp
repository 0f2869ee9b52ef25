// IdIndex: string id -> slot for VectorStorage, without storing the ids a second time.
//
// An open-addressing table (linear probing, power-of-two capacity, load factor at most 0.7)
// of 8-byte entries: a slot number and a 32-bit fragment of the id's hash. The id itself
// stays where the storage keeps it, in its by-slot vector of ids (`keys` below); a lookup
// compares against keys[slot] only when the fragment matches. The fragment also fixes the
// entry's home bucket, so growing the table and deleting (backward shift, no tombstones)
// never touch an id string.
//
// Every call that takes `keys` reads keys[s] for the slots s the index holds (and, for
// insert/relocate/erase_slot, the slot it is given), so the caller keeps keys and index in
// step: an id is entered after it is written to keys[slot], and taken out (or relocated)
// before its string is moved away. Not thread-safe for writers; const calls may run
// concurrently with each other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#if defined(_MSC_VER) && defined(_M_X64) && !defined(__SIZEOF_INT128__)
#include <intrin.h>
#endif

namespace hive_gpu::detail {

// ---- Hash -----------------------------------------------------------------------------------
// A 64-bit string hash for in-memory tables (never persisted, so its value may change between
// versions). Bytes are taken 16 at a time, in two 8-byte words, and folded with a 64x64->128
// multiply whose halves are xored together; the last 1..16 bytes are read as two possibly
// overlapping words. Not meant to resist inputs crafted against it.

// High and low halves of a * b, xored.
inline std::uint64_t mul_fold(std::uint64_t a, std::uint64_t b) noexcept {
#if defined(__SIZEOF_INT128__)
    const unsigned __int128 p = static_cast<unsigned __int128>(a) * b;
    return static_cast<std::uint64_t>(p) ^ static_cast<std::uint64_t>(p >> 64);
#elif defined(_MSC_VER) && defined(_M_X64)
    std::uint64_t hi;
    const std::uint64_t lo = _umul128(a, b, &hi);
    return lo ^ hi;
#else
    const std::uint64_t a_lo = a & 0xffffffffu, a_hi = a >> 32;
    const std::uint64_t b_lo = b & 0xffffffffu, b_hi = b >> 32;
    const std::uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi, hl = a_hi * b_lo, hh = a_hi * b_hi;
    const std::uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    const std::uint64_t lo = (mid << 32) | (ll & 0xffffffffu);
    const std::uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
    return lo ^ hi;
#endif
}

inline std::uint64_t read_u64(const char* p) noexcept {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

inline std::uint64_t read_u32(const char* p) noexcept {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

inline std::uint64_t hash_id(std::string_view id) noexcept {
    // Odd constants with well-spread bits (the golden ratio and splitmix64's multipliers).
    constexpr std::uint64_t k0 = 0x9e3779b97f4a7c15ull, k1 = 0xbf58476d1ce4e5b9ull,
                            k2 = 0x94d049bb133111ebull, k3 = 0xd6e8feb86659fd93ull;
    const char* p = id.data();
    std::size_t n = id.size();
    std::uint64_t h = mul_fold(static_cast<std::uint64_t>(n) ^ k0, k1);
    while (n > 16) {
        h = mul_fold(read_u64(p) ^ k1, read_u64(p + 8) ^ h ^ k2);
        p += 16;
        n -= 16;
    }
    std::uint64_t a = 0, b = 0;
    if (n > 8) {
        a = read_u64(p);
        b = read_u64(p + n - 8);
    } else if (n >= 4) {
        a = read_u32(p);
        b = read_u32(p + n - 4);
    } else if (n > 0) {
        a = std::uint64_t(std::uint8_t(p[0])) << 16 | std::uint64_t(std::uint8_t(p[n >> 1])) << 8 |
            std::uint64_t(std::uint8_t(p[n - 1]));
    }
    h = mul_fold(a ^ k2, b ^ h ^ k3);
    return mul_fold(h ^ k0, k3);
}

// ---- Index ----------------------------------------------------------------------------------
class IdIndex {
   public:
    using Keys = std::vector<std::string>;
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    // Slots are 32-bit (stored + 1, so that an all-zero entry is empty).
    static constexpr std::size_t kMaxSlot = 0xfffffffeu;

    IdIndex() = default;
    IdIndex(IdIndex&& o) noexcept
        : table_(std::move(o.table_)), mask_(std::exchange(o.mask_, 0)), size_(std::exchange(o.size_, 0)) {}
    IdIndex& operator=(IdIndex&& o) noexcept {
        table_ = std::move(o.table_);
        mask_ = std::exchange(o.mask_, 0);
        size_ = std::exchange(o.size_, 0);
        return *this;
    }
    IdIndex(const IdIndex&) = delete;
    IdIndex& operator=(const IdIndex&) = delete;

    std::size_t size() const noexcept { return size_; }
    std::size_t capacity() const noexcept { return table_ ? mask_ + 1 : 0; }

    // The slot of `id`, or npos.
    std::size_t find(const Keys& keys, std::string_view id) const noexcept {
        if (size_ == 0) return npos;
        const std::uint32_t f = fragment(hash_id(id));
        for (std::size_t i = f & mask_;; i = (i + 1) & mask_) {
            const Entry e = table_[i];
            if (e.ref == 0) return npos;
            if (e.fragment == f && keys[e.ref - 1] == id) return e.ref - 1;
        }
    }

    // Room for `n` entries in all: inserts up to that size allocate nothing. Throws
    // std::bad_alloc when the table cannot be allocated (or could not address n entries).
    void reserve(std::size_t n) {
        if (n > max_entries(capacity())) grow_to(capacity_for(n));
    }

    // Enters keys[slot]. Returns npos when it was entered; when an equal id is already in the
    // index, returns that id's slot and changes nothing. Grows the table when it is full
    // (std::bad_alloc; nothing changes then).
    std::size_t insert(const Keys& keys, std::size_t slot) {
        if (slot > kMaxSlot) throw std::bad_alloc();
        if (size_ + 1 > max_entries(capacity())) grow_to(capacity_for(size_ + 1));
        const std::string& key = keys[slot];
        const std::uint32_t f = fragment(hash_id(key));
        for (std::size_t i = f & mask_;; i = (i + 1) & mask_) {
            const Entry e = table_[i];
            if (e.ref == 0) {
                table_[i] = Entry{static_cast<std::uint32_t>(slot + 1), f};
                ++size_;
                return npos;
            }
            if (e.fragment == f && keys[e.ref - 1] == key) return e.ref - 1;
        }
    }

    // Enters keys[first, first + count) in order, as insert() would one by one, and stops at
    // the first key already in the index (stored before or earlier in the range). Returns how
    // many were entered; *clash gets the slot holding the key at first + that count, or npos.
    // First grows the table for all of them when needed (std::bad_alloc; nothing changes
    // then). The buckets of the next few keys are prefetched while one is entered.
    std::size_t insert_range(const Keys& keys, std::size_t first, std::size_t count, std::size_t* clash) {
        if (count != 0 && first + count - 1 > kMaxSlot) throw std::bad_alloc();
        reserve(size_ + count);
        constexpr std::size_t kAhead = 16;
        std::uint32_t frag[kAhead];
        const std::size_t warm = count < kAhead ? count : kAhead;
        for (std::size_t k = 0; k < warm; ++k) {
            frag[k] = fragment(hash_id(keys[first + k]));
            prefetch(frag[k]);
        }
        for (std::size_t k = 0; k < count; ++k) {
            const std::uint32_t f = frag[k % kAhead];
            if (k + kAhead < count) {
                const std::uint32_t next = fragment(hash_id(keys[first + k + kAhead]));
                frag[k % kAhead] = next;
                prefetch(next);
            }
            const std::size_t slot = first + k;
            const std::string& key = keys[slot];
            for (std::size_t i = f & mask_;; i = (i + 1) & mask_) {
                const Entry e = table_[i];
                if (e.ref == 0) {
                    table_[i] = Entry{static_cast<std::uint32_t>(slot + 1), f};
                    ++size_;
                    break;
                }
                if (e.fragment == f && keys[e.ref - 1] == key) {
                    *clash = e.ref - 1;
                    return k;
                }
            }
        }
        *clash = npos;
        return count;
    }

    // Takes `id` out; returns the slot it had, or npos when it was not in the index.
    std::size_t erase(const Keys& keys, std::string_view id) noexcept {
        if (size_ == 0) return npos;
        const std::uint32_t f = fragment(hash_id(id));
        for (std::size_t i = f & mask_;; i = (i + 1) & mask_) {
            const Entry e = table_[i];
            if (e.ref == 0) return npos;
            if (e.fragment == f && keys[e.ref - 1] == id) {
                erase_at(i);
                return e.ref - 1;
            }
        }
    }

    // Takes out the entry of `slot`, which the index holds under keys[slot].
    void erase_slot(const Keys& keys, std::size_t slot) noexcept { erase_at(position_of(keys, slot)); }

    // The id at keys[from], which the index holds under slot `from`, now lives at slot `to`
    // (swap-remove moves the last row into a freed slot). Call before moving the string.
    void relocate(const Keys& keys, std::size_t from, std::size_t to) noexcept {
        table_[position_of(keys, from)].ref = static_cast<std::uint32_t>(to + 1);
    }

    // Makes the index hold exactly keys[0, n), which must be distinct, with n <= size(): no
    // allocation. Cheaper than erasing entry by entry when most entries go.
    void reindex_prefix(const Keys& keys, std::size_t n) noexcept {
        clear();
        for (std::size_t s = 0; s < n; ++s) {
            const std::uint32_t f = fragment(hash_id(keys[s]));
            std::size_t i = f & mask_;
            while (table_[i].ref != 0) i = (i + 1) & mask_;
            table_[i] = Entry{static_cast<std::uint32_t>(s + 1), f};
        }
        size_ = n;
    }

    // Empties the index; keeps the table.
    void clear() noexcept {
        if (table_ && size_ != 0) std::memset(table_.get(), 0, capacity() * sizeof(Entry));
        size_ = 0;
    }

    // Empties the index and frees the table.
    void release() noexcept {
        table_.reset();
        mask_ = 0;
        size_ = 0;
    }

   private:
    struct Entry {
        std::uint32_t ref;       // slot + 1; 0: empty
        std::uint32_t fragment;  // high half of the id's hash; its low bits are the home bucket
    };
    struct Free {
        void operator()(Entry* p) const noexcept { std::free(p); }
    };

    static std::uint32_t fragment(std::uint64_t h) noexcept { return static_cast<std::uint32_t>(h >> 32); }

    void prefetch(std::uint32_t f) const noexcept {
#if defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(&table_[f & mask_], 1);
#else
        (void)f;
#endif
    }

    // Load factor at most 0.7.
    static std::size_t max_entries(std::size_t cap) noexcept {
        return static_cast<std::size_t>(static_cast<std::uint64_t>(cap) * 7 / 10);
    }
    // The fragment addresses at most 2^32 buckets.
    static constexpr std::uint64_t kMaxCapacity = std::uint64_t{1} << 32;

    static std::size_t capacity_for(std::size_t n) {
        std::uint64_t cap = 16;
        while (cap * 7 / 10 < n) {
            cap *= 2;
            if (cap > kMaxCapacity) throw std::bad_alloc();
        }
        if (cap - 1 > static_cast<std::uint64_t>(static_cast<std::size_t>(-1)) / sizeof(Entry))
            throw std::bad_alloc();
        return static_cast<std::size_t>(cap);
    }

    // Position of the entry holding `slot` (which must be in the index).
    std::size_t position_of(const Keys& keys, std::size_t slot) const noexcept {
        const std::uint32_t ref = static_cast<std::uint32_t>(slot + 1);
        std::size_t i = fragment(hash_id(keys[slot])) & mask_;
        while (table_[i].ref != ref) i = (i + 1) & mask_;
        return i;
    }

    // Backward-shift deletion: every later entry of the cluster that may sit closer to its home
    // bucket moves into the hole, so that lookups never need tombstones.
    void erase_at(std::size_t hole) noexcept {
        for (std::size_t j = (hole + 1) & mask_;; j = (j + 1) & mask_) {
            const Entry e = table_[j];
            if (e.ref == 0) break;
            const std::size_t home = e.fragment & mask_;
            // e may fill the hole when its home is not inside (hole, j].
            if (((j - home) & mask_) >= ((j - hole) & mask_)) {
                table_[hole] = e;
                hole = j;
            }
        }
        table_[hole] = Entry{0, 0};
        --size_;
    }

    // Rehash into a zeroed table of `cap` buckets; only fragments are read, never ids.
    void grow_to(std::size_t cap) {
        Entry* fresh = static_cast<Entry*>(std::calloc(cap, sizeof(Entry)));
        if (!fresh) throw std::bad_alloc();
        const std::size_t mask = cap - 1;
        if (table_) {
            const std::size_t old_cap = mask_ + 1;
            for (std::size_t k = 0; k < old_cap; ++k) {
                const Entry e = table_[k];
                if (e.ref == 0) continue;
                std::size_t i = e.fragment & mask;
                while (fresh[i].ref != 0) i = (i + 1) & mask;
                fresh[i] = e;
            }
        }
        table_.reset(fresh);
        mask_ = mask;
    }

    std::unique_ptr<Entry[], Free> table_;
    std::size_t mask_ = 0;
    std::size_t size_ = 0;
};

}  // namespace hive_gpu::detail
