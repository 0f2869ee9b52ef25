// Host-side top-k selection by (score, ordinal): the order every backend must produce.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "hive_gpu/types.hpp"

namespace hive_gpu {

struct Candidate {
    float score;
    std::uint32_t ordinal;
    std::int64_t slot;
};

// a ranks before b: better score first, then the older vector (smaller ordinal).
template <bool kHigherFirst>
inline bool ranks_before(const Candidate& a, const Candidate& b) {
    if (a.score != b.score) return kHigherFirst ? a.score > b.score : a.score < b.score;
    return a.ordinal < b.ordinal;
}

// Keeps the k best candidates seen, in a heap whose root is the worst kept one, so a new
// candidate costs one comparison unless it enters.
template <bool kHigherFirst>
class TopK {
   public:
    explicit TopK(std::size_t k) : k_(k) { heap_.reserve(k); }

    void push(float score, std::uint32_t ordinal, std::int64_t slot) {
        Candidate c{score, ordinal, slot};
        if (heap_.size() < k_) {
            heap_.push_back(c);
            std::push_heap(heap_.begin(), heap_.end(), ranks_before<kHigherFirst>);
        } else if (ranks_before<kHigherFirst>(c, heap_.front())) {
            std::pop_heap(heap_.begin(), heap_.end(), ranks_before<kHigherFirst>);
            heap_.back() = c;
            std::push_heap(heap_.begin(), heap_.end(), ranks_before<kHigherFirst>);
        }
    }

    // Cheap pre-filter: can `score` possibly enter?
    bool may_enter(float score) const {
        if (heap_.size() < k_) return true;
        const float worst = heap_.front().score;
        return kHigherFirst ? score >= worst : score <= worst;
    }

    std::size_t size() const { return heap_.size(); }
    const std::vector<Candidate>& items() const { return heap_; }

    // Best first into scores/slots (k entries).
    void write_sorted(float* scores, std::int64_t* slots) {
        std::sort_heap(heap_.begin(), heap_.end(), ranks_before<kHigherFirst>);
        for (std::size_t i = 0; i < heap_.size(); ++i) {
            scores[i] = heap_[i].score;
            slots[i] = heap_[i].slot;
        }
    }

   private:
    std::size_t k_;
    std::vector<Candidate> heap_;
};

}  // namespace hive_gpu
