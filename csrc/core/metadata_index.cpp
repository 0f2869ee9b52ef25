#include "core/metadata_index.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <utility>

#include "core/validate.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu::detail {

// ---- Bit helpers --------------------------------------------------------------------------
namespace {
// Writes the slots of the set bits of words[0, nw) (slot base + bit index), ascending, to
// [out, end). K slots are written per word whatever it holds and the cursor advances by its
// popcount, so sparse words, whose bit counts vary at random, rarely mispredict a branch (K
// near the mean bit count keeps the writes few); the last K slots are written bit by bit.
template <std::size_t K>
inline void list_slots_body(const std::uint64_t* words, std::size_t nw, std::uint32_t base, std::uint32_t* out,
                            std::uint32_t* end) {
    constexpr std::uint64_t kTop = std::uint64_t{1} << 63;  // keeps ctz defined on an empty word
    std::size_t w = 0;
    for (; w < nw && static_cast<std::size_t>(end - out) >= K; ++w) {
        std::uint64_t b = words[w];
        const auto at = base + static_cast<std::uint32_t>(w * 64);
        const int c = __builtin_popcountll(b);
        for (std::size_t i = 0; i < K; ++i) {
            out[i] = at + static_cast<std::uint32_t>(__builtin_ctzll(b | kTop));
            b &= b - 1;
        }
        if (c > static_cast<int>(K)) {
            std::uint32_t* o = out + K;
            for (; b; b &= b - 1) *o++ = at + static_cast<std::uint32_t>(__builtin_ctzll(b));
        }
        out += c;
    }
    for (; w < nw; ++w)
        for (std::uint64_t b = words[w]; b; b &= b - 1)
            *out++ = base + static_cast<std::uint32_t>(w * 64) + static_cast<std::uint32_t>(__builtin_ctzll(b));
}

inline std::size_t popcount_body(const std::uint64_t* words, std::size_t nw) {
    std::size_t c = 0;
    for (std::size_t w = 0; w < nw; ++w) c += static_cast<std::size_t>(__builtin_popcountll(words[w]));
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// popcnt and BMI instructions, which the baseline x86-64 build lacks (its popcount is a
// library call of a dozen instructions); used where the CPU has them.
#define HIVE_GPU_POPCNT_BMI __attribute__((target("popcnt,bmi")))
// __builtin_cpu_init first: this runs among static constructors, in no set order.
const bool kPopcntBmi = (__builtin_cpu_init(), __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi"));
#else
#define HIVE_GPU_POPCNT_BMI
constexpr bool kPopcntBmi = false;
#endif

template <std::size_t K>
HIVE_GPU_POPCNT_BMI void list_slots_fast(const std::uint64_t* words, std::size_t nw, std::uint32_t base,
                                         std::uint32_t* out, std::uint32_t* end) {
    list_slots_body<K>(words, nw, base, out, end);
}

HIVE_GPU_POPCNT_BMI std::size_t popcount_fast(const std::uint64_t* words, std::size_t nw) {
    return popcount_body(words, nw);
}

// [out, end) holds exactly the slots of words[0, nw).
void list_slots_part(const std::uint64_t* words, std::size_t nw, std::uint32_t base, std::uint32_t* out,
                     std::uint32_t* end) {
    const bool sparse = static_cast<std::size_t>(end - out) <= nw + nw / 2;  // at most 1.5 bits a word
    if (kPopcntBmi) return sparse ? list_slots_fast<2>(words, nw, base, out, end) : list_slots_fast<8>(words, nw, base, out, end);
    sparse ? list_slots_body<2>(words, nw, base, out, end) : list_slots_body<8>(words, nw, base, out, end);
}

// out holds count slots: the words' set bits. A long list is decoded in two halves at once
// where there are cores to spare (on 2 busy cores the second thread cost more than it saved).
void list_slots(const std::uint64_t* words, std::size_t nw, std::size_t count, std::uint32_t* out) {
    constexpr std::size_t kParallelSlots = std::size_t{1} << 16;
    static const bool several_cores = std::thread::hardware_concurrency() >= 4;
    if (count >= kParallelSlots && several_cores) {
        const std::size_t half = nw / 2;
        const std::size_t first = kPopcntBmi ? popcount_fast(words, half) : popcount_body(words, half);
        std::thread helper;
        try {
            helper = std::thread(list_slots_part, words + half, nw - half, static_cast<std::uint32_t>(half * 64),
                                 out + first, out + count);
        } catch (...) {
            // No thread (resource limits): one decodes all.
        }
        if (helper.joinable()) {
            list_slots_part(words, half, 0, out, out + first);
            helper.join();
            return;
        }
    }
    list_slots_part(words, nw, 0, out, out + count);
}
}  // namespace

// ---- Posting ------------------------------------------------------------------------------

Posting::Posting(Posting&& o) noexcept
    : bitmap_(o.bitmap_),
      count_(o.count_),
      list_(std::move(o.list_)),
      words_(std::move(o.words_)),
      sorted_(std::move(o.sorted_)),
      sorted_ok_(o.sorted_ok_.load(std::memory_order_relaxed)) {
    o.count_ = 0;
    o.changed();
}

void Posting::insert(std::uint32_t slot, std::size_t rows, std::size_t cover_words) {
    if (bitmap_) {
        const std::size_t w = slot / 64;
        // Growing, it spans the table's capacity: the later rows of a batch fit, and the
        // bitmap covers the table as a filter's bitset.
        if (w >= words_.size()) words_.resize(std::max(w + 1, cover_words), 0);
        words_[w] |= std::uint64_t{1} << (slot % 64);
        ++count_;
        changed();
        return;
    }
    list_.push_back(slot);
    ++count_;
    changed();
    // The bitmap takes rows / 8 bytes, the list 4 bytes a slot.
    if (count_ >= kMinBitmap && rows <= count_ * 32 * kBitmapFactor) {
        try {
            // Sized to the rows so far: a value that stops appearing keeps a small bitmap.
            std::vector<std::uint64_t> words((rows + 63) / 64, 0);
            for (std::uint32_t s : list_) {
                if (s / 64 >= words.size()) words.resize(s / 64 + 1, 0);
                words[s / 64] |= std::uint64_t{1} << (s % 64);
            }
            words_ = std::move(words);
            std::vector<std::uint32_t>().swap(list_);
            bitmap_ = true;
        } catch (const std::bad_alloc&) {
            // Stays a list: correct, only slower to evaluate.
        }
    }
}

void Posting::erase(std::uint32_t slot, std::size_t rows) noexcept {
    if (bitmap_) {
        const std::uint64_t bit = std::uint64_t{1} << (slot % 64);
        if (slot / 64 >= words_.size() || !(words_[slot / 64] & bit)) return;
        words_[slot / 64] &= ~bit;
        --count_;
        changed();
        // Back to a list once it is four times sparser than where it became a bitmap.
        if (count_ * 4 * 32 * kBitmapFactor < rows || count_ == 0) {
            try {
                std::vector<std::uint32_t> list;
                list.reserve(count_);
                for (std::size_t w = 0; w < words_.size(); ++w)
                    for (std::uint64_t b = words_[w]; b; b &= b - 1)
                        list.push_back(static_cast<std::uint32_t>(w * 64 + static_cast<std::size_t>(__builtin_ctzll(b))));
                list_ = std::move(list);
                std::vector<std::uint64_t>().swap(words_);
                bitmap_ = false;
            } catch (const std::bad_alloc&) {
            }
        }
        return;
    }
    auto it = std::find(list_.begin(), list_.end(), slot);
    if (it == list_.end()) return;
    *it = list_.back();
    list_.pop_back();
    --count_;
    changed();
}

void Posting::relabel(std::uint32_t from, std::uint32_t to) noexcept {
    changed();
    if (bitmap_) {
        words_[from / 64] &= ~(std::uint64_t{1} << (from % 64));
        words_[to / 64] |= std::uint64_t{1} << (to % 64);
        return;
    }
    auto it = std::find(list_.begin(), list_.end(), from);
    if (it != list_.end()) *it = to;
}

void Posting::or_into(std::uint64_t* words, std::size_t nwords) const {
    if (bitmap_) {
        const std::size_t m = std::min(nwords, words_.size());
        for (std::size_t i = 0; i < m; ++i) words[i] |= words_[i];
        return;
    }
    for (std::uint32_t s : list_) words[s / 64] |= std::uint64_t{1} << (s % 64);
}

const std::vector<std::uint32_t>& Posting::sorted(std::mutex& build) const {
    if (sorted_ok_.load(std::memory_order_acquire)) return sorted_;
    std::lock_guard<std::mutex> lock(build);
    if (sorted_ok_.load(std::memory_order_relaxed)) return sorted_;
    if (bitmap_) {
        sorted_.resize(count_);
        if (count_) list_slots(words_.data(), words_.size(), count_, sorted_.data());
    } else {
        sorted_.assign(list_.begin(), list_.end());
        std::sort(sorted_.begin(), sorted_.end());
    }
    sorted_ok_.store(true, std::memory_order_release);
    return sorted_;
}

// ---- Leased buffers -------------------------------------------------------------------------

// Word buffers (each flagged when all zero) and slot buffers that evaluations lease, so a
// search allocates nothing once the pool is warm; also the lock of the postings' caches.
struct Selection::Pool {
    static constexpr std::size_t kKeep = 4;
    std::mutex mutex;
    std::mutex sort;
    std::vector<std::pair<std::vector<std::uint64_t>, bool>> words;
    std::vector<std::vector<std::uint32_t>> slots;

    // nw words, zeroed when `zero`. May throw bad_alloc.
    std::vector<std::uint64_t> take_words(std::size_t nw, bool zero) {
        std::vector<std::uint64_t> v;
        bool is_zero = true;
        {
            std::lock_guard<std::mutex> lock(mutex);
            std::size_t pick = words.size();
            for (std::size_t i = 0; i < words.size(); ++i)
                if (pick == words.size() || words[i].second == zero) pick = i;
            if (pick != words.size()) {
                v = std::move(words[pick].first);
                is_zero = words[pick].second;
                words.erase(words.begin() + static_cast<std::ptrdiff_t>(pick));
            }
        }
        v.resize(nw, 0);  // a shorter buffer gains zero words, a longer one drops its tail
        if (zero && !is_zero) std::fill(v.begin(), v.end(), 0);
        return v;
    }
    void give_words(std::vector<std::uint64_t>&& v, bool zero) noexcept {
        std::lock_guard<std::mutex> lock(mutex);
        if (words.size() < kKeep) words.emplace_back(std::move(v), zero);  // capacity reserved
    }
    std::vector<std::uint32_t> take_slots() {
        std::lock_guard<std::mutex> lock(mutex);
        if (slots.empty()) return {};
        std::vector<std::uint32_t> v = std::move(slots.back());
        slots.pop_back();
        return v;
    }
    void give_slots(std::vector<std::uint32_t>&& v) noexcept {
        std::lock_guard<std::mutex> lock(mutex);
        if (slots.size() < kKeep) slots.push_back(std::move(v));
    }
    Pool() {
        words.reserve(kKeep);
        slots.reserve(kKeep);
    }
};

namespace {
// A word buffer leased for one evaluation step; handed back dirty unless cleared.
struct WordsLease {
    Selection::Pool& pool;
    std::vector<std::uint64_t> v;
    bool zero_after = false;
    WordsLease(Selection::Pool& p, std::size_t nw, bool zero) : pool(p), v(p.take_words(nw, zero)) {}
    ~WordsLease() { pool.give_words(std::move(v), zero_after); }
    std::uint64_t* data() { return v.data(); }
};

void set_bits(std::uint64_t* words, const std::uint32_t* slots, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) words[slots[i] / 64] |= std::uint64_t{1} << (slots[i] % 64);
}
void clear_bits(std::uint64_t* words, const std::uint32_t* slots, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) words[slots[i] / 64] = 0;
}
}  // namespace

