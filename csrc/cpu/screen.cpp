// The screen: approximate scores from the hi plane, a bound on their error, and the rows
// whose bounds leave them a chance of the top k.
//
// Selection. With keep_i and reach_i bounds on row i's exact score s_i (keep_i is certain,
// reach_i the best s_i can be), let L be the k-th best keep over all rows. k rows have
// s >= L (higher-first; mirrored for Euclidean), so a row with reach < L is strictly worse
// than k rows and cannot be in the top k, not even by a tie. Every other row is a
// candidate. Each chunk keeps a heap of its k best keeps; its k-th, and the best k-th any
// chunk has published so far, are at most L, so a row whose reach misses them misses L.
//
// The bound. x-hat is the row with its low 16 bits replaced by 0x8000 (kernels_impl.inc):
// for a normal x_j, |x_j - xhat_j| <= 2^15 ulp(x_j) = 2^-8 2^e <= 2^-8 |x_j|; for a
// subnormal or zero x_j it is at most 2^15 * 2^-149 = 2^-134. Let u = 2^-24, m = d + 8 and
// g_m = m u / (1 - m u). Every kernel (screen and exact, any instruction set) sums its d
// products through at most m roundings per term (a lane's chain of FMAs, or multiply and
// add, then a reduction tree of depth <= 4), so its error is at most g_m sum |products|,
// plus at most 2^-150 per rounding that underflows: fewer than 2.02 (2d + 32) 2^-150 over
// both kernels, which U = (d + 32) 2^-146 covers. Then, for the raw dots t (screen) and
// r (exact kernel), by Cauchy-Schwarz:
//   |t - r| <= R |q||x| + A,  R = 2^-8 + (2 + 2^-8) g_m,
//                             A = 2^-134 |q|_1 (1 + g_m) + U.
// DotProduct: s = r, approximate t: B = R |q||x| + A.
// Cosine: s = (r fx) fq, approximate (t fx) fq, with fx <= (1 + 2u)/|x| (and fq likewise;
//   both come from a double norm rounded once). Each side's two multiplies are off by at
//   most 2.01 u |s| + 2^-150 (fq + 1), |s| <= 1.01, so
//   B = R (1 + 2u)^2 + 4.1 u + fx (2 A fq) + 2^-148 (fq + 1).
// Euclidean: s = the direct kernel's sum of (x_j - q_j)^2, within g_{m+2} |x - q|^2 + U of
//   |x - q|^2 (each difference rounds once, its square once more); approximate
//   (|x|^2 + |q|^2) - 2t with stored squared norms within 2u of exact and two roundings of
//   at most u (|x| + |q|)^2 each; t within R_e |q||x| + A of q.x, R_e = 2^-8 + (1 + 2^-8) g_m:
//   B = G (|x| + |q|)^2 + 2 R_e |q||x| + 2A,  G = g_{m+2} + 8u (which also covers rounding
//   the bounds s -+ B themselves: |s| can be far above B here).
//   Rows with |x| + |q| > 2^63 are always candidates: below that nothing can overflow.
// Each bound is B = c + g (lin + quad g) with g = |x| rounded up (DotProduct, Euclidean) or
// fx (Cosine); every constant is computed in double, scaled by 1 + 2^-10 and rounded up to
// float, and c gains 2^-140. The scale covers the few roundings of evaluating B and s -+ B
// in float (each within u of a value at most 2^9 B for DotProduct and Cosine); 2^-140
// covers their underflow. DotProduct's c holds 2A: where |q||x| is tiny, A alone is B, and
// the doubling is the slack for those roundings.
#include "cpu/screen.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "core/topk.hpp"
#include "cpu/host_buffer.hpp"
#include "cpu/kernels.hpp"
#include "cpu/thread_pool.hpp"

