// Single queries: one kernel makes one pass over every page of rows (a device page table),
// each block keeping its k best in shared memory; the last block (or a merge kernel) merges.
#include "cuda/cuda_engine.hpp"

#include <algorithm>

#include "core/numeric.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/launch.hpp"
#include "kernels/elements.cuh"
#include "kernels/scan.cuh"
#include "kernels/select.cuh"

namespace hive_gpu::cuda {

namespace k = hive_gpu::kernels;

template <typename F>
void CudaEngine::with_scan_kernel(bool short_rounds, bool filtered, F&& f) const {
    with_metric(metric_, [&](auto m) {
        with_dtype(dtype_, [&](auto d) {
            with_vpl(row_bytes_ / 16, k::warp_size(ctx_->props()), [&](auto v) {
                constexpr int M = decltype(m)::value, D = decltype(d)::value, V = decltype(v)::value;
                if (short_rounds)
                    filtered ? f(k::scan_query_kernel<M, V, k::kWarpRowsSmall, true, D>)
                             : f(k::scan_query_kernel<M, V, k::kWarpRowsSmall, false, D>);
                else
                    filtered ? f(k::scan_query_kernel<M, V, k::kWarpSize, true, D>)
                             : f(k::scan_query_kernel<M, V, k::kWarpSize, false, D>);
            });
        });
    });
}

CudaEngine::Plan CudaEngine::plan(std::size_t nq, std::size_t kk, const RowView& v) const {
    const std::size_t n = v.n;
    Plan p;
    const std::size_t optin = k::max_block_shared_bytes(ctx_->props());
    if (kk > static_cast<std::size_t>(max_select_k_)) {
        p.path = Path::Sorted;
        return p;
    }
    p.cap = next_pow2(kk + k::kScanBlock);
    p.shared = k::topk_shared_bytes(p.cap) + ld_ * sizeof(float);
    if (nq != 1 || p.shared > optin) {
        p.path = Path::Gemm;
        return p;
    }
    p.path = Path::Fused;
    // A store too small to give every SM a block of full-warp rounds takes short rounds.
    const std::size_t sms = static_cast<std::size_t>(ctx_->props().multiProcessorCount);
    p.short_rounds = n < static_cast<std::size_t>(k::kScanBlock) * sms;
    const std::size_t per_round = p.short_rounds
                                      ? k::kScanBlock / k::warp_size(ctx_->props()) * k::kWarpRowsSmall
                                      : static_cast<std::size_t>(k::kScanBlock);
    p.filtered = v.mask != nullptr || v.list != nullptr;
    const int slot = (31 - __builtin_clz(static_cast<unsigned>(p.cap))) + (p.short_rounds ? 32 : 0) + (p.filtered ? 64 : 0);
    int per_sm = 0;
    with_scan_kernel(p.short_rounds, p.filtered, [&](auto kernel) {
        per_sm = blocks_per_sm(scan_blocks_per_sm_[slot], kernel, k::kScanBlock, p.shared);
    });
    // Enough blocks to fill the chip, but not so many that merging their k-lists costs
    // more than the scan (large k).
    p.blocks = std::min<std::size_t>({static_cast<std::size_t>(per_sm) * sms, ceil_div(n, per_round),
                                      std::max<std::size_t>(1, n / (8 * kk))});
    p.blocks = std::max<std::size_t>(p.blocks, 1);
    p.workspace = p.blocks * kk * (sizeof(std::uint64_t) + sizeof(std::uint32_t));
    return p;
}

void CudaEngine::search_fused(Lane& lane, const Plan& pl, const RowView& v, const float* dq, std::size_t kk, void* work,
                              float* dscores, std::int64_t* dslots, bool one_launch) const {
    cudaStream_t s = lane.stream;
    auto* ckeys = static_cast<std::uint64_t*>(work);
    auto* cvals = reinterpret_cast<std::uint32_t*>(ckeys + pl.blocks * kk);
    with_scan_kernel(pl.short_rounds, pl.filtered, [&](auto kernel) {
        allow_shared(kernel, pl.shared);
        kernel<<<static_cast<unsigned>(pl.blocks), k::kScanBlock, pl.shared, s>>>(
            v.rows, v.n, v.list, v.mask, reinterpret_cast<const float4*>(dq), static_cast<int>(kk), pl.cap, ckeys,
            cvals, one_launch ? lane.done : nullptr, dscores, dslots);
        check_launch("scan_query_kernel");
    });
    if (one_launch) return;
    with_metric(metric_, [&](auto m) {
        // Short candidate lists (small stores) merge one item per thread per round: a
        // smaller shared array, so a cheaper sort, where latency is what counts.
        constexpr bool kHigher = k::MetricTraits<decltype(m)::value>::kHigherFirst;
        const bool short_list = pl.blocks * kk <= 4 * static_cast<std::size_t>(k::kSelectBlock);
        const int items = short_list ? 1 : k::kSelectItems;
        const int mcap = next_pow2(kk + k::kSelectBlock * items);
        const std::size_t mshared = k::topk_shared_bytes(mcap);
        auto merge = short_list ? k::merge_lists_kernel<kHigher, 1> : k::merge_lists_kernel<kHigher, k::kSelectItems>;
        allow_shared(merge, mshared);
        merge<<<1, k::kSelectBlock, mshared, s>>>(ckeys, cvals, pl.blocks * kk, static_cast<int>(kk), mcap, nullptr,
                                                  nullptr, nullptr, nullptr, dscores, dslots);
        check_launch("merge_lists_kernel");
    });
}

}  // namespace hive_gpu::cuda
