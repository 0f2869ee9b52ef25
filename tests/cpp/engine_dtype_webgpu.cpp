// WebGPU storage dtypes and pages, driven directly (no VectorStorage): float32, float16 and
// bfloat16 engines get rows already rounded by dtype.hpp's conversions and must give
//   - read() equal to the stored values widened to float32, bit for bit;
//   - search() and search_filtered() (dense mask and sparse list) equal to a float64
//     reference on the stored rows, within float32 accumulation error, with its ranks and
//     ties broken by the smaller ordinal;
//   - 2 bytes per element of 16-bit rows, pages whose capacities follow core/row_pages.hpp,
//     earlier rows intact after growth, swap-removes, writes and truncation.
// Both float16 paths run: shader-f16 loads (when the adapter has the feature) and u32 pairs
// unpacked in WGSL (HIVE_GPU_WEBGPU_NO_F16=1). Exit status 77: no WebGPU adapter (skipped).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/numeric.hpp"
#include "core/row_pages.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/dtype.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/error.hpp"

using namespace hive_gpu;

namespace {

int g_failures = 0, g_checks = 0;

void expect(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

// The engine's rows mirrored on the host: stored values (widened) and ordinals per slot.
struct Mirror {
    std::size_t dim = 0;
    std::vector<float> rows;
    std::vector<std::uint32_t> ordinals;
    std::size_t size() const { return ordinals.size(); }
    const float* row(std::size_t s) const { return &rows[s * dim]; }
};

// Rounds float32 rows to `d` the way the core does before append(): the host bytes the
// engine receives and, in `widened`, the values it must then hold.
std::vector<unsigned char> to_dtype(const std::vector<float>& v, Dtype d, std::vector<float>* widened) {
    std::vector<unsigned char> out(v.size() * dtype_size(d));
    widened->resize(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (d == Dtype::Float32) {
            std::memcpy(&out[i * 4], &v[i], 4);
        } else {
            const std::uint16_t h = d == Dtype::Float16 ? float_to_f16(v[i]) : float_to_bf16(v[i]);
            std::memcpy(&out[i * 2], &h, 2);
        }
        (*widened)[i] = load_as_float(&out[i * dtype_size(d)], d);
    }
    return out;
}

struct Ref {
    double score, tol;
};

// Float64 score of query q against stored row x, and the float32 error the engine may add:
// a dim-term float32 sum (plus the cosine factors' roundings) over the same stored values.
Ref reference(Metric m, const float* q, const float* x, std::size_t dim) {
    double dot = 0, qq = 0, xx = 0, d2 = 0, mag = 0, mag2 = 0;
    for (std::size_t j = 0; j < dim; ++j) {
        const double a = q[j], b = x[j];
        dot += a * b, qq += a * a, xx += b * b, d2 += (a - b) * (a - b);
        mag += std::fabs(a * b), mag2 += (std::fabs(a) + std::fabs(b)) * (std::fabs(a) + std::fabs(b));
    }
    const double eps = (static_cast<double>(dim) + 8) * std::ldexp(1.0, -23);
    if (m == Metric::DotProduct) return {dot, eps * mag + 1e-30};
    if (m == Metric::Euclidean) return {d2, eps * mag2 + 1e-30};
    if (counts_as_zero(qq) || counts_as_zero(xx)) return {0.0, 1e-30};  // numeric.hpp's rule
    const double n = std::sqrt(qq * xx);
    return {dot / n, eps * (mag + std::fabs(dot)) / n + 1e-30};
}

// Checks one query's k results against the reference over the passing slots.
std::string check(Metric m, const Mirror& mir, const std::vector<std::uint32_t>& passing, const float* q,
                  std::size_t k, const float* scores, const std::int64_t* slots) {
    const bool higher = higher_is_better(m);
    struct Entry {
        Ref ref;
        std::uint32_t slot;
    };
    std::vector<Entry> ref;
    for (std::uint32_t s : passing) ref.push_back({reference(m, q, mir.row(s), mir.dim), s});
    std::sort(ref.begin(), ref.end(), [&](const Entry& a, const Entry& b) {
        if (a.ref.score != b.ref.score) return higher ? a.ref.score > b.ref.score : a.ref.score < b.ref.score;
        return mir.ordinals[a.slot] < mir.ordinals[b.slot];
    });
    std::vector<char> passes(mir.size(), 0), seen(mir.size(), 0);
    for (std::uint32_t s : passing) passes[s] = 1;
    char buf[256];
    for (std::size_t i = 0; i < k; ++i) {
        const std::int64_t s = slots[i];
        if (s < 0 || static_cast<std::size_t>(s) >= mir.size() || !passes[s] || seen[s]) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld not a new passing slot", i, static_cast<long long>(s));
            return buf;
        }
        seen[s] = 1;
        const Ref own = reference(m, q, mir.row(s), mir.dim);
        if (std::fabs(own.score - scores[i]) > own.tol) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld scored %.9g, reference %.9g", i,
                          static_cast<long long>(s), scores[i], own.score);
            return buf;
        }
        if (std::fabs(ref[i].ref.score - scores[i]) > own.tol + ref[i].ref.tol) {
            std::snprintf(buf, sizeof buf, "rank %zu: score %.9g, reference rank score %.9g", i, scores[i],
                          ref[i].ref.score);
            return buf;
        }
        if (i > 0) {
            const float a = scores[i - 1], b = scores[i];
            if (a == b ? mir.ordinals[slots[i - 1]] > mir.ordinals[s] : (higher ? a < b : a > b)) {
                std::snprintf(buf, sizeof buf, "ranks %zu, %zu out of order (%.9g, %.9g)", i - 1, i, a, b);
                return buf;
            }
        }
        // Separated from both neighbours by more than the error: the reference's slot itself.
        auto apart = [&](std::size_t j) {
            return std::fabs(ref[j].ref.score - ref[i].ref.score) > ref[j].ref.tol + ref[i].ref.tol;
        };
        if ((i == 0 || apart(i - 1)) && (i + 1 >= ref.size() || apart(i + 1)) && ref[i].slot != s) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld, reference slot %u", i, static_cast<long long>(s),
                          ref[i].slot);
            return buf;
        }
    }
    return "";
}