namespace hive_gpu::cpu {

namespace {

// Where the screen pays, measured on random data (2-core AMD EPYC, AVX-512): from k = 512
// its candidates (thousands of rows, re-scored one by one from memory) cost more than it
// saves at 100k x 768; with k <= n / 8 it was at least as fast as the full scan from
// 2048 x 128 up; below 2^16 floats of rows both take about 10 us, the cost of the call.
constexpr std::size_t kScreenMaxK = 256;
constexpr std::size_t kScreenRowsPerK = 16;
constexpr std::size_t kScreenMinWork = std::size_t{1} << 16;
// Re-scoring a candidate reads both planes of one row, at random: past n / 16 candidates
// (or 4096 on small stores) a full scan is about as cheap.
constexpr std::size_t kCapDivisor = 16;
constexpr std::size_t kMinCap = 4096;
// Rows screened per kernel call: the three strips of up to 3 queries stay in L1.
constexpr std::size_t kTileRows = 512;
// Below this many elements the screen runs on the calling thread alone.
constexpr std::size_t kParallelWork = std::size_t{1} << 18;
constexpr std::size_t kChunksPerThread = 4;
constexpr std::size_t kMinChunkRows = 4096;

enum class Mode { Auto, Off, Always };

Mode read_mode() {
    const char* v = std::getenv("HIVE_GPU_CPU_SCREEN");
    if (v && std::strcmp(v, "off") == 0) return Mode::Off;
    if (v && std::strcmp(v, "always") == 0) return Mode::Always;
    return Mode::Auto;
}

Mode mode() {
    static const Mode m = read_mode();
    return m;
}

std::atomic<std::uint64_t> g_screened{0};
std::atomic<std::uint64_t> g_abandoned{0};

// The smallest float >= v (v >= 0, finite).
float round_up(double v) {
    float f = static_cast<float>(v);
    if (static_cast<double>(f) < v) f = std::nextafter(f, std::numeric_limits<float>::infinity());
    return f;
}

// The largest float <= v.
float round_down(double v) {
    float f = static_cast<float>(v);
    if (static_cast<double>(f) > v) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
    return f;
}

// The bound's constants for one query (see the top of the file).
ScreenQuery bound_for(Metric metric, std::size_t d, const float* q, float query_factor) {
    const double u = 0x1p-24, dd = static_cast<double>(d);
    auto gamma = [u](double m) { return m * u / (1.0 - m * u); };
    // Sums in double are within d 2^-53 of exact; 1 + 2^-30 covers that for d <= 2^20.
    double sq = 0.0, l1 = 0.0;
    for (std::size_t j = 0; j < d; ++j) {
        sq += static_cast<double>(q[j]) * q[j];
        l1 += std::fabs(static_cast<double>(q[j]));
    }
    const double qn = std::sqrt(sq) * (1.0 + 0x1p-30), q1 = l1 * (1.0 + 0x1p-30);
    const double gm = gamma(dd + 8.0);
    const double scale = 1.0 + 0x1p-10, tiny = 0x1p-140;
    const double A = 0x1p-134 * q1 * (1.0 + gm) + (dd + 32.0) * 0x1p-146;
    ScreenQuery s{};
    s.g_limit = std::numeric_limits<float>::max();
    switch (metric) {
        case Metric::DotProduct: {
            const double R = 0x1p-8 + (2.0 + 0x1p-8) * gm;
            s.c = round_up((2.0 * A) * scale + tiny);
            s.lin = round_up(R * qn * scale);
            break;
        }
        case Metric::Cosine: {
            const double R = 0x1p-8 + (2.0 + 0x1p-8) * gm, fq = query_factor;
            s.factor = query_factor;
            s.c = round_up(((R * (1.0 + 2 * u) * (1.0 + 2 * u) + 4.1 * u) + 0x1p-148 * (fq + 1.0)) * scale + tiny);
            s.lin = round_up(2.0 * A * fq * scale);
            break;
        }
        case Metric::Euclidean: {
            const double Re = 0x1p-8 + (1.0 + 0x1p-8) * gm, G = gamma(dd + 10.0) + 8.0 * u;
            s.factor = static_cast<float>(sq);  // |q|^2 as the approximate score uses it
            s.c = round_up((G * qn * qn + 2.0 * A) * scale + tiny);
            s.lin = round_up((2.0 * G + 2.0 * Re) * qn * scale);
            s.quad = round_up(G * scale);
            s.g_limit = qn < 0x1p63 ? round_down(0x1p63 - qn) : -1.0f;
            break;
        }
    }
    return s;
}

// Floats as unsigned keys in the same order, for an atomic "best so far".
std::uint32_t order_key(float f) {
    std::uint32_t b;
    std::memcpy(&b, &f, sizeof b);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

float from_order_key(std::uint32_t k) {
    const std::uint32_t b = (k & 0x80000000u) ? k & 0x7FFFFFFFu : ~k;
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
}

template <bool kHigherFirst>
bool at_least_as_good(float a, float b) {
    return kHigherFirst ? a >= b : a <= b;
}

struct Candidate {
    std::size_t slot;
    float reach;
};

// A filtered screen: rows whose bit is clear get the worst keep and reach, so they never
// raise a threshold and drop out as candidates (the exact pass skips any that tie the worst).
template <bool kHigherFirst>
void hide_masked(const std::uint64_t* mask, std::size_t x0, std::size_t nx, std::size_t nq, float* keep,
                 float* reach) {
    constexpr float kWorst = kHigherFirst ? -std::numeric_limits<float>::infinity()
                                          : std::numeric_limits<float>::infinity();
    for (std::size_t x = 0; x < nx; ++x) {
        const std::size_t r = x0 + x;
        if (mask[r / 64] >> (r % 64) & 1) continue;
        for (std::size_t q = 0; q < nq; ++q) keep[q * kTileRows + x] = reach[q * kTileRows + x] = kWorst;
    }
}

template <bool kHigherFirst>
bool screen_impl(const ScreenRows& rows, ThreadPool& pool, const float* queries,
                 const float* query_factor, std::size_t nq, std::size_t k,
                 std::vector<std::vector<std::size_t>>& out) {
    const KernelTable& kern = kernels();
    const std::size_t n = rows.n, d = rows.d;
    constexpr float kWorst = kHigherFirst ? -std::numeric_limits<float>::infinity()
                                          : std::numeric_limits<float>::infinity();
    const ScreenForm form = rows.metric == Metric::Cosine      ? ScreenForm::Cosine
                            : rows.metric == Metric::Euclidean ? ScreenForm::L2
                                                               : ScreenForm::Dot;
    const float* row_g = form == ScreenForm::Cosine ? rows.factors : rows.norms;
    const float* row_sq = form == ScreenForm::L2 ? rows.factors : nullptr;

    const std::size_t padded = (d + kern.screen_step - 1) / kern.screen_step * kern.screen_step;
    // On 64 bytes, like the queries of the exact kernels (csrc/cpu/cpu_engine.cpp).
    HostBuffer<float> prepared = HostBuffer<float>::allocate(nq * padded);
    std::vector<ScreenQuery> sq(nq);
    for (std::size_t q = 0; q < nq; ++q) {
        kern.prepare_screen_query(queries + q * d, d, prepared.data() + q * padded);
        sq[q] = bound_for(rows.metric, d, queries + q * d, query_factor ? query_factor[q] : 0.0f);
        sq[q].q = prepared.data() + q * padded;
    }

    const std::size_t threads = pool.threads();
    std::size_t chunks = 1;
    if (threads > 1 && n * d >= kParallelWork)
        chunks = std::max<std::size_t>(1, std::min(threads * kChunksPerThread, n / kMinChunkRows));
    const std::size_t chunk_rows = (n + chunks - 1) / chunks;
    chunks = (n + chunk_rows - 1) / chunk_rows;
    const std::size_t cap = std::max(kMinCap, n / kCapDivisor);

    std::vector<TopK<kHigherFirst>> heaps;  // [chunk][query]: the k best keeps
    heaps.reserve(chunks * nq);
    for (std::size_t i = 0; i < chunks * nq; ++i) heaps.emplace_back(k);
    std::vector<std::vector<Candidate>> found(chunks * nq);
    // The best k-th keep any chunk has reached, per query, as a key: order_key(keep), or
    // order_key(-keep) for Euclidean, so that a larger key is always a better threshold.
    auto key_of = [](float keep) { return order_key(kHigherFirst ? keep : -keep); };
    auto keep_of = [](std::uint32_t key) { return kHigherFirst ? from_order_key(key) : -from_order_key(key); };
    const std::uint32_t no_key = key_of(kWorst);
    std::vector<std::atomic<std::uint32_t>> published(nq);
    for (auto& p : published) p.store(no_key, std::memory_order_relaxed);
    std::atomic<std::size_t> total{0};
    std::atomic<bool> abandoned{false};

    auto scan = [&](std::size_t c) {
        const std::size_t ra = c * chunk_rows, rb = std::min(n, ra + chunk_rows);
        std::vector<float> strips(3 * nq * kTileRows);
        std::vector<std::uint32_t> pick(kTileRows);
        for (std::size_t x0 = ra; x0 < rb; x0 += kTileRows) {
            if (abandoned.load(std::memory_order_relaxed)) return;
            const std::size_t nx = std::min(kTileRows, rb - x0);
            ScreenArgs a{rows.hi + x0 * d, nx, d, form, sq.data(), nq, row_g + x0,
                         row_sq ? row_sq + x0 : nullptr, strips.data(),
                         strips.data() + nq * kTileRows, strips.data() + 2 * nq * kTileRows, kTileRows};
            kern.screen_tile(a);
            if (rows.mask) hide_masked<kHigherFirst>(rows.mask, x0, nx, nq, a.keep, a.reach);
            std::size_t added = 0;
            for (std::size_t q = 0; q < nq; ++q) {
                TopK<kHigherFirst>& top = heaps[c * nq + q];
                const float* keep = a.keep + q * kTileRows;
                const float* reach = a.reach + q * kTileRows;
                const float own = top.size() < k ? kWorst : top.items().front().score;
                std::size_t m = kern.filter(keep, nx, own, kHigherFirst, pick.data());
                for (std::size_t j = 0; j < m; ++j)
                    if (top.may_enter(keep[pick[j]])) top.push(keep[pick[j]], 0, 0);
                // The threshold: the better of this chunk's k-th keep and the best one
                // published, which this chunk's joins.
                std::uint32_t key = top.size() < k ? no_key : key_of(top.items().front().score);
                std::uint32_t seen = published[q].load(std::memory_order_relaxed);
                while (seen < key && !published[q].compare_exchange_weak(seen, key, std::memory_order_relaxed)) {
                }
                key = std::max(key, seen);
                m = kern.filter(reach, nx, keep_of(key), kHigherFirst, pick.data());
                std::vector<Candidate>& f = found[c * nq + q];
                for (std::size_t j = 0; j < m; ++j) f.push_back({x0 + pick[j], reach[pick[j]]});
                added += m;
            }
            if (total.fetch_add(added, std::memory_order_relaxed) + added > cap * nq) {
                abandoned.store(true, std::memory_order_relaxed);
                return;
            }
        }
    };
    if (chunks == 1)
        scan(0);
    else
        pool.run(chunks, scan);
    if (abandoned.load()) return false;

    out.assign(nq, {});
    std::vector<float> keeps;
    for (std::size_t q = 0; q < nq; ++q) {
        // L: the k-th best keep of all rows (every chunk kept its k best, and n >= k).
        keeps.clear();
        for (std::size_t c = 0; c < chunks; ++c)
            for (const auto& x : heaps[c * nq + q].items()) keeps.push_back(x.score);
        auto better = [](float a, float b) { return kHigherFirst ? a > b : a < b; };
        std::nth_element(keeps.begin(), keeps.begin() + static_cast<std::ptrdiff_t>(k - 1), keeps.end(), better);
        const float L = keeps[k - 1];
        for (std::size_t c = 0; c < chunks; ++c)
            for (const Candidate& x : found[c * nq + q])
                if (at_least_as_good<kHigherFirst>(x.reach, L)) out[q].push_back(x.slot);
    }
    return true;
}

}  // namespace

bool screen_wanted(std::size_t n, std::size_t d, std::size_t nq, std::size_t k) {
    if (nq == 0 || nq > kScreenMaxQueries || k == 0 || k > n) return false;
    switch (mode()) {
        case Mode::Off: return false;
        case Mode::Always: return true;
        case Mode::Auto: break;
    }
    return k <= kScreenMaxK && n >= kScreenRowsPerK * k && n * d >= kScreenMinWork;
}

bool screen(const ScreenRows& rows, ThreadPool& pool, const float* queries,
            const float* query_factor, std::size_t nq, std::size_t k,
            std::vector<std::vector<std::size_t>>& candidates) {
    const bool ok = higher_is_better(rows.metric)
                        ? screen_impl<true>(rows, pool, queries, query_factor, nq, k, candidates)
                        : screen_impl<false>(rows, pool, queries, query_factor, nq, k, candidates);
    (ok ? g_screened : g_abandoned).fetch_add(1, std::memory_order_relaxed);
    return ok;
}

ScreenCounts screen_counts() {
    return ScreenCounts{g_screened.load(std::memory_order_relaxed), g_abandoned.load(std::memory_order_relaxed)};
}

}  // namespace hive_gpu::cpu
