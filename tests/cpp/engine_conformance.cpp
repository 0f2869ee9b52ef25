// Engine conformance: every engine of every compiled backend that has a device, driven
// directly (no VectorStorage), against a float64 brute-force reference computed here. One
// function per operation; `engine_conformance [op ...]` runs the named ones (all without
// arguments) and prints one line per (backend, case) with the failures.
//
// Operations so far:
//   filter  search_filtered: every metric, ties, k == count, filters passing 1 row, ~2%,
//           ~50% and all rows, with and without the slot list, single queries and batches,
//           rows moved by swap-removes so slots and ordinals differ.
//   search  search: every metric, ties, k == n, single queries and batches; read() gives the
//           stored values back; memory_bytes() counts the rows in their dtype.
// Every operation runs over every storage dtype the backend stores (float32, float16,
// bfloat16): the reference is computed on the rounded rows, as the engine stores them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "hive_gpu/context.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/error.hpp"

using namespace hive_gpu;

namespace {

struct Tally {
    int cases = 0, failures = 0, skipped = 0;
};

// The rows an engine holds, mirrored on the host: data and ordinal per slot.
struct Mirror {
    std::size_t dim = 0;
    Dtype dtype = Dtype::Float32;
    std::vector<float> rows;  // the stored values (rounded to dtype), widened
    std::vector<std::uint32_t> ordinals;
    std::size_t size() const { return ordinals.size(); }
};

double score64(Metric m, const float* q, const float* x, std::size_t dim) {
    double dot = 0, qq = 0, xx = 0, d2 = 0;
    for (std::size_t j = 0; j < dim; ++j) {
        dot += static_cast<double>(q[j]) * x[j];
        qq += static_cast<double>(q[j]) * q[j];
        xx += static_cast<double>(x[j]) * x[j];
        const double d = static_cast<double>(q[j]) - x[j];
        d2 += d * d;
    }
    if (m == Metric::DotProduct) return dot;
    if (m == Metric::Euclidean) return d2;
    return qq > 0 && xx > 0 ? dot / std::sqrt(qq * xx) : 0.0;
}

// Absolute float32 error allowed for one score (squared distance for Euclidean).
double tolerance(Metric m, const Mirror& mir, const float* q) {
    double xm = 0, qm = 0;
    for (std::size_t i = 0; i < mir.size(); ++i) {
        double s = 0;
        for (std::size_t j = 0; j < mir.dim; ++j) s += static_cast<double>(mir.rows[i * mir.dim + j]) * mir.rows[i * mir.dim + j];
        xm = std::max(xm, std::sqrt(s));
    }
    for (std::size_t j = 0; j < mir.dim; ++j) qm += static_cast<double>(q[j]) * q[j];
    qm = std::sqrt(qm);
    const double d = std::sqrt(static_cast<double>(mir.dim));
    if (m == Metric::Cosine) return 1e-5 * d + 1e-6;
    if (m == Metric::DotProduct) return 1e-5 * d * xm * qm + 1e-6;
    return 1e-5 * d * (xm + qm) * (xm + qm) + 1e-6;
}

struct Filter {
    std::vector<std::uint64_t> bits;
    std::vector<std::uint32_t> slots;
    bool with_list = true;
    bool passes(std::size_t s) const { return (bits[s / 64] >> (s % 64)) & 1u; }
    SlotFilter view() const {
        SlotFilter f;
        f.bits = bits.data();
        f.count = slots.size();
        f.slots = with_list ? slots.data() : nullptr;
        return f;
    }
};

Filter make_filter(std::size_t n, std::size_t count, bool with_list, std::mt19937_64& rng) {
    std::vector<std::uint32_t> all(n);
    for (std::size_t i = 0; i < n; ++i) all[i] = static_cast<std::uint32_t>(i);
    std::shuffle(all.begin(), all.end(), rng);
    Filter f;
    f.slots.assign(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(count));
    std::sort(f.slots.begin(), f.slots.end());
    f.bits.assign((n + 63) / 64, 0);
    for (std::uint32_t s : f.slots) f.bits[s / 64] |= std::uint64_t{1} << (s % 64);
    // The contract: the list is always there when count <= n / kSparseListRatio.
    f.with_list = with_list || count <= n / SlotFilter::kSparseListRatio;
    return f;
}

// Checks one query's k results: distinct passing slots, each score right for its slot,
// best first with ties by ordinal, and the reference's slots wherever its ranks are
// separated by more than the tolerance. Returns "" or what is wrong.
std::string check_query(Metric m, const Mirror& mir, const Filter& f, const float* q, std::size_t k,
                        const float* got_scores, const std::int64_t* got_slots) {
    const bool higher = higher_is_better(m);
    std::vector<std::pair<double, std::uint32_t>> ref;  // (score, slot) of passing rows
    for (std::uint32_t s : f.slots) ref.emplace_back(score64(m, q, &mir.rows[s * mir.dim], mir.dim), s);
    std::sort(ref.begin(), ref.end(), [&](const auto& a, const auto& b) {
        if (a.first != b.first) return higher ? a.first > b.first : a.first < b.first;
        return mir.ordinals[a.second] < mir.ordinals[b.second];
    });
    const double tol = tolerance(m, mir, q);
    std::set<std::int64_t> seen;
    char buf[256];
    for (std::size_t i = 0; i < k; ++i) {
        const std::int64_t s = got_slots[i];
        if (s < 0 || static_cast<std::size_t>(s) >= mir.size()) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld out of range", i, static_cast<long long>(s));
            return buf;
        }
        if (!f.passes(static_cast<std::size_t>(s))) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld is filtered out", i, static_cast<long long>(s));
            return buf;
        }
        if (!seen.insert(s).second) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld repeated", i, static_cast<long long>(s));
            return buf;
        }
        const double own = score64(m, q, &mir.rows[static_cast<std::size_t>(s) * mir.dim], mir.dim);
        if (std::fabs(own - got_scores[i]) > tol) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld scored %.9g, reference %.9g", i,
                          static_cast<long long>(s), got_scores[i], own);
            return buf;
        }
        if (std::fabs(ref[i].first - got_scores[i]) > tol) {
            std::snprintf(buf, sizeof buf, "rank %zu: score %.9g, reference rank score %.9g", i, got_scores[i],
                          ref[i].first);
            return buf;
        }
        if (i > 0) {
            const float a = got_scores[i - 1], b = got_scores[i];
            const bool order_ok = a == b ? mir.ordinals[got_slots[i - 1]] < mir.ordinals[s] : (higher ? a > b : a < b);
            if (!order_ok) {
                std::snprintf(buf, sizeof buf, "ranks %zu, %zu out of order (%.9g, %.9g)", i - 1, i, a, b);
                return buf;
            }
        }
        // Well separated from both neighbours in the reference: the slot itself must match.
        const bool apart = (i == 0 || std::fabs(ref[i - 1].first - ref[i].first) > 2 * tol) &&
                           (i + 1 >= ref.size() || std::fabs(ref[i + 1].first - ref[i].first) > 2 * tol);
        if (apart && static_cast<std::uint32_t>(s) != ref[i].second) {
            std::snprintf(buf, sizeof buf, "rank %zu: slot %lld, reference slot %u", i, static_cast<long long>(s),
                          ref[i].second);
            return buf;
        }
        // Exact ties in the reference (duplicate rows): the smaller ordinal first.
        if (i > 0 && ref[i - 1].first == ref[i].first && got_scores[i - 1] == got_scores[i] &&
            mir.ordinals[got_slots[i - 1]] > mir.ordinals[s]) {
            std::snprintf(buf, sizeof buf, "rank %zu: tie not broken by ordinal", i);
            return buf;
        }
    }
    return "";
}