struct Case {
    std::size_t dim, n, nq, k;
    std::uint64_t page_bytes;  // HIVE_GPU_WEBGPU_CHUNK_BYTES for the engine (0: the device's limit)
};

// Random rows of mixed scales, every 7th a copy of an earlier one (exact ties), one zero
// row, and elements small enough to be float16 subnormals in every row.
std::vector<float> random_rows(std::size_t n, std::size_t dim, std::mt19937_64& rng) {
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> v(n * dim);
    for (std::size_t i = 0; i < n; ++i) {
        // Every fifth row large, every fifth tiny: all of its float16 elements subnormal, so
        // a kernel that flushed them would miss its score by more than the tolerance.
        const float scale = i % 5 == 0 ? 40.0f : i % 5 == 1 ? 1e-5f : 1.0f;
        for (std::size_t j = 0; j < dim; ++j) v[i * dim + j] = g(rng) * scale;
    }
    for (std::size_t i = 0; i < v.size(); i += 11) v[i] = g(rng) * 3e-6f;
    for (std::size_t i = 7; i < n; i += 7) std::copy_n(&v[(i / 2) * dim], dim, &v[i * dim]);
    if (n > 2) std::fill_n(&v[(n / 3) * dim], dim, 0.0f);
    return v;
}

void check_searches(Engine& e, Metric m, const Mirror& mir, std::size_t nq, std::size_t k, std::mt19937_64& rng,
                    const std::string& name) {
    const std::size_t n = mir.size(), dim = mir.dim;
    std::vector<float> q = random_rows(nq, dim, rng);
    std::copy_n(mir.row(n / 2), dim, q.data());  // a stored row: exact best match and ties
    std::vector<std::uint32_t> all(n);
    for (std::size_t i = 0; i < n; ++i) all[i] = static_cast<std::uint32_t>(i);

    auto run = [&](const char* what, const std::vector<std::uint32_t>& passing, const SlotFilter* f) {
        const std::size_t kk = std::min(k, passing.size());
        std::vector<float> scores(nq * kk);
        std::vector<std::int64_t> slots(nq * kk, -1);
        if (f)
            e.search_filtered(q.data(), nq, kk, *f, scores.data(), slots.data());
        else
            e.search(q.data(), nq, kk, scores.data(), slots.data());
        for (std::size_t i = 0; i < nq; ++i) {
            const std::string why = check(m, mir, passing, &q[i * dim], kk, &scores[i * kk], &slots[i * kk]);
            expect(why.empty(), name + " " + what + " query " + std::to_string(i) + ": " + why);
            if (!why.empty()) break;
        }
    };
    run("search", all, nullptr);
    // Filters: ~50% without the slot list (dense mask), ~2% with it (sparse path).
    for (const double pass : {0.5, 0.02}) {
        std::vector<std::uint32_t> shuffled = all;
        std::shuffle(shuffled.begin(), shuffled.end(), rng);
        std::vector<std::uint32_t> passing(shuffled.begin(),
                                           shuffled.begin() + std::max<std::size_t>(1, static_cast<std::size_t>(pass * n)));
        std::sort(passing.begin(), passing.end());
        std::vector<std::uint64_t> bits((n + 63) / 64, 0);
        for (std::uint32_t s : passing) bits[s / 64] |= std::uint64_t{1} << (s % 64);
        SlotFilter f;
        f.bits = bits.data();
        f.count = passing.size();
        f.slots = pass < 0.5 ? passing.data() : nullptr;
        if (!f.slots && passing.size() <= n / SlotFilter::kSparseListRatio) f.slots = passing.data();
        run(pass < 0.5 ? "filtered (list)" : "filtered (mask)", passing, &f);
    }
}

