#include "core/metadata_index.hpp"

#include <algorithm>
#include <cmath>
#include <new>
#include <string>
#include <thread>
#include <utility>

#include "core/validate.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/error.hpp"

namespace hive_gpu::detail {

// ---- Posting ------------------------------------------------------------------------------

void Posting::insert(std::uint32_t slot, std::size_t rows) {
    if (bitmap_) {
        const std::size_t w = slot / 64;
        if (w >= words_.size()) words_.resize(std::max(w + 1, (rows + 63) / 64), 0);
        words_[w] |= std::uint64_t{1} << (slot % 64);
        ++count_;
        return;
    }
    list_.push_back(slot);
    ++count_;
    // The bitmap takes rows / 8 bytes, the list 4 bytes a slot.
    if (count_ >= kMinBitmap && rows <= count_ * 32 * kBitmapFactor) {
        try {
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
        words_[slot / 64] &= ~(std::uint64_t{1} << (slot % 64));
        --count_;
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
}

void Posting::relabel(std::uint32_t from, std::uint32_t to) noexcept {
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

MetadataTable::MetadataTable() = default;
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
            posting(e, true)->insert(slot, rows);
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

void MetadataTable::push_back(std::unique_ptr<Metadata> md) {
    rows_.push_back(std::move(md));
    const std::size_t slot = rows_.size() - 1;
    if (!rows_.back()) return;
    try {
        add_entries(static_cast<std::uint32_t>(slot), *rows_.back(), nullptr, rows_.size());
    } catch (...) {
        rows_.pop_back();
        throw;
    }
}

void MetadataTable::set(std::size_t slot, std::unique_ptr<Metadata> md) {
    const Metadata* old = rows_[slot].get();
    const auto s = static_cast<std::uint32_t>(slot);
    if (md) add_entries(s, *md, old, rows_.size());
    if (old) drop_entries(s, *old, md.get(), rows_.size());
    rows_[slot] = std::move(md);
}

void MetadataTable::move(std::size_t src, std::size_t dst) noexcept {
    if (rows_[dst]) drop_entries(static_cast<std::uint32_t>(dst), *rows_[dst], nullptr, rows_.size());
    if (rows_[src])
        for_each_entry(*rows_[src], [&](const Entry& e) {
            if (Posting* p = posting(e, false)) p->relabel(static_cast<std::uint32_t>(src), static_cast<std::uint32_t>(dst));
        });
    rows_[dst] = std::move(rows_[src]);
}

void MetadataTable::truncate(std::size_t n) noexcept {
    for (std::size_t s = n; s < rows_.size(); ++s)
        if (rows_[s]) drop_entries(static_cast<std::uint32_t>(s), *rows_[s], nullptr, rows_.size());
    rows_.resize(n);
}

void MetadataTable::clear() noexcept {
    rows_.clear();
    keys_.clear();
}

// ---- Evaluation ---------------------------------------------------------------------------

class MetadataTable::Evaluator {
   public:
    using Bits = std::vector<std::uint64_t>;
    Evaluator(const MetadataTable& t, const std::function<std::size_t(const std::string&)>& slot_of)
        : t_(t), slot_of_(slot_of), n_(t.size()), nw_((n_ + 63) / 64) {}

    Bits eval(const FilterNode& node) const {
        switch (node.op) {
            case FilterOp::All: return ones();
            case FilterOp::And: {
                Bits acc = eval(node.children[0]);
                for (std::size_t c = 1; c < node.children.size(); ++c) {
                    const Bits b = eval(node.children[c]);
                    for (std::size_t i = 0; i < nw_; ++i) acc[i] &= b[i];
                }
                return acc;
            }
            case FilterOp::Or: {
                Bits acc = eval(node.children[0]);
                for (std::size_t c = 1; c < node.children.size(); ++c) {
                    const Bits b = eval(node.children[c]);
                    for (std::size_t i = 0; i < nw_; ++i) acc[i] |= b[i];
                }
                return acc;
            }
            case FilterOp::Not: {
                Bits b = eval(node.children[0]);
                for (auto& w : b) w = ~w;
                trim(b);
                return b;
            }
            case FilterOp::IdIn:
            case FilterOp::IdNin: {
                Bits b = zeros();
                for (const MetaValue& v : node.values) {
                    const std::size_t s = slot_of_(std::get<std::string>(v));
                    if (s < n_) b[s / 64] |= std::uint64_t{1} << (s % 64);
                }
                if (node.op == FilterOp::IdNin) {
                    for (auto& w : b) w = ~w;
                    trim(b);
                }
                return b;
            }
            case FilterOp::Eq:
            case FilterOp::Contains: {
                const Posting* p = sole_posting(node);
                return p ? bits_of(*p) : zeros();
            }
            default: break;
        }
        Bits b = zeros();
        auto it = t_.keys_.find(node.key);
        if (it == t_.keys_.end()) return b;
        const KeyIndex& ki = it->second;
        switch (node.op) {
            case FilterOp::Eq: add_equal(ki, node.values[0], b); break;
            case FilterOp::In:
                for (const MetaValue& v : node.values) add_equal(ki, v, b);
                break;
            case FilterOp::Ne:
            case FilterOp::Nin: {
                for (const MetaValue& v : node.values) add_equal(ki, v, b);
                // Rows holding the key, less the equal ones.
                Bits all = zeros();
                ki.all.or_into(all.data(), nw_);
                for (std::size_t i = 0; i < nw_; ++i) b[i] = all[i] & ~b[i];
                break;
            }
            case FilterOp::Contains:
                if (const Posting* p = find_tag(ki, node.values[0])) p->or_into(b.data(), nw_);
                break;
            case FilterOp::Gt:
            case FilterOp::Gte:
            case FilterOp::Lt:
            case FilterOp::Lte: add_range(ki, node, b); break;
            default: break;
        }
        return b;
    }

    // A condition answered by a few list postings ($eq, $in, $contains, $id $in): its slots,
    // ascending, without touching n / 64 words twice (count them, then list them).
    bool few_slots(const FilterNode& node, std::vector<std::uint32_t>& out) const {
        if (node.op == FilterOp::IdIn) {
            for (const MetaValue& v : node.values) {
                const std::size_t s = slot_of_(std::get<std::string>(v));
                if (s < n_) out.push_back(static_cast<std::uint32_t>(s));
            }
        } else if (node.op == FilterOp::Eq || node.op == FilterOp::In || node.op == FilterOp::Contains) {
            auto it = t_.keys_.find(node.key);
            if (it == t_.keys_.end()) return true;
            for (const MetaValue& v : node.values) {
                const Posting* p = node.op == FilterOp::Contains ? find_tag(it->second, v) : find_equal(it->second, v);
                if (!p) continue;
                const std::vector<std::uint32_t>* list = p->list();
                if (!list) return false;
                out.insert(out.end(), list->begin(), list->end());
            }
        } else {
            return false;
        }
        std::sort(out.begin(), out.end());
        out.erase(std::unique(out.begin(), out.end()), out.end());
        return true;
    }

    // The one posting that answers an $eq, a $contains or an $in of one value; null when
    // the node is another condition or no row matches.
    const Posting* sole_posting(const FilterNode& node) const {
        const bool one = node.op == FilterOp::Eq || node.op == FilterOp::Contains ||
                         (node.op == FilterOp::In && node.values.size() == 1);
        if (!one) return nullptr;
        auto it = t_.keys_.find(node.key);
        if (it == t_.keys_.end()) return nullptr;
        return node.op == FilterOp::Contains ? find_tag(it->second, node.values[0]) : find_equal(it->second, node.values[0]);
    }

    // A posting's bits: a bitmap is copied as it is, without zero-filling a buffer first.
    Bits bits_of(const Posting& p) const {
        const std::vector<std::uint64_t>* pw = p.bitmap();
        if (!pw) {
            Bits b = zeros();
            p.or_into(b.data(), nw_);
            return b;
        }
        const std::size_t m = std::min(nw_, pw->size());
        Bits b;
        b.reserve(nw_);
        b.assign(pw->begin(), pw->begin() + static_cast<std::ptrdiff_t>(m));
        b.resize(nw_, 0);
        return b;
    }

   private:
    Bits zeros() const { return Bits(nw_, 0); }
    Bits ones() const {
        Bits b(nw_, ~std::uint64_t{0});
        trim(b);
        return b;
    }
    void trim(Bits& b) const {
        if (n_ % 64) b[nw_ - 1] &= (std::uint64_t{1} << (n_ % 64)) - 1;
    }

    static const Posting* find_tag(const KeyIndex& ki, const MetaValue& v) {
        auto p = ki.tags.find(std::get<std::string>(v));
        return p == ki.tags.end() ? nullptr : &p->second;
    }

    void add_equal(const KeyIndex& ki, const MetaValue& v, Bits& b) const {
        if (const Posting* p = find_equal(ki, v)) p->or_into(b.data(), nw_);
    }

    static const Posting* find_equal(const KeyIndex& ki, const MetaValue& v) {
        const Posting* p = nullptr;
        switch (meta_type(v)) {
            case MetaType::Str: {
                auto it = ki.strs.find(std::get<std::string>(v));
                if (it != ki.strs.end()) p = &it->second;
                break;
            }
            case MetaType::Int:
            case MetaType::Float: {
                auto it = ki.nums.find(num_of(v));
                if (it != ki.nums.end()) p = &it->second;
                break;
            }
            case MetaType::Bool: {
                auto it = ki.bools.find(std::get<bool>(v));
                if (it != ki.bools.end()) p = &it->second;
                break;
            }
            case MetaType::Tags: break;
        }
        return p;
    }

    template <typename Map, typename Key>
    void walk(const Map& map, FilterOp op, const Key& x, Bits& b) const {
        auto first = map.begin(), last = map.end();
        if (op == FilterOp::Gt) first = map.upper_bound(x);
        if (op == FilterOp::Gte) first = map.lower_bound(x);
        if (op == FilterOp::Lt) last = map.lower_bound(x);
        if (op == FilterOp::Lte) last = map.upper_bound(x);
        for (auto it = first; it != last; ++it) it->second.or_into(b.data(), nw_);
    }

    void add_range(const KeyIndex& ki, const FilterNode& node, Bits& b) const {
        const MetaValue& v = node.values[0];
        if (meta_type(v) == MetaType::Str) {
            if (!ki.nums.empty())
                throw InvalidArgumentError(node.path + ": cannot order a str against the numbers stored under '" +
                                           node.key + "'");
            walk(ki.strs, node.op, std::get<std::string>(v), b);
        } else {
            if (!ki.strs.empty())
                throw InvalidArgumentError(node.path + ": cannot order a number against the str values stored under '" +
                                           node.key + "'");
            walk(ki.nums, node.op, num_of(v), b);
        }
    }

    const MetadataTable& t_;
    const std::function<std::size_t(const std::string&)>& slot_of_;
    std::size_t n_, nw_;
};

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

SlotBits MetadataTable::evaluate(const Filter& filter,
                                 const std::function<std::size_t(const std::string&)>& slot_of) const {
    SlotBits r;
    const std::size_t n = size();
    const Evaluator ev(*this, slot_of);
    if (ev.few_slots(filter.root(), r.slots) && r.slots.size() <= n / SlotFilter::kSparseListRatio) {
        r.count = r.slots.size();
        r.words.assign((n + 63) / 64, 0);
        for (std::uint32_t s : r.slots) r.words[s / 64] |= std::uint64_t{1} << (s % 64);
        return r;
    }
    r.slots.clear();
    if (const Posting* p = ev.sole_posting(filter.root()); p && p->bitmap()) {
        // One bitmap posting: its words and its maintained count, no popcount pass.
        r.words = ev.bits_of(*p);
        r.count = p->count();
    } else {
        r.words = ev.eval(filter.root());
        for (auto w : r.words) r.count += static_cast<std::size_t>(__builtin_popcountll(w));
    }
    if (r.count <= n / SlotFilter::kSparseListRatio) {
        r.slots.resize(r.count);
        list_slots(r.words.data(), r.words.size(), r.count, r.slots.data());
    }
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