// check_query() over nq queries; prints the first failure and counts it.
bool check_queries(const char* name, Metric m, const Mirror& mir, const Filter& f, const std::vector<float>& q,
                   std::size_t nq, std::size_t k, const std::vector<float>& scores,
                   const std::vector<std::int64_t>& slots, Tally& t) {
    for (std::size_t i = 0; i < nq; ++i) {
        const std::string why = check_query(m, mir, f, &q[i * mir.dim], k, &scores[i * k], &slots[i * k]);
        if (!why.empty()) {
            std::printf("FAIL %s query %zu: %s\n", name, i, why.c_str());
            ++t.failures;
            return false;
        }
    }
    return true;
}

// Rows in the engine's dtype (as the core hands them over), and rounds `rows` in place to
// the values that dtype stores.
std::vector<unsigned char> encode(float* rows, std::size_t count, Dtype dtype) {
    std::vector<unsigned char> out(count * dtype_size(dtype));
    for (std::size_t i = 0; i < count; ++i) {
        if (dtype == Dtype::Float32) {
            std::memcpy(&out[i * 4], &rows[i], 4);
            continue;
        }
        const std::uint16_t h = dtype == Dtype::Float16 ? float_to_f16(rows[i]) : float_to_bf16(rows[i]);
        std::memcpy(&out[i * 2], &h, 2);
        rows[i] = load_as_float(&h, dtype);
    }
    return out;
}