void check_read(const Engine& e, const Mirror& mir, const std::string& name) {
    std::vector<float> got(mir.rows.size());
    if (mir.size()) e.read(0, mir.size(), got.data());
    expect(std::memcmp(got.data(), mir.rows.data(), got.size() * sizeof(float)) == 0,
           name + ": read() differs from the stored values");
}

void run_case(Context& ctx, Dtype d, Metric m, const Case& c, std::mt19937_64& rng, const std::string& path) {
    char label[160];
    std::snprintf(label, sizeof label, "webgpu[%s] %s %s dim=%zu n=%zu nq=%zu k=%zu page_bytes=%llu", path.c_str(),
                  dtype_name(d), metric_name(m), c.dim, c.n, c.nq, c.k, static_cast<unsigned long long>(c.page_bytes));
    const std::string name = label;
    if (c.page_bytes)
        setenv("HIVE_GPU_WEBGPU_CHUNK_BYTES", std::to_string(c.page_bytes).c_str(), 1);
    else
        unsetenv("HIVE_GPU_WEBGPU_CHUNK_BYTES");
    std::unique_ptr<Engine> e = ctx.make_engine(c.dim, m, d);
    unsetenv("HIVE_GPU_WEBGPU_CHUNK_BYTES");
    expect(e->dtype() == d, name + ": dtype()");

    Mirror mir;
    mir.dim = c.dim;
    const std::vector<float> raw = random_rows(c.n, c.dim, rng);
    const std::vector<unsigned char> stored = to_dtype(raw, d, &mir.rows);
    mir.ordinals.resize(c.n);
    for (std::size_t i = 0; i < c.n; ++i) mir.ordinals[i] = static_cast<std::uint32_t>(i);
    std::shuffle(mir.ordinals.begin(), mir.ordinals.end(), rng);
    // Three appends, so growth happens with rows already on the device.
    const std::size_t row_bytes = c.dim * dtype_size(d);
    for (const auto& [from, to] : {std::pair<std::size_t, std::size_t>{0, c.n / 3}, {c.n / 3, c.n / 2}, {c.n / 2, c.n}})
        e->append(&stored[from * row_bytes], &mir.ordinals[from], to - from);
    expect(e->size() == c.n, name + ": size()");

    // 2 bytes per 16-bit element; pages as core/row_pages.hpp lays them out, none copied.
    const std::size_t dev_row = (c.dim + 3) / 4 * 4 * dtype_size(d);
    const std::uint64_t cap_bytes = c.page_bytes ? c.page_bytes : 0;
    if (cap_bytes) {
        const PageLayout layout(1024, cap_bytes / dev_row);
        const std::size_t pages = layout.pages_for(c.n);
        expect(e->memory_bytes() == layout.start(pages) * (dev_row + 8),
               name + ": memory_bytes() " + std::to_string(e->memory_bytes()) + " is not the pages' size");
    }
    check_read(*e, mir, name);
    check_searches(*e, m, mir, c.nq, c.k, rng, name);

    // Swap-removes, a write of fresh values, then the same checks.
    for (int r = 0; r < 4 && mir.size() > 1; ++r) {
        const std::size_t last = mir.size() - 1, victim = rng() % mir.size();
        if (victim != last) {
            e->move(last, victim);
            std::copy_n(mir.row(last), c.dim, &mir.rows[victim * c.dim]);
            mir.ordinals[victim] = mir.ordinals[last];
        }
        e->truncate(last);
        mir.rows.resize(last * c.dim);
        mir.ordinals.resize(last);
    }
    if (mir.size() > 0) {
        std::vector<float> fresh_widened;
        const std::vector<float> fresh = random_rows(1, c.dim, rng);
        const std::vector<unsigned char> fresh_stored = to_dtype(fresh, d, &fresh_widened);
        const std::size_t slot = mir.size() - 1;
        e->write(slot, fresh_stored.data());
        std::copy(fresh_widened.begin(), fresh_widened.end(), &mir.rows[slot * c.dim]);
        check_read(*e, mir, name + " after removes");
        check_searches(*e, m, mir, c.nq, c.k, rng, name + " after removes");
    }
    e->truncate(0);
    expect(e->size() == 0 && e->memory_bytes() == 0, name + ": an empty engine still holds memory");
}