Selection::Selection(Selection&& o) noexcept
    : bits(o.bits),
      count(o.count),
      slots(o.slots),
      pool_(std::exchange(o.pool_, nullptr)),
      words_(std::move(o.words_)),
      clear_(o.clear_),
      clear_n_(o.clear_n_),
      words_zero_(o.words_zero_),
      slot_buf_(std::move(o.slot_buf_)) {
    o.bits = nullptr;
    o.slots = nullptr;
}

Selection::~Selection() {
    if (!pool_) return;
    if (words_.capacity()) {
        if (clear_) clear_bits(words_.data(), clear_, clear_n_);
        pool_->give_words(std::move(words_), words_zero_);
    }
    if (slot_buf_.capacity()) pool_->give_slots(std::move(slot_buf_));
}
// ---- Entries: what one row contributes to the indexes ---------------------------------

enum class EntryKind { All, Bool, Num, Str, List, Tag };

struct MetadataTable::Entry {
    const std::string* key;
    EntryKind kind;
    const MetaValue* value;
    const std::string* tag;  // Tag
};

namespace {

using Entry = MetadataTable::Entry;

// Calls f(entry) for every entry of a row, allocating nothing: per key its value entries
// (for a list: List, then each distinct tag once), then All, so that dropping them in this
// order finds All last.
template <typename F>
void for_each_entry(const Metadata& md, F&& f) {
    for (const auto& [key, value] : md) {
        switch (meta_type(value)) {
            case MetaType::Str: f(Entry{&key, EntryKind::Str, &value, nullptr}); break;
            case MetaType::Int:
            case MetaType::Float: f(Entry{&key, EntryKind::Num, &value, nullptr}); break;
            case MetaType::Bool: f(Entry{&key, EntryKind::Bool, &value, nullptr}); break;
            case MetaType::Tags: {
                f(Entry{&key, EntryKind::List, &value, nullptr});
                const MetaTags& tags = std::get<MetaTags>(value);
                for (std::size_t i = 0; i < tags.size(); ++i)
                    if (std::find(tags.begin(), tags.begin() + static_cast<std::ptrdiff_t>(i), tags[i]) ==
                        tags.begin() + static_cast<std::ptrdiff_t>(i))
                        f(Entry{&key, EntryKind::Tag, &value, &tags[i]});
                break;
            }
        }
        f(Entry{&key, EntryKind::All, &value, nullptr});
    }
}

NumKey num_of(const MetaValue& v) {
    if (const auto* i = std::get_if<std::int64_t>(&v)) return NumKey::of(*i);
    return NumKey::of(std::get<double>(v));
}

// Whether row metadata `md` has entry e (of another row's metadata).
bool has_entry(const Metadata* md, const Entry& e) {
    if (!md) return false;
    auto it = md->find(*e.key);
    if (it == md->end()) return false;
    const MetaValue& v = it->second;
    switch (e.kind) {
        case EntryKind::All: return true;
        case EntryKind::Str: return meta_type(v) == MetaType::Str && std::get<std::string>(v) == std::get<std::string>(*e.value);
        case EntryKind::Bool: return meta_type(v) == MetaType::Bool && std::get<bool>(v) == std::get<bool>(*e.value);
        case EntryKind::Num:
            return (meta_type(v) == MetaType::Int || meta_type(v) == MetaType::Float) && num_of(v) == num_of(*e.value);
        case EntryKind::List: return meta_type(v) == MetaType::Tags;
        case EntryKind::Tag: {
            if (meta_type(v) != MetaType::Tags) return false;
            const MetaTags& t = std::get<MetaTags>(v);
            return std::find(t.begin(), t.end(), *e.tag) != t.end();
        }
    }
    return false;
}

}  // namespace

