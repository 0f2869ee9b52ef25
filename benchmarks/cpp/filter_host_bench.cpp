// The host side of filtered search, alone: a VectorStorage over an engine that does no
// scoring (it returns the first k passing slots), so every microsecond measured is the
// core's own work: evaluating the filter against the metadata indexes, the bitset and slot
// list handed to the engine, naming the hits. Same metadata as benchmarks/bench_filter.py
// ("group": "a" on 50% of rows, "b" on 1%, "c" on 0.01%, "d" on the rest, at random) plus
// an int "year" in [2000, 2025) for ranges and conjunctions. Median wall time after warm-up.
// --adds N first times the core's bookkeeping of a bulk add of N string ids without
// metadata (id checks, the id index, ordinals, the metadata column) over the same engine.
//
//   filter_host_bench [--n 10000000] [--dim 128] [--k 10] [--batch 64] [--runs 50] [--adds 0]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench_util.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/filter.hpp"
#include "hive_gpu/storage.hpp"

using namespace hive_gpu;
using bench::median_ms;
using bench::Rng;

namespace {

// Keeps only the size: searches return the first k passing slots with score 0.
class NullEngine final : public Engine {
   public:
    explicit NullEngine(std::size_t dim) : dim_(dim) {}
    std::size_t dimension() const override { return dim_; }
    Metric metric() const override { return Metric::Cosine; }
    std::size_t size() const override { return n_; }
    Dtype dtype() const override { return Dtype::Float32; }
    void reserve(std::size_t) override {}
    void append(const void*, const std::uint32_t*, std::size_t n) override { n_ += n; }
    void append_device(const void*, Dtype, std::size_t, const std::uint32_t*, std::size_t n, std::uintptr_t) override {
        n_ += n;
    }
    void write(std::size_t, const void*) override {}
    void move(std::size_t, std::size_t) override {}
    void truncate(std::size_t n) override { n_ = n; }
    void set_ordinals(const std::uint32_t*, std::size_t) override {}
    void read(std::size_t, std::size_t n, float* out) const override { std::fill(out, out + n * dim_, 0.0f); }
    void search(const float*, std::size_t nq, std::size_t k, float* scores, std::int64_t* slots) const override {
        for (std::size_t q = 0; q < nq; ++q)
            for (std::size_t j = 0; j < k; ++j) scores[q * k + j] = 0.0f, slots[q * k + j] = static_cast<std::int64_t>(j);
    }
    void search_filtered(const float*, std::size_t nq, std::size_t k, const SlotFilter& f, float* scores,
                         std::int64_t* slots) const override {
        std::vector<std::int64_t> first;
        if (f.slots) {
            first.assign(f.slots, f.slots + k);
        } else {
            for (std::size_t w = 0; first.size() < k; ++w)
                for (std::uint64_t b = f.bits[w]; b && first.size() < k; b &= b - 1)
                    first.push_back(static_cast<std::int64_t>(w * 64 + static_cast<std::size_t>(__builtin_ctzll(b))));
        }
        for (std::size_t q = 0; q < nq; ++q)
            for (std::size_t j = 0; j < k; ++j) scores[q * k + j] = 0.0f, slots[q * k + j] = first[j];
    }
    std::size_t memory_bytes() const override { return 0; }