// A store of n rows of `dim`: random values, every 7th row a copy of an earlier one (exact
// ties), a zero row, a row of tiny values (float16 subnormals), ordinals shuffled, then a
// few swap-removes as the core does them and one row overwritten.
Mirror fill(Engine& e, std::size_t n, std::size_t dim, std::mt19937_64& rng) {
    Mirror mir;
    mir.dim = dim;
    mir.dtype = e.dtype();
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const std::size_t total = n + 5;
    mir.rows.resize(total * dim);
    for (auto& v : mir.rows) v = u(rng);
    if (total > 2)
        for (std::size_t j = 0; j < dim; ++j) mir.rows[2 * dim + j] *= 1e-5f;
    for (std::size_t i = 7; i < total; i += 7)
        std::copy_n(&mir.rows[(i / 2) * dim], dim, &mir.rows[i * dim]);
    std::fill_n(&mir.rows[(total / 3) * dim], dim, 0.0f);
    const std::vector<unsigned char> stored = encode(mir.rows.data(), mir.rows.size(), mir.dtype);
    const std::size_t row_bytes = dim * dtype_size(mir.dtype);
    mir.ordinals.resize(total);
    for (std::size_t i = 0; i < total; ++i) mir.ordinals[i] = static_cast<std::uint32_t>(i);
    std::shuffle(mir.ordinals.begin(), mir.ordinals.end(), rng);
    const std::size_t half = total / 2;
    e.append(stored.data(), mir.ordinals.data(), half);
    e.append(stored.data() + half * row_bytes, mir.ordinals.data() + half, total - half);
    for (int r = 0; r < 5; ++r) {  // swap-remove a random slot
        const std::size_t last = mir.size() - 1, victim = rng() % mir.size();
        if (victim != last) {
            e.move(last, victim);
            std::copy_n(&mir.rows[last * dim], dim, &mir.rows[victim * dim]);
            mir.ordinals[victim] = mir.ordinals[last];
        }
        e.truncate(last);
        mir.rows.resize(last * dim);
        mir.ordinals.resize(last);
    }
    std::vector<float> fresh(dim);
    for (auto& v : fresh) v = u(rng);
    const std::vector<unsigned char> row = encode(fresh.data(), dim, mir.dtype);
    const std::size_t slot = rng() % mir.size();
    e.write(slot, row.data());
    std::copy_n(fresh.data(), dim, &mir.rows[slot * dim]);
    return mir;
}

// An engine of `dtype`, or null (counted as skipped) when the backend does not store it.
std::unique_ptr<Engine> make(Context& ctx, std::size_t dim, Metric m, Dtype dtype, Tally& t) {
    try {
        return ctx.make_engine(dim, m, dtype);
    } catch (const InvalidDtypeError&) {
        ++t.skipped;
        return nullptr;
    }
}

constexpr Dtype kDtypes[] = {Dtype::Float32, Dtype::Float16, Dtype::BFloat16};

struct Case {
    std::size_t n, dim, nq;
    double pass;  // fraction of rows passing; 0: exactly one row
    std::size_t k;  // 0: k == count
    bool with_list;
};