// ---- MetadataTable ------------------------------------------------------------------------

MetadataTable::MetadataTable() : pool_(std::make_unique<Selection::Pool>()) {}
MetadataTable::~MetadataTable() = default;
MetadataTable::MetadataTable(MetadataTable&&) noexcept = default;
MetadataTable& MetadataTable::operator=(MetadataTable&&) noexcept = default;

Posting* MetadataTable::posting(const Entry& e, bool create) {
    KeyIndex* ki;
    if (create) {
        ki = &keys_[*e.key];
    } else {
        auto it = keys_.find(*e.key);
        if (it == keys_.end()) return nullptr;
        ki = &it->second;
    }
    auto in = [create](auto& map, auto&& k) -> Posting* {
        if (create) return &map[std::forward<decltype(k)>(k)];
        auto it = map.find(k);
        return it == map.end() ? nullptr : &it->second;
    };
    switch (e.kind) {
        case EntryKind::All: return &ki->all;
        case EntryKind::List: return &ki->lists;
        case EntryKind::Bool: return in(ki->bools, std::get<bool>(*e.value));
        case EntryKind::Num: return in(ki->nums, num_of(*e.value));
        case EntryKind::Str: return in(ki->strs, std::get<std::string>(*e.value));
        case EntryKind::Tag: return in(ki->tags, *e.tag);
    }
    return nullptr;
}