   private:
    std::size_t dim_, n_ = 0;
};

FilterExpr eq(const char* key, FilterExpr v) { return FilterExpr::object({{key, std::move(v)}}); }
FilterExpr op(const char* key, const char* o, FilterExpr v) {
    return FilterExpr::object({{key, FilterExpr::object({{o, std::move(v)}})}});
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t n = 10000000, dim = 128, k = 10, batch = 64;
    int runs = 50;
    std::size_t adds = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--n") n = std::stoull(v);
        else if (a == "--dim") dim = std::stoull(v);
        else if (a == "--k") k = std::stoull(v);
        else if (a == "--batch") batch = std::stoull(v);
        else if (a == "--runs") runs = std::stoi(v);
        else if (a == "--adds") adds = std::stoull(v);
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    if (adds) {
        std::vector<std::string> ids;
        for (std::size_t i = 0; i < adds; ++i) ids.push_back("id" + std::to_string(i));
        std::vector<float> one(dim, 0.5f);
        std::vector<double> t;
        for (int r = 0; r < 7; ++r) {
            VectorStorage s(create_context("cpu"), std::make_unique<NullEngine>(dim));
            std::vector<std::string> batch = ids;
            // Rows are not read by this engine: one row's memory stands for all (checked rows
            // would be, so the batch goes in as device rows, which the engine would check).
            const auto a = std::chrono::steady_clock::now();
            s.add_vectors_device(std::move(batch), one.data(), adds, dim, dim, 0);
            t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
        }
        std::sort(t.begin(), t.end());
        std::printf("add of %zu ids without metadata (bookkeeping only): %.2f ms median, %.2f ms min\n", adds,
                    t[t.size() / 2], t.front());
        if (n == 0) return 0;
    }
    VectorStorage store(create_context("cpu"), std::make_unique<NullEngine>(dim));
    // Groups as bench_filter.py assigns them: a random permutation cut into 50%, 1%, 0.01%.
    std::vector<char> group(n, 'd');
    {
        std::vector<std::uint32_t> perm(n);
        for (std::size_t i = 0; i < n; ++i) perm[i] = static_cast<std::uint32_t>(i);
        Rng rng{42};
        for (std::size_t i = n; i > 1; --i) std::swap(perm[i - 1], perm[rng.next() % i]);
        std::size_t at = 0;
        for (auto [g, share] : {std::pair<char, double>{'a', 0.5}, {'b', 0.01}, {'c', 0.0001}}) {
            const std::size_t m = std::max(k, static_cast<std::size_t>(static_cast<double>(n) * share + 0.5));
            for (std::size_t i = at; i < at + m && i < n; ++i) group[perm[i]] = g;
            at += m;
        }
    }
    Rng rng{7};
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t step = std::size_t{1} << 20;
    std::vector<float> rows(step * dim, 0.5f);
    for (std::size_t a = 0; a < n; a += step) {
        const std::size_t b = std::min(n, a + step);
        std::vector<std::string> ids;
        std::vector<Metadata> md;
        ids.reserve(b - a);
        md.reserve(b - a);
        for (std::size_t i = a; i < b; ++i) {
            ids.push_back("v" + std::to_string(i));
            md.push_back(Metadata{{"group", std::string(1, group[i])},
                                  {"year", static_cast<std::int64_t>(2000 + rng.next() % 25)}});
        }
        store.add_vectors(std::move(ids), rows.data(), b - a, dim, std::move(md));
    }
    std::printf("filter_host_bench: %zu rows, dim %zu, k %zu, batch %zu (built in %.1f s); ms, median of %d\n", n, dim,
                k, batch, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), runs);

    std::vector<float> q(batch * dim, 0.25f);
    const double plain1 = median_ms(runs, [&] { store.search(q.data(), dim, static_cast<std::int64_t>(k)); });
    const double plainb = median_ms(runs, [&] { store.search_batch(q.data(), batch, dim, static_cast<std::int64_t>(k)); });
    std::printf("%-44s %10s %10s %10s %10s\n", "filter", "passing", "count()", "1 query", "batch");
    std::printf("%-44s %10zu %10s %10.4f %10.4f\n", "(none)", n, "", plain1, plainb);
    const std::vector<std::pair<const char*, FilterExpr>> cases = {
        {"group == a (50%)", eq("group", FilterExpr::of("a"))},
        {"group == b (1%)", eq("group", FilterExpr::of("b"))},
        {"group == c (0.01%)", eq("group", FilterExpr::of("c"))},
        {"group in [b, c]", op("group", "$in", FilterExpr::list({FilterExpr::of("b"), FilterExpr::of("c")}))},
        {"group != d", op("group", "$ne", FilterExpr::of("d"))},
        {"year >= 2024 (4%)", op("year", "$gte", FilterExpr::of(2024))},
        {"group == b and year < 2005", FilterExpr::object({{"group", FilterExpr::of("b")},
                                                           {"year", FilterExpr::object({{"$lt", FilterExpr::of(2005)}})}})},
        {"$or [group == c, year == 2001]",
         FilterExpr::object({{"$or", FilterExpr::list({eq("group", FilterExpr::of("c")), eq("year", FilterExpr::of(2001))})}})},
        {"$id in 100 ids", FilterExpr::object({{"$id", FilterExpr::object({{"$in", [&] {
                                                   std::vector<FilterExpr> v;
                                                   for (std::size_t i = 0; i < 100; ++i)
                                                       v.push_back(FilterExpr::of("v" + std::to_string(i * (n / 100))));
                                                   return FilterExpr::list(std::move(v));
                                               }()}})}})},
    };
    for (const auto& [name, expr] : cases) {
        const Filter f = Filter::parse(expr);
        const std::size_t passing = store.count(f);
        const double c = median_ms(runs, [&] { store.count(f); });
        const double one = median_ms(runs, [&] { store.search(q.data(), dim, static_cast<std::int64_t>(k), f); });
        const double many =
            median_ms(runs, [&] { store.search_batch(q.data(), batch, dim, static_cast<std::int64_t>(k), f); });
        std::printf("%-44s %10zu %10.4f %10.4f %10.4f\n", name, passing, c, one, many);
    }
    return 0;
}