bool run_filter(Context& ctx, Tally& t) {
    const std::string backend = ctx.backend();
    const std::vector<Case> cases = {
        {1, 5, 1, 1.0, 1, true},          {300, 3, 1, 0.0, 1, true},       {300, 3, 2, 1.0, 10, false},
        {2000, 37, 1, 0.5, 10, false},    {2000, 37, 1, 0.5, 10, true},    {2000, 37, 5, 0.02, 7, true},
        {2000, 37, 1, 0.02, 0, true},     {5000, 128, 1, 0.02, 40, true},  {5000, 128, 70, 0.5, 16, false},
        {5000, 128, 70, 0.02, 12, true},  {5000, 128, 3, 0.0, 1, true},    {5000, 128, 1, 1.0, 100, true},
        {3000, 64, 9, 0.3, 64, false},    {3000, 64, 1, 0.05, 0, true},    {4100, 8, 1, 0.5, 300, false},
        {4100, 8, 20, 0.002, 0, true},
        // Large k: CUDA/ROCm's sorted path (k beyond shared-memory selection), masked and
        // through the compact copy of listed rows; WebGPU's deep merge trees.
        {20000, 4, 2, 0.9, 15400, false}, {520000, 4, 1, 0.031, 15500, true}, {520000, 4, 3, 0.031, 15500, true},
    };
    bool ok = true;
    std::mt19937_64 rng(12345);
    for (Dtype dt : kDtypes)
    for (Metric m : {Metric::Cosine, Metric::DotProduct, Metric::Euclidean}) {
        for (const Case& c : cases) {
            std::unique_ptr<Engine> e = make(ctx, c.dim, m, dt, t);
            if (!e) break;
            Mirror mir = fill(*e, c.n, c.dim, rng);
            const std::size_t n = mir.size();
            const std::size_t count = c.pass == 0.0 ? 1 : std::max<std::size_t>(1, static_cast<std::size_t>(c.pass * n));
            const Filter f = make_filter(n, count, c.with_list, rng);
            const std::size_t k = c.k == 0 ? count : std::min(c.k, count);
            std::vector<float> q(c.nq * c.dim);
            std::uniform_real_distribution<float> u(-1.0f, 1.0f);
            for (auto& v : q) v = u(rng);
            // Some queries equal a stored row: exact best matches and ties at the top.
            if (c.nq > 1) std::copy_n(&mir.rows[f.slots[0] * c.dim], c.dim, &q[c.dim]);
            std::vector<float> scores(c.nq * k);
            std::vector<std::int64_t> slots(c.nq * k, -1);
            char name[160];
            std::snprintf(name, sizeof name, "%s filter %s %s n=%zu dim=%zu nq=%zu count=%zu k=%zu list=%d",
                          backend.c_str(), dtype_name(dt), metric_name(m), n, c.dim, c.nq, count, k,
                          f.view().slots != nullptr);
            try {
                e->search_filtered(q.data(), c.nq, k, f.view(), scores.data(), slots.data());
            } catch (const BackendError& err) {
                std::printf("FAIL %s: %s\n", name, err.what());
                ++t.cases, ++t.failures, ok = false;
                continue;
            }
            ++t.cases;
            ok = check_queries(name, m, mir, f, q, c.nq, k, scores, slots, t) && ok;
        }
    }
    std::printf("%s %s filter\n", ok ? "ok  " : "FAIL", backend.c_str());
    return ok;
}