namespace {
// Removes an emptied posting from its map, and an unused key.
void prune(std::unordered_map<std::string, KeyIndex>& keys, const Entry& e) {
    auto it = keys.find(*e.key);
    if (it == keys.end()) return;
    KeyIndex& ki = it->second;
    auto drop = [](auto& map, const auto& k) {
        auto p = map.find(k);
        if (p != map.end() && p->second.empty()) map.erase(p);
    };
    switch (e.kind) {
        case EntryKind::Bool: drop(ki.bools, std::get<bool>(*e.value)); break;
        case EntryKind::Num: drop(ki.nums, num_of(*e.value)); break;
        case EntryKind::Str: drop(ki.strs, std::get<std::string>(*e.value)); break;
        case EntryKind::Tag: drop(ki.tags, *e.tag); break;
        case EntryKind::All:
            if (ki.unused()) keys.erase(it);
            break;
        case EntryKind::List: break;
    }
}
}  // namespace

// Adds the entries of md that `except` lacks; all or nothing.
void MetadataTable::add_entries(std::uint32_t slot, const Metadata& md, const Metadata* except, std::size_t rows) {
    std::size_t done = 0;
    try {
        for_each_entry(md, [&](const Entry& e) {
            if (has_entry(except, e)) return;
            posting(e, true)->insert(slot, rows, cover_words());
            ++done;
        });
    } catch (...) {
        std::size_t undo = 0;
        for_each_entry(md, [&](const Entry& e) {
            if (undo == done || has_entry(except, e)) return;
            ++undo;
            if (Posting* p = posting(e, false)) p->erase(slot, rows);
            prune(keys_, e);
        });
        // A key made for an entry that failed holds nothing.
        for (const auto& [key, value] : md) {
            auto it = keys_.find(key);
            if (it != keys_.end() && it->second.unused()) keys_.erase(it);
        }
        throw;
    }
}

