// Top-k selection inside one thread block, and the kernels that merge candidate lists.
// Keys are 64-bit (see keys.cuh), smaller is better, so selection is one integer order.
#pragma once

#include "kernels/compat.cuh"
#include "kernels/keys.cuh"

namespace hive_gpu::kernels {

// Ascending bitonic sort of n (a power of two) key/value pairs in shared memory.
__device__ inline void bitonic_sort(std::uint64_t* keys, std::uint32_t* vals, int n) {
    for (int size = 2; size <= n; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
                const int lo = 2 * i - (i & (stride - 1));
                const int hi = lo + stride;
                const bool up = (lo & size) == 0;
                const std::uint64_t a = keys[lo], b = keys[hi];
                if ((a > b) == up) {
                    keys[lo] = b;
                    keys[hi] = a;
                    const std::uint32_t t = vals[lo];
                    vals[lo] = vals[hi];
                    vals[hi] = t;
                }
            }
            __syncthreads();
        }
    }
}

// The k best keys a block has seen. After each merge they sit sorted at the front of a
// shared array of `cap` entries; new candidates that beat the current k-th best are
// appended behind them, and a merge (one sort) runs when the next round might not fit.
// Every member is called by all threads of the block.
struct BlockTopK {
    std::uint64_t* keys;
    std::uint32_t* vals;
    int cap;  // power of two >= k + blockDim.x * items per round
    int k;
    int* count;
    std::uint64_t* bound;
    std::uint64_t limit = kEmptyKey;  // keys from here on are never kept (init's `below`)

    // seed: k sorted keys to start from (may hold kEmptyKey), or nullptr. below: only keys
    // under it are kept (a k-th best known from elsewhere).
    __device__ void init(const std::uint64_t* seed_keys, const std::uint32_t* seed_vals,
                         std::uint64_t below = kEmptyKey) {
        limit = below;
        for (int i = threadIdx.x; i < cap; i += blockDim.x) {
            const bool seeded = seed_keys != nullptr && i < k;
            keys[i] = seeded ? seed_keys[i] : kEmptyKey;
            vals[i] = seeded ? seed_vals[i] : 0u;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            *count = seed_keys != nullptr ? k : 0;
            *bound = seed_keys != nullptr ? keys[k - 1] : below;
        }
        __syncthreads();
    }

    // The key a candidate must beat; it changes only in merge(), so within a round it holds.
    __device__ std::uint64_t threshold() const { return *bound; }

    __device__ void push(std::uint64_t key, std::uint32_t val) {
        if (key < *bound) {
            const int p = atomicAdd(count, 1);
            keys[p] = key;
            vals[p] = val;
        }
    }

    // Ends a round in which each thread pushed at most `per_thread` keys. Every thread reads
    // the count before any thread can push again: the merge decision is the block's, never
    // a divergent one (a thread already in the next round would change the count).
    __device__ void end_round(int per_thread) {
        __syncthreads();
        const int filled = *count;
        __syncthreads();
        if (filled + static_cast<int>(blockDim.x) * per_thread > cap) merge();
    }

    __device__ void merge() {
        // Entries from *count on are empty (the largest key), so sorting the filled prefix
        // rounded up to a power of two sorts the whole array.
        const int filled = *count;
        int width = 2;
        while (width < filled) width <<= 1;
        bitonic_sort(keys, vals, min(width, cap));
        const int kept = min(filled, k);
        for (int i = kept + threadIdx.x; i < filled; i += blockDim.x) keys[i] = kEmptyKey;
        __syncthreads();
        if (threadIdx.x == 0) {
            *count = kept;
            *bound = kept == k ? keys[k - 1] : limit;
        }
        __syncthreads();
    }

    __device__ void store(std::uint64_t* out_keys, std::uint32_t* out_vals) const {
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            out_keys[i] = keys[i];
            out_vals[i] = vals[i];
        }
    }
};

constexpr int kSelectBlock = 256;
constexpr int kSelectItems = 4;  // keys each thread loads per round: several loads in flight

// Shared bytes of a BlockTopK with `cap` entries.
constexpr std::size_t topk_shared_bytes(int cap) {
    return static_cast<std::size_t>(cap) * (sizeof(std::uint64_t) + sizeof(std::uint32_t));
}

// Merges, per query (blockIdx.x), `per_query` candidate keys plus an optional seed of k
// sorted keys into the k best. Writes them as keys (out_keys/out_vals, may alias the seed)
// or, when out_scores is set, as final scores and slots.
template <bool kHigherFirst, int kItems = kSelectItems>
__global__ void __launch_bounds__(kSelectBlock) merge_lists_kernel(
    const std::uint64_t* __restrict__ in_keys, const std::uint32_t* __restrict__ in_vals,
    std::size_t per_query, int k, int cap, const std::uint64_t* seed_keys,
    const std::uint32_t* seed_vals, std::uint64_t* out_keys, std::uint32_t* out_vals,
    float* out_scores, std::int64_t* out_slots) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int count;
    __shared__ std::uint64_t bound;
    const std::size_t q = blockIdx.x;
    BlockTopK top{reinterpret_cast<std::uint64_t*>(smem),
                  reinterpret_cast<std::uint32_t*>(smem + cap * sizeof(std::uint64_t)), cap, k,
                  &count, &bound};
    const std::uint64_t* keys = in_keys + q * per_query;
    const std::uint32_t* vals = in_vals + q * per_query;
    // The inputs are sorted k-lists: without a seed the first list is one, and its k-th
    // key bounds what can still enter from the start.
    const bool first_as_seed = seed_keys == nullptr && per_query >= static_cast<std::size_t>(k);
    if (first_as_seed) {
        top.init(keys, vals);
        keys += k;
        vals += k;
        per_query -= k;
    } else {
        top.init(seed_keys ? seed_keys + q * k : nullptr, seed_vals ? seed_vals + q * k : nullptr);
    }
    const std::size_t step = static_cast<std::size_t>(blockDim.x) * kItems;
    for (std::size_t base = 0; base < per_query; base += step) {
        std::uint64_t kk[kItems];
#pragma unroll
        for (int j = 0; j < kItems; ++j) {
            const std::size_t i = base + j * blockDim.x + threadIdx.x;
            kk[j] = i < per_query ? keys[i] : kEmptyKey;
        }
#pragma unroll
        for (int j = 0; j < kItems; ++j) {
            const std::size_t i = base + j * blockDim.x + threadIdx.x;
            if (kk[j] < *top.bound) top.push(kk[j], vals[i]);
        }
        top.end_round(kItems);
    }
    top.merge();
    if (out_scores != nullptr) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            out_scores[q * k + i] = key_score<kHigherFirst>(top.keys[i]);
            out_slots[q * k + i] = static_cast<std::int64_t>(top.vals[i]);
        }
    } else {
        top.store(out_keys + q * k, out_vals + q * k);
    }
}

// count sorted keys -> final (score, slot) pairs.
template <bool kHigherFirst>
__global__ void finalize_kernel(const std::uint64_t* __restrict__ keys,
                                const std::uint32_t* __restrict__ vals, std::size_t count,
                                float* __restrict__ scores, std::int64_t* __restrict__ slots) {
    for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
        scores[i] = key_score<kHigherFirst>(keys[i]);
        slots[i] = static_cast<std::int64_t>(vals[i]);
    }
}

}  // namespace hive_gpu::kernels