// The page arithmetic itself: contiguous pages, every slot located in the page that holds it.
void check_layout() {
    for (const auto& [first, most] : {std::pair<std::size_t, std::size_t>{1024, 43690}, {1024, 256}, {3, 100}, {1, 1},
                                      {1024, 1024}, {5, 7}}) {
        const PageLayout l(first, most);
        bool ok = l.start(0) == 0 && l.pages_for(0) == 0;
        for (std::size_t p = 0; p < 40 && ok; ++p) {
            ok = l.start(p + 1) == l.start(p) + l.rows(p) && l.rows(p) <= most && l.rows(p) >= std::min(first, most) &&
                 (p == 0 || l.rows(p) >= l.rows(p - 1)) && (l.rows(p) == most || l.rows(p + 1) == 2 * l.rows(p) ||
                                                            l.rows(p + 1) == most);
            for (std::size_t j : {std::size_t{0}, l.rows(p) / 2, l.rows(p) - 1}) {
                const auto at = l.locate(l.start(p) + j);
                ok = ok && at.page == p && at.offset == j && l.pages_for(l.start(p) + j + 1) == p + 1;
            }
        }
        expect(ok, "PageLayout(" + std::to_string(first) + ", " + std::to_string(most) + ")");
    }
}

}  // namespace

int main() {
    check_layout();
    if (!backend_available("webgpu")) {
        std::printf("skip webgpu: %s\n", backend_unavailable_reason("webgpu").c_str());
        return g_failures ? 1 : 77;
    }
    const std::vector<Case> cases = {
        {5, 1, 1, 1, 0},           {16, 50, 2, 50, 0},         {37, 3000, 1, 10, 16384},
        {37, 3000, 3, 40, 200000}, {128, 2500, 12, 12, 65536}, {128, 700, 12, 40, 0},
        {64, 3000, 9, 20, 0},      {8, 4100, 2, 300, 16384},
    };
    std::mt19937_64 rng(20261203);
    bool native_seen = false;
    for (const bool force_packed : {false, true}) {
        if (force_packed)
            setenv("HIVE_GPU_WEBGPU_NO_F16", "1", 1);
        else
            unsetenv("HIVE_GPU_WEBGPU_NO_F16");
        std::shared_ptr<Context> ctx = create_context("webgpu");
        unsetenv("HIVE_GPU_WEBGPU_NO_F16");
        const bool native = ctx->device_info().compute_capability.find("shader-f16") != std::string::npos;
        expect(!(force_packed && native), "HIVE_GPU_WEBGPU_NO_F16=1 still reads float16 natively");
        native_seen = native_seen || native;
        const std::string path = native ? "f16" : "u32";
        if (!force_packed && !native) std::printf("note: the adapter lacks shader-f16; the u32 path runs twice\n");
        for (Dtype d : {Dtype::Float32, Dtype::Float16, Dtype::BFloat16}) {
            if (force_packed && d != Dtype::Float16) continue;  // only float16 has two paths
            for (Metric m : {Metric::Cosine, Metric::DotProduct, Metric::Euclidean})
                for (const Case& c : cases) {
                    try {
                        run_case(*ctx, d, m, c, rng, path);
                    } catch (const Error& err) {
                        expect(false, std::string("webgpu[") + path + "] " + dtype_name(d) + " " + metric_name(m) +
                                          " dim=" + std::to_string(c.dim) + ": " + err.what());
                    }
                }
        }
    }
    std::printf("%s webgpu dtypes: %d checks, %d failed (float16 paths: %s)\n", g_failures ? "FAIL" : "ok  ", g_checks,
                g_failures, native_seen ? "shader-f16 and u32" : "u32 only");
    return g_failures ? 1 : 0;
}