void MetadataTable::drop_entries(std::uint32_t slot, const Metadata& md, const Metadata* except,
                                 std::size_t rows) noexcept {
    for_each_entry(md, [&](const Entry& e) {
        if (has_entry(except, e)) return;
        if (Posting* p = posting(e, false)) p->erase(slot, rows);
        prune(keys_, e);
    });
}


void MetadataTable::reserve(std::size_t n) {
    if (!rows_.empty()) rows_.reserve(n);
    cap_ = std::max(cap_, n);
}

void MetadataTable::push_back(std::unique_ptr<Metadata> md) {
    const std::size_t slot = n_;
    if (!md) {
        ++n_;
        return;
    }
    // The column reaches this row: empty entries for the rows since the last with metadata.
    if (rows_.capacity() < slot + 1) rows_.reserve(std::max(cap_, slot + 1));
    rows_.resize(slot);
    rows_.push_back(std::move(md));
    ++n_;
    try {
        add_entries(static_cast<std::uint32_t>(slot), *rows_.back(), nullptr, n_);
    } catch (...) {
        rows_.pop_back();
        --n_;
        throw;
    }
}

void MetadataTable::set(std::size_t slot, std::unique_ptr<Metadata> md) {
    if (slot >= rows_.size()) {
        if (!md) return;
        rows_.resize(slot + 1);
    }
    const Metadata* old = rows_[slot].get();
    const auto s = static_cast<std::uint32_t>(slot);
    if (md) add_entries(s, *md, old, n_);
    if (old) drop_entries(s, *old, md.get(), n_);
    rows_[slot] = std::move(md);
}

void MetadataTable::move(std::size_t src, std::size_t dst) noexcept {
    if (dst >= rows_.size()) return;  // src > dst: both without metadata
    if (rows_[dst]) drop_entries(static_cast<std::uint32_t>(dst), *rows_[dst], nullptr, n_);
    if (src >= rows_.size()) {
        rows_[dst].reset();
        return;
    }
    if (rows_[src])
        for_each_entry(*rows_[src], [&](const Entry& e) {
            if (Posting* p = posting(e, false)) p->relabel(static_cast<std::uint32_t>(src), static_cast<std::uint32_t>(dst));
        });
    rows_[dst] = std::move(rows_[src]);
}

void MetadataTable::truncate(std::size_t n) noexcept {
    if (n >= n_) return;
    for (std::size_t s = n; s < rows_.size(); ++s)
        if (rows_[s]) drop_entries(static_cast<std::uint32_t>(s), *rows_[s], nullptr, n_);
    if (rows_.size() > n) rows_.resize(n);
    n_ = n;
}

void MetadataTable::clear() noexcept {
    rows_.clear();
    keys_.clear();
    n_ = 0;
}

// ---- Evaluation ---------------------------------------------------------------------------

// Writes a filter node's answer into a buffer of nw words (bits past the table size zero),
// taking temporaries from the pool; a posting is read in place, never copied.
class MetadataTable::Evaluator {
   public:
    Evaluator(const MetadataTable& t, const std::function<std::size_t(const std::string&)>& slot_of)
        : t_(t), pool_(*t.pool_), slot_of_(slot_of), n_(t.size()), nw_((n_ + 63) / 64) {}

    std::size_t words() const { return nw_; }