bool run_search(Context& ctx, Tally& t) {
    const std::string backend = ctx.backend();
    struct SearchCase {
        std::size_t n, dim, nq, k;  // k 0: k == n
    };
    // Dimensions off and on the SIMD widths, queries around the register block and the
    // direct-Euclidean cut-off, tiles and chunks of rows.
    const std::vector<SearchCase> cases = {
        {1, 5, 1, 1},      {300, 3, 2, 0},     {2000, 37, 1, 10},  {2000, 37, 3, 10}, {2000, 37, 4, 10},
        {5000, 128, 1, 40}, {5000, 128, 70, 16}, {3000, 64, 9, 64}, {4100, 8, 1, 300}, {2500, 768, 1, 10},
        {2500, 768, 5, 10}, {700, 100, 66, 0},
    };
    bool ok = true;
    std::mt19937_64 rng(777);
    for (Dtype dt : kDtypes)
    for (Metric m : {Metric::Cosine, Metric::DotProduct, Metric::Euclidean}) {
        for (const SearchCase& c : cases) {
            std::unique_ptr<Engine> e = make(ctx, c.dim, m, dt, t);
            if (!e) break;
            Mirror mir = fill(*e, c.n, c.dim, rng);
            const std::size_t n = mir.size(), k = c.k == 0 ? n : std::min(c.k, n);
            char name[160];
            std::snprintf(name, sizeof name, "%s search %s %s n=%zu dim=%zu nq=%zu k=%zu", backend.c_str(),
                          dtype_name(dt), metric_name(m), n, c.dim, c.nq, k);
            ++t.cases;
            std::vector<float> back(n * c.dim);
            e->read(0, n, back.data());
            if (std::memcmp(back.data(), mir.rows.data(), back.size() * sizeof(float)) != 0) {
                std::printf("FAIL %s: read() differs from the stored values\n", name);
                ++t.failures, ok = false;
                continue;
            }
            // Rows, plus per-row data and slack, in the dtype's size (growth at most doubles;
            // a device engine's first pages hold about 1 MiB each whatever the store's size).
            const std::size_t rows_bytes = n * c.dim * dtype_size(dt);
            if (e->memory_bytes() < rows_bytes || e->memory_bytes() > 2 * rows_bytes + 64 * n + (4u << 20)) {
                std::printf("FAIL %s: memory_bytes() %zu for %zu bytes of rows\n", name, e->memory_bytes(), rows_bytes);
                ++t.failures, ok = false;
                continue;
            }
            Filter all;
            all.bits.assign((n + 63) / 64, 0);
            for (std::size_t s = 0; s < n; ++s) {
                all.slots.push_back(static_cast<std::uint32_t>(s));
                all.bits[s / 64] |= std::uint64_t{1} << (s % 64);
            }
            std::vector<float> q(c.nq * c.dim);
            std::uniform_real_distribution<float> u(-1.0f, 1.0f);
            for (auto& v : q) v = u(rng);
            if (c.nq > 1) std::copy_n(&mir.rows[(n / 2) * c.dim], c.dim, &q[c.dim]);  // an exact match
            std::vector<float> scores(c.nq * k);
            std::vector<std::int64_t> slots(c.nq * k, -1);
            try {
                e->search(q.data(), c.nq, k, scores.data(), slots.data());
            } catch (const BackendError& err) {
                std::printf("FAIL %s: %s\n", name, err.what());
                ++t.failures, ok = false;
                continue;
            }
            ok = check_queries(name, m, mir, all, q, c.nq, k, scores, slots, t) && ok;
        }
    }
    std::printf("%s %s search\n", ok ? "ok  " : "FAIL", backend.c_str());
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::function<bool(Context&, Tally&)>> ops = {{"filter", run_filter},
                                                                                {"search", run_search}};
    std::vector<std::string> wanted(argv + 1, argv + argc);
    if (wanted.empty())
        for (const auto& [name, fn] : ops) wanted.push_back(name);
    Tally t;
    bool ok = true;
    int backends = 0;
    for (const std::string& b : compiled_backends()) {
        if (!backend_available(b)) {
            std::printf("skip %s: %s\n", b.c_str(), backend_unavailable_reason(b).c_str());
            continue;
        }
        std::shared_ptr<Context> ctx = create_context(b);
        ++backends;
        for (const std::string& op : wanted) {
            auto it = ops.find(op);
            if (it == ops.end()) {
                std::printf("unknown operation %s\n", op.c_str());
                return 2;
            }
            ok = it->second(*ctx, t) && ok;
        }
    }
    std::printf("%d backends, %d cases, %d failed, %d backends skipped an operation\n", backends, t.cases, t.failures,
                t.skipped);
    return ok ? 0 : 1;
}
