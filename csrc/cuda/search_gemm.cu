// Batches: cuBLAS GEMM tiles (a tile may span pages: one GEMM per page part) with device
// top-k selection on a second stream; the TF32 or 16-bit screen with its exact float32 re-rank
// (kernels/rerank.cuh); the skinny product for a few queries; the full sort for k beyond shared memory.
#include "cuda/cuda_engine.hpp"

#include <algorithm>
#include <vector>

#include "core/numeric.hpp"
#include "cuda/cuda_check.hpp"
#include "cuda/launch.hpp"
#include "cuda/tile_plan.hpp"
#include "kernels/convert.cuh"
#include "kernels/rerank.cuh"
#include "kernels/scan.cuh"
#include "kernels/select.cuh"
#include "kernels/sort.cuh"
#include "kernels/tile_select.cuh"

namespace hive_gpu::cuda {

namespace k = hive_gpu::kernels;

namespace {

constexpr std::size_t kTileBudgetFloats = std::size_t{64} << 20;  // both GEMM score tiles: 256 MiB at least
constexpr std::size_t kSkinnyMaxQueries = 4;  // beyond, cuBLAS measured faster on the H100
constexpr std::size_t kScreenMaxK = 256;      // beyond, near-ties around the k-th make re-runs likely
constexpr std::size_t kMinSplitTile = 65536;  // rows: below, one tile
constexpr std::size_t kWidenBytes = std::size_t{64} << 20;  // 16-bit rows widened at a time for an exact GEMM
constexpr std::size_t kFilterMinTile = 4096;  // columns: below, every tile goes through select_tile_kernel
constexpr std::size_t kRampQueries = 128;     // batches from this size take wider score tiles
constexpr std::size_t kFirstTile = 1024;      // columns: a batch's first tile at least (unless it is the only one)

// out (cols x nq, column-major, ldc) = rows^T (cols x dim, stride ld) * Q (dim x nq, stride ld).
void sgemm(Lane& lane, const float* rows, const float* dq, std::size_t nq, std::size_t cols, std::size_t dim,
           std::size_t ld, float* out, std::size_t ldc) {
    const float one = 1.0f, zero = 0.0f;
    cublasStatus_t st = cublasSgemm(lane.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(nq),
                                    static_cast<int>(dim), &one, rows, static_cast<int>(ld), dq, static_cast<int>(ld),
                                    &zero, out, static_cast<int>(ldc));
    if (st != CUBLAS_STATUS_SUCCESS)
        throw BackendError(HIVE_GPU_BACKEND_NAME ": cublasSgemm failed with status " + std::to_string(static_cast<int>(st)));
}

}  // namespace

namespace {

// A re-rank's scratch: kc candidate keys and slots per query, the largest row factor and the
// per-query proof flags, carved from one allocation (offsets from Carve).
struct Candidates {
    std::size_t at;  // where they start
    std::size_t nkc;
    Candidates(Carve& c, std::size_t nq, std::size_t kc)
        : at(c.take(nq * kc * (sizeof(std::uint64_t) + sizeof(std::uint32_t)) + sizeof(unsigned) + nq)),
          nkc(nq * kc) {}
    std::uint64_t* keys(unsigned char* base) const { return reinterpret_cast<std::uint64_t*>(base + at); }
    std::uint32_t* vals(unsigned char* base) const { return reinterpret_cast<std::uint32_t*>(keys(base) + nkc); }
    unsigned* max_bits(unsigned char* base) const { return reinterpret_cast<unsigned*>(vals(base) + nkc); }
    unsigned char* ok(unsigned char* base) const { return reinterpret_cast<unsigned char*>(max_bits(base) + 1); }
};

}  // namespace

void CudaEngine::set_math(Lane& lane, bool tf32) const {
    lane.ensure_blas();
    if (tf32 == lane.blas_tf32) return;
    if (cublasSetMathMode(lane.blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS)
        throw BackendError(HIVE_GPU_BACKEND_NAME ": cublasSetMathMode failed");
    lane.blas_tf32 = tf32;
}

void CudaEngine::gemm_scores(Lane& lane, const void* rows, const float* dq, std::size_t nq, std::size_t cols,
                             float* out, std::size_t ldc, bool screen, const ScreenQueries& sq) const {
    // Column-major view: out (cols x nq, ld ldc) = rows^T (cols x dim) * Q (dim x nq).
    if (dtype_ == Dtype::Float32) {
        set_math(lane, screen);
        sgemm(lane, static_cast<const float*>(rows), dq, nq, cols, dim_, ld_, out, ldc);
        return;
    }
    if (screen) {
        // The stored 16-bit rows as they are, against the rounded, scaled queries.
#if defined(HIVE_GPU_HIP)
        (void)sq;  // tensor_cores_ is false on HIP: no screen is planned
        throw BackendError(HIVE_GPU_BACKEND_NAME ": no 16-bit tensor-core screen in this build");
#else
        lane.ensure_blas();
        const float one = 1.0f, zero = 0.0f;
        const cudaDataType t = dtype_ == Dtype::Float16 ? CUDA_R_16F : CUDA_R_16BF;
        cublasStatus_t st = cublasGemmEx(lane.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(cols),
                                         static_cast<int>(nq), static_cast<int>(dim_), &one, rows, t,
                                         static_cast<int>(ld_), sq.queries, t, static_cast<int>(ld_), &zero, out,
                                         CUDA_R_32F, static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS)
            throw BackendError(HIVE_GPU_BACKEND_NAME ": cublasGemmEx failed with status " +
                               std::to_string(static_cast<int>(st)));
        return;
#endif
    }
    // Exact scores of 16-bit rows: widened to float32 a slice at a time, then SGEMM.
    set_math(lane, false);
    const std::size_t slice = std::max<std::size_t>(1, kWidenBytes / (ld_ * sizeof(float)));
    Scratch wide(*ctx_, std::min(cols, slice) * ld_ * sizeof(float), lane.stream);
    const auto* bits = static_cast<const std::uint16_t*>(rows);
    for (std::size_t c = 0; c < cols; c += slice) {
        const std::size_t w = std::min(slice, cols - c);
        with_dtype(dtype_, [&](auto d) {
            constexpr int D = decltype(d)::value;
            if constexpr (D != k::kF32)
                k::widen_rows_kernel<D><<<grid_for(w * ld_, 256, ctx_->props()), 256, 0, lane.stream>>>(
                    bits + c * ld_, w * ld_, wide.as<float>());
        });
        check_launch("widen_rows_kernel");
        sgemm(lane, wide.as<float>(), dq, nq, w, dim_, ld_, out + c, ldc);
    }
}

bool CudaEngine::skinny(std::size_t nq) const {
    return dtype_ == Dtype::Float32 && nq <= kSkinnyMaxQueries && kSkinnyMaxQueries * ld_ * sizeof(float) <= 40 * 1024;
}

std::size_t CudaEngine::screen_width(std::size_t nq, std::size_t kk, std::size_t n) const {
    if (!tensor_cores_ || skinny(nq) || kk > kScreenMaxK) return 0;
    // bfloat16 queries are rounded to 8 bits, so its screen's bound is wider: more candidates.
    const std::size_t kc = std::min(n, dtype_ == Dtype::BFloat16 ? 4 * kk + 32 : 2 * kk + 32);
    return kc <= static_cast<std::size_t>(max_select_k_) ? kc : 0;
}

void CudaEngine::search_gemm(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                             std::size_t kk, float* dscores, std::int64_t* dslots) const {
    cudaStream_t s = lane.stream;
    const std::size_t kc = screen_width(nq, kk, v.n);
    if (kc == 0) {
        search_gemm_exact(lane, v, dq, qf, nq, kk, dscores, dslots);
        return;
    }
    // Tensor-core screening, then the exact float32 re-rank (kernels/rerank.cuh).
    const bool half = dtype_ != Dtype::Float32;  // 16-bit rows: a float16/bfloat16 screen
    Carve c;
    const Candidates cand(c, nq, kc);
    const std::size_t at_q16 = c.take(half ? nq * ld_ * sizeof(std::uint16_t) : 0),
                      at_inv = c.take(half ? nq * sizeof(float) : 0), at_sok = c.take(half ? nq : 0);
    Scratch ws(*ctx_, c.at, s);
    auto* base = ws.as<unsigned char>();
    std::uint64_t* rkeys = cand.keys(base);
    std::uint32_t* rvals = cand.vals(base);
    ScreenQueries sq;
    const unsigned char* screen_ok = nullptr;
    if (half) {
        auto* q16 = reinterpret_cast<std::uint16_t*>(base + at_q16);
        auto* inv = reinterpret_cast<float*>(base + at_inv);
        with_dtype(dtype_, [&](auto d) {
            constexpr int D = decltype(d)::value;
            if constexpr (D != k::kF32)
                k::quantize_queries_kernel<D><<<static_cast<unsigned>(nq), 256, 0, s>>>(dq, ld_, q16, inv,
                                                                                      base + at_sok);
        });
        check_launch("quantize_queries_kernel");
        sq = ScreenQueries{q16, inv};
        screen_ok = base + at_sok;
    }
    // Rows a mask drops never become candidates, so the proof below speaks of the rows
    // that pass: the kc candidates are the best kc of those (all of them when fewer).
    select_tiles(lane, v, dq, qf, nq, kc, true, sq, rkeys, rvals);
    rerank(lane, v, dq, qf, nq, kk, kc, rkeys, rvals, cand.max_bits(base),
           k::screen_bound(dim_, static_cast<int>(dtype_)), screen_ok, dscores, dslots, cand.ok(base));
    std::vector<std::size_t> redo;
    for (std::size_t q = 0; q < nq; ++q)
        if (!lane.flags_host[q]) redo.push_back(q);
    if (redo.empty()) return;
    // Queries the screen could not settle (near-ties around the k-th): float32 GEMM again.
    if (redo.size() * 4 > nq) {
        search_gemm_exact(lane, v, dq, qf, nq, kk, dscores, dslots);
        return;
    }
    const std::size_t nr = redo.size();
    Carve r;
    const std::size_t at_q = r.take(nr * ld_ * sizeof(float)), at_qf = r.take(nr * sizeof(float)),
                      at_sc = r.take(nr * kk * sizeof(float)), at_sl = r.take(nr * kk * sizeof(std::int64_t));
    Scratch again(*ctx_, r.at, s);
    auto* rb = again.as<unsigned char>();
    auto* rq = reinterpret_cast<float*>(rb + at_q);
    auto* rqf = reinterpret_cast<float*>(rb + at_qf);
    auto* rsc = reinterpret_cast<float*>(rb + at_sc);
    auto* rsl = reinterpret_cast<std::int64_t*>(rb + at_sl);
    for (std::size_t i = 0; i < nr; ++i) {
        check(cudaMemcpyAsync(rq + i * ld_, dq + redo[i] * ld_, ld_ * sizeof(float), cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
        check(cudaMemcpyAsync(rqf + i, qf + redo[i], sizeof(float), cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
    }
    search_gemm_exact(lane, v, rq, rqf, nr, kk, rsc, rsl);
    for (std::size_t i = 0; i < nr; ++i) {
        check(cudaMemcpyAsync(dscores + redo[i] * kk, rsc + i * kk, kk * sizeof(float), cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
        check(cudaMemcpyAsync(dslots + redo[i] * kk, rsl + i * kk, kk * sizeof(std::int64_t),
                              cudaMemcpyDeviceToDevice, s),
              "cudaMemcpyAsync");
    }
}

void CudaEngine::rerank(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                        std::size_t kk, std::size_t kc, const std::uint64_t* rkeys, const std::uint32_t* rvals,
                        unsigned* max_bits, const k::ScreenBound& bound, const unsigned char* screen_ok, float* dscores,
                        std::int64_t* dslots, unsigned char* ok) const {
    cudaStream_t s = lane.stream;
    const auto& p = ctx_->props();
    check(cudaMemsetAsync(max_bits, 0, sizeof(unsigned), s), "cudaMemsetAsync");
    if (metric_ != Metric::Cosine) {
        v.for_each_page([&](std::size_t, std::size_t count, const k::PageRef& page) {
            k::max_factor_kernel<<<grid_for(count, 256, p), 256, 0, s>>>(page.factors, count, max_bits);
            check_launch("max_factor_kernel");
        });
    }
    const int cap = next_pow2(kc);
    with_metric(metric_, [&](auto m) {
        with_dtype(dtype_, [&](auto d) {
            auto kernel = k::rerank_kernel<decltype(m)::value, decltype(d)::value>;
            allow_shared(kernel, k::topk_shared_bytes(cap));
            kernel<<<static_cast<unsigned>(nq), k::kSelectBlock, k::topk_shared_bytes(cap), s>>>(
                rkeys, rvals, static_cast<int>(kc), static_cast<int>(kk), cap, v.rows,
                reinterpret_cast<const float4*>(dq), qf, max_bits, bound, screen_ok, dscores, dslots, ok);
        });
        check_launch("rerank_kernel");
    });
    check(cudaMemcpyAsync(lane.flags_host, ok, nq, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(s), "search");
}

void CudaEngine::search_gemm_exact(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                                   std::size_t kk, float* dscores, std::int64_t* dslots) const {
    // The float32 GEMM (or skinny product) chooses kc candidates; their final scores are the
    // canonical ones (rerank_kernel), as every path's are, so that a pair scores the same bits
    // in a store of any size (shards then equal one store). GEMM sums in another order than
    // the canonical kernel: the same proof as the TF32 screen's says whether the candidates
    // hold the canonical top k; queries it cannot settle are scored canonically in full.
    cudaStream_t s = lane.stream;
    const std::size_t kc = std::min(v.n, 2 * kk + 32);
    if (kc > static_cast<std::size_t>(max_select_k_)) {
        search_sorted(lane, v, dq, qf, nq, kk, dscores, dslots);
        return;
    }
    Carve c;
    const Candidates cand(c, nq, kc);
    Scratch ws(*ctx_, c.at, s);
    auto* base = ws.as<unsigned char>();
    select_tiles(lane, v, dq, qf, nq, kc, false, ScreenQueries{}, cand.keys(base), cand.vals(base));
    // The float32 bound: rows widened exactly, only the summation order differs.
    rerank(lane, v, dq, qf, nq, kk, kc, cand.keys(base), cand.vals(base), cand.max_bits(base),
           k::screen_bound(dim_, k::kF32), nullptr, dscores, dslots, cand.ok(base));
    if (kc >= v.n) return;  // every row was a candidate: nothing to prove
    for (std::size_t q = 0; q < nq; ++q)
        if (!lane.flags_host[q])
            search_sorted(lane, v, dq + q * ld_, qf + q, 1, kk, dscores + q * kk, dslots + q * kk);
}

void CudaEngine::select_tiles(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                              std::size_t kk, bool screen, const ScreenQueries& sq, std::uint64_t* rkeys,
                              std::uint32_t* rvals) const {
    // GEMM tiles on lane.stream, selection on lane.aux: the selection of tile t runs while
    // tile t + 1 is multiplied. Two score buffers bound the scratch. A tile may span pages:
    // each page's part is multiplied into its columns of the tile, and one selection reads
    // the whole tile. The running top kk (sorted keys) ends in rkeys/rvals, ordered before
    // later work on lane.stream.
    cudaStream_t s = lane.stream, a = lane.aux;
    const auto& p = ctx_->props();
    const std::size_t n = v.n;
    // Many queries: both score tiles take a 128th of the device's memory, between 256 MiB and
    // 1 GiB, as wider tiles mean fewer merges of the running top k. A few queries keep 256 MiB:
    // their tiles are already long, and more of them overlap selection with multiplication.
    const std::size_t budget =
        nq >= kRampQueries
            ? std::clamp<std::size_t>(p.totalGlobalMem / 128 / sizeof(float), kTileBudgetFloats, 4 * kTileBudgetFloats)
            : kTileBudgetFloats;
    std::size_t tile = std::min(n, std::max<std::size_t>(1024, budget / 2 / nq));
    // A few queries over many rows: four tiles at least, so that selecting one overlaps
    // multiplying the next.
    if (tile == n && n >= 4 * kMinSplitTile) tile = ceil_div(ceil_div(n, 4), 256) * 256;
    if (tile < n) tile = std::max<std::size_t>(256, tile / 256 * 256);
    tile = std::min<std::size_t>(tile, static_cast<std::size_t>(1) << 30);  // cuBLAS takes int sizes
    // The block-wide selection's shared top k, and how many of its blocks the device holds.
    const int cap = next_pow2(kk + k::kSelectBlock * k::kSelectItems);
    const std::size_t shared = k::topk_shared_bytes(cap);
    int per_sm = 0;
    with_metric(metric_, [&](auto m) {
        per_sm = blocks_per_sm(select_blocks_per_sm_[31 - __builtin_clz(static_cast<unsigned>(cap))],
                               k::select_tile_kernel<decltype(m)::value>, k::kSelectBlock, shared);
    });
    const std::size_t resident = static_cast<std::size_t>(p.multiProcessorCount) * per_sm;
    // Tile widths and where their scores go (cuda/tile_plan.hpp).
    const std::size_t ldt = (tile + 3) / 4 * 4;  // score rows 16-byte aligned (select reads float4s)
    const TilePlan plan =
        plan_tiles(v.rows.map, n, tile, std::max<std::size_t>(kFirstTile, ceil_div(4 * kk, 256) * 256), ldt);
    const std::vector<std::size_t>& widths = plan.widths;
    const std::size_t tiles = widths.size();
    // Tiles after the first (but narrow ones): streamed through filter_tile_kernel, whose few
    // passing columns merge_passed_kernel merges (tile_select.cuh). The others are selected
    // block-wide, in column ranges per query that fill the blocks the device holds at once,
    // and no more: a second, nearly empty wave would double the time.
    std::vector<char> streamed_tile(tiles);
    std::vector<std::size_t> splits(tiles, 1);
    bool streamed = false;
    std::size_t max_splits = 1;
    for (std::size_t t = 0; t < tiles; ++t) {
        streamed_tile[t] = t > 0 && widths[t] >= kFilterMinTile;
        streamed = streamed || streamed_tile[t];
        if (!streamed_tile[t] && nq < resident)
            splits[t] = std::max<std::size_t>(1, std::min(resident / nq, widths[t] / 8192));
        max_splits = std::max(max_splits, splits[t]);
    }
    // A few queries: the bandwidth-bound skinny product reads the rows once at full speed.
    const bool thin = !screen && skinny(nq);
    const std::size_t entry = sizeof(std::uint64_t) + sizeof(std::uint32_t);
    // A tile that spans pages gets its rows' factors and ordinals copied side by side.
    const bool spans = v.rows.map.pages_for(n) > 1;
    // `room` passing columns per query and streamed tile: at most a third of a tile, so the
    // buffers never outweigh a score tile (large k with many queries); a smaller room only
    // makes a reselection likelier, never a wrong answer.
    const std::size_t room = streamed ? std::min(tile / 3, std::max<std::size_t>(4 * kk, 512)) : 0;
    Carve c;
    const std::size_t at_t0 = c.take(nq * ldt * sizeof(float));
    const std::size_t at_t1 = c.take(tiles > 1 ? nq * ldt * sizeof(float) : 0);
    const std::size_t at_cand = c.take(max_splits > 1 ? nq * max_splits * kk * entry : 0);
    const std::size_t at_side0 = c.take(spans ? ldt * (sizeof(float) + sizeof(std::uint32_t)) : 0);
    const std::size_t at_side1 = c.take(spans && tiles > 1 ? ldt * (sizeof(float) + sizeof(std::uint32_t)) : 0);
    const std::size_t at_pass = c.take(nq * room * entry), at_count = c.take(streamed ? nq * sizeof(unsigned) : 0);
    Scratch ws(*ctx_, c.at, s);
    auto* base = ws.as<unsigned char>();
    float* tile_buf[2] = {reinterpret_cast<float*>(base + at_t0), reinterpret_cast<float*>(base + at_t1)};
    float* side_f[2] = {reinterpret_cast<float*>(base + at_side0), reinterpret_cast<float*>(base + at_side1)};
    auto* ckeys = reinterpret_cast<std::uint64_t*>(base + at_cand);
    auto* cvals = reinterpret_cast<std::uint32_t*>(ckeys + nq * max_splits * kk);
    auto* pkeys = reinterpret_cast<std::uint64_t*>(base + at_pass);
    auto* pvals = reinterpret_cast<std::uint32_t*>(pkeys + nq * room);
    auto* pcount = reinterpret_cast<unsigned*>(base + at_count);
    if (streamed) check(cudaMemsetAsync(pcount, 0, nq * sizeof(unsigned), s), "cudaMemsetAsync");
    with_metric(metric_, [&](auto m) {
        constexpr int M = decltype(m)::value;
        constexpr bool kHigher = k::MetricTraits<M>::kHigherFirst;
        auto select = k::select_tile_kernel<M>;
        auto merge = k::merge_lists_kernel<kHigher>;
        auto filter = k::filter_tile_kernel<M>;
        auto merge_passed = k::merge_passed_kernel<M>;
        allow_shared(select, shared);
        allow_shared(merge, shared);
        allow_shared(merge_passed, shared);
        for (std::size_t t = 0, c0 = 0; t < tiles; c0 += widths[t], ++t) {
            const std::size_t cols = widths[t];
            const bool first = t == 0;
            const TilePlace& place = plan.place[t];
            const int b = place.buffer;
            float* buf = tile_buf[b] + place.offset;
            if (place.waits) check(cudaStreamWaitEvent(s, lane.tile_free[b], 0), "cudaStreamWaitEvent");
            const float* factors = nullptr;
            const std::uint32_t* ordinals = nullptr;
            std::size_t runs = 0;
            v.for_each_run(c0, cols, [&](std::size_t s0, std::size_t count, const k::PageRef& page, std::size_t row) {
                const void* rows = static_cast<const unsigned char*>(page.rows) + row * row_bytes_;
                float* out = buf + (s0 - c0);
                if (thin)
                    skinny_scores(lane, static_cast<const float*>(rows), dq, nq, count, out, ldt);
                else
                    gemm_scores(lane, rows, dq, nq, count, out, ldt, screen, sq);
                if (runs++ == 0) {
                    factors = page.factors + row;
                    ordinals = page.ordinals + row;
                }
            });
            if (runs > 1) {  // the factors and ordinals side by side
                float* f = side_f[b] + place.offset;
                auto* o = reinterpret_cast<std::uint32_t*>(side_f[b] + ldt) + place.offset;
                k::gather_side_kernel<<<grid_for(cols, 256, p), 256, 0, s>>>(v.rows, c0, cols, f, o);
                check_launch("gather_side_kernel");
                factors = f;
                ordinals = o;
            }
            check(cudaEventRecord(lane.tile_scored[b], s), "cudaEventRecord");
            check(cudaStreamWaitEvent(a, lane.tile_scored[b], 0), "cudaStreamWaitEvent");
            const dim3 grid(static_cast<unsigned>(nq), static_cast<unsigned>(splits[t]));
            if (streamed_tile[t]) {
                const std::size_t ranges = std::min<std::size_t>(
                    65535, ceil_div(cols, static_cast<std::size_t>(k::kFilterBlock) * 4 * k::kFilterLoads));
                filter<<<dim3(static_cast<unsigned>(nq), static_cast<unsigned>(ranges)), k::kFilterBlock, 0, a>>>(
                    buf, ldt, cols, c0, factors, ordinals, v.mask, qf, sq.inv_scale, static_cast<int>(kk), rkeys,
                    pkeys, pvals, pcount, static_cast<int>(room));
                check_launch("filter_tile_kernel");
                merge_passed<<<static_cast<unsigned>(nq), k::kSelectBlock, shared, a>>>(
                    buf, ldt, cols, c0, factors, ordinals, v.mask, qf, sq.inv_scale, static_cast<int>(kk), cap, pkeys,
                    pvals, pcount, static_cast<int>(room), rkeys, rvals);
                check_launch("merge_passed_kernel");
            } else if (splits[t] == 1) {
                select<<<grid, k::kSelectBlock, shared, a>>>(buf, ldt, cols, c0, factors, ordinals, v.mask, qf,
                                                             sq.inv_scale, static_cast<int>(kk), cap,
                                                             first ? nullptr : rkeys, rvals, rkeys, rvals);
                check_launch("select_tile_kernel");
            } else {
                select<<<grid, k::kSelectBlock, shared, a>>>(buf, ldt, cols, c0, factors, ordinals, v.mask, qf,
                                                             sq.inv_scale, static_cast<int>(kk), cap,
                                                             first ? nullptr : rkeys, nullptr, ckeys, cvals);
                check_launch("select_tile_kernel");
                merge<<<static_cast<unsigned>(nq), k::kSelectBlock, shared, a>>>(
                    ckeys, cvals, splits[t] * kk, static_cast<int>(kk), cap, first ? nullptr : rkeys, rvals, rkeys, rvals,
                    nullptr, nullptr);
                check_launch("merge_lists_kernel");
            }
            check(cudaEventRecord(lane.tile_free[b], a), "cudaEventRecord");
        }
    });
    check(cudaEventRecord(lane.selected, a), "cudaEventRecord");
    check(cudaStreamWaitEvent(s, lane.selected, 0), "cudaStreamWaitEvent");
}

void CudaEngine::skinny_scores(Lane& lane, const float* rows, const float* dq, std::size_t nq, std::size_t cols,
                               float* out, std::size_t ld_out) const {
    const std::size_t ld4 = ld_ / 4;
    auto launch = [&](auto qn) {
        constexpr int Q = decltype(qn)::value;
        with_vpl(ld4, k::warp_size(ctx_->props()), [&](auto vpl) {
            auto kernel = k::skinny_dots_kernel<Q, decltype(vpl)::value>;
            const std::size_t shared = Q * ld_ * sizeof(float);
            allow_shared(kernel, shared);
            int per_sm = 0;
            check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, k::kSkinnyBlock, shared),
                  "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
            const std::size_t blocks = std::min<std::size_t>(
                static_cast<std::size_t>(std::max(per_sm, 1)) * ctx_->props().multiProcessorCount,
                std::max<std::size_t>(1, ceil_div(cols, 2 * (k::kSkinnyBlock / k::warp_size(ctx_->props())))));
            kernel<<<static_cast<unsigned>(blocks), k::kSkinnyBlock, shared, lane.stream>>>(
                reinterpret_cast<const float4*>(rows), ld4, cols, reinterpret_cast<const float4*>(dq),
                static_cast<int>(nq), out, ld_out);
            check_launch("skinny_dots_kernel");
        });
    };
    if (nq <= 2) launch(std::integral_constant<int, 2>{});
    else launch(std::integral_constant<int, 4>{});
}

void CudaEngine::search_sorted(Lane& lane, const RowView& v, const float* dq, const float* qf, std::size_t nq,
                               std::size_t kk, float* dscores, std::int64_t* dslots) const {
    // k beyond shared memory, or candidates that could not be proven: every row's canonical
    // score (rerank.cuh), all keys sorted, the first k kept.
    cudaStream_t s = lane.stream;
    const std::size_t n = v.n;
    Scratch keys(*ctx_, 2 * n * sizeof(std::uint64_t), s);
    Scratch vals(*ctx_, 2 * n * sizeof(std::uint32_t), s);
    auto* k_in = keys.as<std::uint64_t>();
    auto* k_out = k_in + n;
    auto* v_in = vals.as<std::uint32_t>();
    auto* v_out = v_in + n;
    std::size_t temp_bytes = 0;
    check(k::radix_sort_pairs(nullptr, temp_bytes, k_in, k_out, v_in, v_out, static_cast<int>(n), s),
          k::kRadixSortName);
    Scratch temp(*ctx_, temp_bytes, s);
    with_metric(metric_, [&](auto m) {
        constexpr int M = decltype(m)::value;
        for (std::size_t q = 0; q < nq; ++q) {
            with_dtype(dtype_, [&](auto d) {
                k::canonical_keys_kernel<M, decltype(d)::value>
                    <<<grid_for(n * k::warp_size(ctx_->props()), 256, ctx_->props()), 256, 0, s>>>(
                        v.rows, n, reinterpret_cast<const float4*>(dq + q * ld_), qf + q, v.mask, k_in, v_in);
            });
            check_launch("canonical_keys_kernel");
            check(k::radix_sort_pairs(temp.as<void>(), temp_bytes, k_in, k_out, v_in, v_out, static_cast<int>(n), s),
                  k::kRadixSortName);
            k::finalize_kernel<k::MetricTraits<M>::kHigherFirst><<<grid_for(kk, 256, ctx_->props()), 256, 0, s>>>(
                k_out, v_out, kk, dscores + q * kk, dslots + q * kk);
            check_launch("finalize_kernel");
        }
    });
}

}  // namespace hive_gpu::cuda