    void eval(const FilterNode& node, std::uint64_t* dst) const {
        switch (node.op) {
            case FilterOp::All:
                std::fill(dst, dst + nw_, ~std::uint64_t{0});
                trim(dst);
                return;
            case FilterOp::And:
                eval(node.children[0], dst);
                for (std::size_t c = 1; c < node.children.size(); ++c) and_with(node.children[c], dst);
                return;
            case FilterOp::Or:
                eval(node.children[0], dst);
                for (std::size_t c = 1; c < node.children.size(); ++c) or_with(node.children[c], dst);
                return;
            case FilterOp::Not:
                eval(node.children[0], dst);
                invert(dst);
                return;
            case FilterOp::IdNin:
                std::fill(dst, dst + nw_, 0);
                or_leaf(node, dst);
                invert(dst);
                return;
            case FilterOp::Ne:
            case FilterOp::Nin:
                std::fill(dst, dst + nw_, 0);
                not_equal(node, dst);
                return;
            default:
                std::fill(dst, dst + nw_, 0);
                or_leaf(node, dst);
                return;
        }
    }

    // Whether one posting answers the node ($eq, $contains, $in of one value); *p is that
    // posting, or null when no row matches.
    bool sole_posting(const FilterNode& node, const Posting** p) const {
        const bool one = node.op == FilterOp::Eq || node.op == FilterOp::Contains ||
                         (node.op == FilterOp::In && node.values.size() == 1);
        if (!one) return false;
        *p = nullptr;
        auto it = t_.keys_.find(node.key);
        if (it != t_.keys_.end())
            *p = node.op == FilterOp::Contains ? find_tag(it->second, node.values[0]) : find_equal(it->second, node.values[0]);
        return true;
    }

    // A condition answered by list postings or ids ($in, $id $in): its slots, ascending
    // and distinct, appended to `out` (false, out untouched: another kind of condition).
    bool few_slots(const FilterNode& node, std::vector<std::uint32_t>& out) const {
        if (node.op == FilterOp::IdIn) {
            for (const MetaValue& v : node.values) {
                const std::size_t s = slot_of_(std::get<std::string>(v));
                if (s < n_) out.push_back(static_cast<std::uint32_t>(s));
            }
        } else if (node.op == FilterOp::In) {
            auto it = t_.keys_.find(node.key);
            if (it == t_.keys_.end()) return true;
            for (const MetaValue& v : node.values)
                if (const Posting* p = find_equal(it->second, v); p && !p->list()) return false;
            for (const MetaValue& v : node.values)
                if (const Posting* p = find_equal(it->second, v)) out.insert(out.end(), p->list()->begin(), p->list()->end());
        } else {
            return false;
        }
        std::sort(out.begin(), out.end());
        out.erase(std::unique(out.begin(), out.end()), out.end());
        return true;
    }

   private:
    void trim(std::uint64_t* b) const {
        if (n_ % 64) b[nw_ - 1] &= (std::uint64_t{1} << (n_ % 64)) - 1;
    }
    void invert(std::uint64_t* b) const {
        for (std::size_t i = 0; i < nw_; ++i) b[i] = ~b[i];
        trim(b);
    }

    // dst &= the child's answer; a posting is read in place.
    void and_with(const FilterNode& child, std::uint64_t* dst) const {
        const Posting* p = nullptr;
        if (sole_posting(child, &p)) {
            if (!p) {
                std::fill(dst, dst + nw_, 0);
            } else if (const auto* pw = p->bitmap()) {
                const std::size_t m = std::min(nw_, pw->size());
                for (std::size_t i = 0; i < m; ++i) dst[i] &= (*pw)[i];
                std::fill(dst + m, dst + nw_, 0);
            } else {
                WordsLease tmp(pool_, nw_, true);
                set_bits(tmp.data(), p->list()->data(), p->list()->size());
                for (std::size_t i = 0; i < nw_; ++i) dst[i] &= tmp.v[i];
                clear_bits(tmp.data(), p->list()->data(), p->list()->size());
                tmp.zero_after = true;
            }
            return;
        }
        WordsLease tmp(pool_, nw_, false);
        eval(child, tmp.data());
        for (std::size_t i = 0; i < nw_; ++i) dst[i] &= tmp.v[i];
    }

    // dst |= the child's answer; conditions that only add rows write straight into dst.
    void or_with(const FilterNode& child, std::uint64_t* dst) const {
        switch (child.op) {
            case FilterOp::Eq:
            case FilterOp::In:
            case FilterOp::Contains:
            case FilterOp::Gt:
            case FilterOp::Gte:
            case FilterOp::Lt:
            case FilterOp::Lte:
            case FilterOp::IdIn: or_leaf(child, dst); return;
            default: break;
        }
        WordsLease tmp(pool_, nw_, false);
        eval(child, tmp.data());
        for (std::size_t i = 0; i < nw_; ++i) dst[i] |= tmp.v[i];
    }

