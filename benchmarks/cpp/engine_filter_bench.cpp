// Filtered search at the engine level (no VectorStorage): one backend's search() against
// search_filtered() at several pass rates, single queries and a batch with one shared filter,
// and at each rate the dense path (slot list withheld) beside the engine's own choice, which
// is what tunes the engines' kSparseRatio. Median wall time of --runs calls after warm-up.
//
//   engine_filter_bench [--backend cuda] [--n 10000000] [--dim 128] [--k 10] [--batch 64]
//                       [--runs 20] [--json out.json]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/engine.hpp"

using namespace hive_gpu;
using bench::median_ms;
using bench::Rng;

namespace {

struct Filter {
    std::vector<std::uint64_t> bits;
    std::vector<std::uint32_t> slots;
};

// About rate * n passing slots, at least k.
Filter make_filter(std::size_t n, double rate, std::size_t k, Rng& rng) {
    Filter f;
    f.bits.assign((n + 63) / 64, 0);
    const std::uint64_t threshold = static_cast<std::uint64_t>(rate * 18446744073709551615.0);
    for (std::size_t s = 0; s < n; ++s)
        if (rate >= 1.0 || rng.next() < threshold) f.slots.push_back(static_cast<std::uint32_t>(s));
    for (std::size_t s = 0; f.slots.size() < k; ++s)
        if (!std::binary_search(f.slots.begin(), f.slots.end(), static_cast<std::uint32_t>(s))) {
            f.slots.insert(std::lower_bound(f.slots.begin(), f.slots.end(), static_cast<std::uint32_t>(s)),
                           static_cast<std::uint32_t>(s));
        }
    for (std::uint32_t s : f.slots) f.bits[s / 64] |= std::uint64_t{1} << (s % 64);
    return f;
}

}  // namespace

int main(int argc, char** argv) {
    std::string backend = "cuda", json;
    std::size_t n = 10000000, dim = 128, k = 10, batch = 64;
    int runs = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--backend") backend = v;
        else if (a == "--n") n = std::stoull(v);
        else if (a == "--dim") dim = std::stoull(v);
        else if (a == "--k") k = std::stoull(v);
        else if (a == "--batch") batch = std::stoull(v);
        else if (a == "--runs") runs = std::stoi(v);
        else if (a == "--json") json = v;
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    if (!backend_available(backend)) {
        std::printf("%s unavailable: %s\n", backend.c_str(), backend_unavailable_reason(backend).c_str());
        return 0;
    }
    std::shared_ptr<Context> ctx = create_context(backend);
    std::unique_ptr<Engine> e = ctx->make_engine(dim, Metric::Cosine, Dtype::Float32);
    Rng rng{0x9e3779b97f4a7c15ull};
    {
        const std::size_t piece = std::max<std::size_t>(1, (std::size_t{256} << 20) / (dim * sizeof(float)));
        std::vector<float> rows;
        std::vector<std::uint32_t> ords;
        e->reserve(n);
        for (std::size_t first = 0; first < n; first += piece) {
            const std::size_t cnt = std::min(piece, n - first);
            rows.resize(cnt * dim);
            ords.resize(cnt);
            for (auto& x : rows) x = rng.uniform();
            for (std::size_t i = 0; i < cnt; ++i) ords[i] = static_cast<std::uint32_t>(first + i);
            e->append(rows.data(), ords.data(), cnt);
        }
    }
    std::vector<float> queries(batch * dim);
    for (auto& x : queries) x = rng.uniform();
    std::vector<float> scores(batch * k);
    std::vector<std::int64_t> slots(batch * k);

    const double plain1 = median_ms(runs, [&] { e->search(queries.data(), 1, k, scores.data(), slots.data()); });
    const double plainb = median_ms(runs, [&] { e->search(queries.data(), batch, k, scores.data(), slots.data()); });
    std::printf("%s %zu x %zu, k=%zu: unfiltered 1 query %.3f ms, %zu queries %.3f ms\n", backend.c_str(), n, dim, k,
                plain1, batch, plainb);
    std::printf("%9s %10s %12s %9s %12s %12s %9s\n", "pass", "count", "1q ms", "x plain", "1q dense ms",
                "batch ms", "x plain");
    std::string rows_json;
    for (double rate : {1.0, 0.5, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.001, 0.0001}) {
        const Filter f = make_filter(n, rate, k, rng);
        SlotFilter sf{f.bits.data(), f.slots.size(), f.slots.data()};
        SlotFilter dense = sf;
        dense.slots = nullptr;
        const double one = median_ms(runs, [&] { e->search_filtered(queries.data(), 1, k, sf, scores.data(), slots.data()); });
        const double one_dense =
            median_ms(runs, [&] { e->search_filtered(queries.data(), 1, k, dense, scores.data(), slots.data()); });
        const double many =
            median_ms(runs, [&] { e->search_filtered(queries.data(), batch, k, sf, scores.data(), slots.data()); });
        std::printf("%8.4f%% %10zu %12.3f %9.3f %12.3f %12.3f %9.3f\n", rate * 100, f.slots.size(), one, one / plain1,
                    one_dense, many, many / plainb);
        char buf[320];
        std::snprintf(buf, sizeof buf,
                      "%s{\"pass\": %.6g, \"count\": %zu, \"single_ms\": %.6g, \"single_dense_ms\": %.6g, "
                      "\"batch_ms\": %.6g}",
                      rows_json.empty() ? "" : ", ", rate, f.slots.size(), one, one_dense, many);
        rows_json += buf;
    }
    if (!json.empty()) {
        std::FILE* out = std::fopen(json.c_str(), "w");
        if (!out) return 1;
        std::fprintf(out,
                     "{\"backend\": \"%s\", \"n\": %zu, \"dim\": %zu, \"k\": %zu, \"batch\": %zu, "
                     "\"unfiltered_single_ms\": %.6g, \"unfiltered_batch_ms\": %.6g, \"filtered\": [%s]}\n",
                     backend.c_str(), n, dim, k, batch, plain1, plainb, rows_json.c_str());
        std::fclose(out);
    }
    return 0;
}