    // Sets the rows of a condition that only adds rows ($eq, $in, $contains, orderings, $id).
    void or_leaf(const FilterNode& node, std::uint64_t* dst) const {
        if (node.op == FilterOp::IdIn || node.op == FilterOp::IdNin) {
            for (const MetaValue& v : node.values) {
                const std::size_t s = slot_of_(std::get<std::string>(v));
                if (s < n_) dst[s / 64] |= std::uint64_t{1} << (s % 64);
            }
            return;
        }
        auto it = t_.keys_.find(node.key);
        if (it == t_.keys_.end()) return;
        const KeyIndex& ki = it->second;
        switch (node.op) {
            case FilterOp::Eq:
            case FilterOp::In:
                for (const MetaValue& v : node.values)
                    if (const Posting* p = find_equal(ki, v)) p->or_into(dst, nw_);
                break;
            case FilterOp::Contains:
                if (const Posting* p = find_tag(ki, node.values[0])) p->or_into(dst, nw_);
                break;
            case FilterOp::Gt:
            case FilterOp::Gte:
            case FilterOp::Lt:
            case FilterOp::Lte: add_range(ki, node, dst); break;
            default: break;
        }
    }

    // $ne / $nin into a zeroed dst: rows holding the key, less the equal ones.
    void not_equal(const FilterNode& node, std::uint64_t* dst) const {
        auto it = t_.keys_.find(node.key);
        if (it == t_.keys_.end()) return;
        const KeyIndex& ki = it->second;
        for (const MetaValue& v : node.values)
            if (const Posting* p = find_equal(ki, v)) p->or_into(dst, nw_);
        if (const auto* aw = ki.all.bitmap()) {
            const std::size_t m = std::min(nw_, aw->size());
            for (std::size_t i = 0; i < m; ++i) dst[i] = (*aw)[i] & ~dst[i];
            std::fill(dst + m, dst + nw_, 0);
            return;
        }
        const std::vector<std::uint32_t>& all = *ki.all.list();
        WordsLease tmp(pool_, nw_, true);
        set_bits(tmp.data(), all.data(), all.size());
        for (std::size_t i = 0; i < nw_; ++i) dst[i] = tmp.v[i] & ~dst[i];
        clear_bits(tmp.data(), all.data(), all.size());
        tmp.zero_after = true;
    }

    static const Posting* find_tag(const KeyIndex& ki, const MetaValue& v) {
        auto p = ki.tags.find(std::get<std::string>(v));
        return p == ki.tags.end() ? nullptr : &p->second;
    }

    static const Posting* find_equal(const KeyIndex& ki, const MetaValue& v) {
        switch (meta_type(v)) {
            case MetaType::Str: {
                auto it = ki.strs.find(std::get<std::string>(v));
                return it == ki.strs.end() ? nullptr : &it->second;
            }
            case MetaType::Int:
            case MetaType::Float: {
                auto it = ki.nums.find(num_of(v));
                return it == ki.nums.end() ? nullptr : &it->second;
            }
            case MetaType::Bool: {
                auto it = ki.bools.find(std::get<bool>(v));
                return it == ki.bools.end() ? nullptr : &it->second;
            }
            case MetaType::Tags: break;
        }
        return nullptr;
    }

    template <typename Map, typename Key>
    void walk(const Map& map, FilterOp op, const Key& x, std::uint64_t* dst) const {
        auto first = map.begin(), last = map.end();
        if (op == FilterOp::Gt) first = map.upper_bound(x);
        if (op == FilterOp::Gte) first = map.lower_bound(x);
        if (op == FilterOp::Lt) last = map.lower_bound(x);
        if (op == FilterOp::Lte) last = map.upper_bound(x);
        for (auto it = first; it != last; ++it) it->second.or_into(dst, nw_);
    }

    void add_range(const KeyIndex& ki, const FilterNode& node, std::uint64_t* dst) const {
        const MetaValue& v = node.values[0];
        if (meta_type(v) == MetaType::Str) {
            if (!ki.nums.empty())
                throw InvalidArgumentError(node.path + ": cannot order a str against the numbers stored under '" +
                                           node.key + "'");
            walk(ki.strs, node.op, std::get<std::string>(v), dst);
        } else {
            if (!ki.strs.empty())
                throw InvalidArgumentError(node.path + ": cannot order a number against the str values stored under '" +
                                           node.key + "'");
            walk(ki.nums, node.op, num_of(v), dst);
        }
    }

    const MetadataTable& t_;
    Selection::Pool& pool_;
    const std::function<std::size_t(const std::string&)>& slot_of_;
    std::size_t n_, nw_;
};

Selection MetadataTable::select(const Filter& filter,
                                const std::function<std::size_t(const std::string&)>& slot_of, bool bits) const {
    Selection r;
    r.pool_ = pool_.get();
    const Evaluator ev(*this, slot_of);
    const std::size_t n = n_, nw = ev.words();
    const std::size_t sparse = n / SlotFilter::kSparseListRatio;  // at most this many: slots listed
    const FilterNode& root = filter.root();

    // One posting: its count, its bitmap in place and its cached sorted slots.
    if (const Posting* p = nullptr; ev.sole_posting(root, &p)) {
        r.count = p ? p->count() : 0;
        if (!bits) return r;
        if (p && r.count <= sparse) r.slots = p->sorted(pool_->sort).data();
        const std::vector<std::uint64_t>* pw = p ? p->bitmap() : nullptr;
        if (pw && pw->size() >= nw) {
            r.bits = pw->data();
        } else if (pw) {
            r.words_ = pool_->take_words(nw, false);
            std::memcpy(r.words_.data(), pw->data(), pw->size() * sizeof(std::uint64_t));
            std::fill(r.words_.begin() + static_cast<std::ptrdiff_t>(pw->size()), r.words_.end(), 0);
            r.bits = r.words_.data();
        } else {
            r.words_ = pool_->take_words(nw, true);
            r.words_zero_ = true;
            if (p) {
                r.clear_ = p->list()->data();
                r.clear_n_ = p->list()->size();
                set_bits(r.words_.data(), r.clear_, r.clear_n_);
            }
            r.bits = r.words_.data();
        }
        return r;
    }

    // A few listed slots ($in over list postings, $id): the bits set in a zeroed buffer.
    r.slot_buf_ = pool_->take_slots();
    r.slot_buf_.clear();
    if (ev.few_slots(root, r.slot_buf_) && r.slot_buf_.size() <= sparse) {
        r.count = r.slot_buf_.size();
        if (!bits) return r;
        r.slots = r.slot_buf_.data();
        r.words_ = pool_->take_words(nw, true);
        r.words_zero_ = true;
        r.clear_ = r.slots;
        r.clear_n_ = r.count;
        set_bits(r.words_.data(), r.clear_, r.clear_n_);
        r.bits = r.words_.data();
        return r;
    }

    // Anything else: evaluated into a leased buffer, counted, listed when sparse.
    r.words_ = pool_->take_words(nw, false);
    ev.eval(root, r.words_.data());
    r.count = kPopcntBmi ? popcount_fast(r.words_.data(), nw) : popcount_body(r.words_.data(), nw);
    r.bits = r.words_.data();
    if (bits && r.count <= sparse) {
        r.slot_buf_.resize(r.count);
        if (r.count) list_slots(r.words_.data(), nw, r.count, r.slot_buf_.data());
        r.slots = r.slot_buf_.data();
    }
    if (!bits) r.bits = nullptr;
    return r;
}

SlotBits MetadataTable::evaluate(const Filter& filter,
                                 const std::function<std::size_t(const std::string&)>& slot_of) const {
    const Selection sel = select(filter, slot_of, true);
    SlotBits r;
    r.words.assign(sel.bits, sel.bits + (n_ + 63) / 64);
    r.count = sel.count;
    if (sel.slots) r.slots.assign(sel.slots, sel.slots + sel.count);
    return r;
}

// ---- Validation ---------------------------------------------------------------------------

void check_metadata(const Metadata& md) {
    for (const auto& [key, value] : md) {
        if (!valid_utf8(key)) throw InvalidArgumentError("a metadata key is not valid UTF-8");
        const std::string where = "metadata '" + key + "': ";
        switch (meta_type(value)) {
            case MetaType::Str:
                if (!valid_utf8(std::get<std::string>(value))) throw InvalidArgumentError(where + "the value is not valid UTF-8");
                break;
            case MetaType::Float:
                if (std::isnan(std::get<double>(value))) throw InvalidArgumentError(where + "NaN cannot be stored (it equals nothing)");
                break;
            case MetaType::Tags:
                for (const auto& t : std::get<MetaTags>(value))
                    if (!valid_utf8(t)) throw InvalidArgumentError(where + "a tag is not valid UTF-8");
                break;
            default: break;
        }
    }
}

}  // namespace hive_gpu::detail

namespace hive_gpu {
const char* meta_type_name(MetaType t) {
    switch (t) {
        case MetaType::Str: return "str";
        case MetaType::Int: return "int";
        case MetaType::Float: return "float";
        case MetaType::Bool: return "bool";
        case MetaType::Tags: return "list of str";
    }
    return "?";
}
}  // namespace hive_gpu
