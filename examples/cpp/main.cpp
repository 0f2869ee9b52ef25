// hive_gpu from C++: make a context, fill a store, search it. The program then checks every
// answer against a double-precision brute force on each available backend and exits 1 on
// any wrong result, so it doubles as the test of an installed hive_gpu.
//
//   app              every compiled backend that has a device here
//   app cpu cuda     only these (a named backend that cannot run is a failure)

#include <hive_gpu/async.hpp>
#include <hive_gpu/backend_list.hpp>
#include <hive_gpu/hive_gpu.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
    if (!ok) {
        ++failures;
        std::printf("  FAIL %s\n", what.c_str());
    }
}

// The score hive_gpu defines for each metric, in double precision.
double reference_score(hive_gpu::Metric metric, const float* q, const float* x, std::size_t dim) {
    double dot = 0, qq = 0, xx = 0, l2 = 0;
    for (std::size_t i = 0; i < dim; ++i) {
        dot += double(q[i]) * x[i];
        qq += double(q[i]) * q[i];
        xx += double(x[i]) * x[i];
        l2 += (double(q[i]) - x[i]) * (double(q[i]) - x[i]);
    }
    switch (metric) {
        case hive_gpu::Metric::Cosine: return (qq == 0 || xx == 0) ? 0.0 : dot / std::sqrt(qq * xx);
        case hive_gpu::Metric::DotProduct: return dot;
        case hive_gpu::Metric::Euclidean: return std::sqrt(l2);
    }
    return 0;
}

// float32 arithmetic on the device against float64 here: relative tolerance.
bool close(double got, double want) { return std::abs(got - want) <= 1e-3 * std::max(1.0, std::abs(want)); }

// hits must be the k best rows of `rows` for `query`: same score at every rank, and each
// returned id really has the score reported for it (so near-ties may swap, nothing else).
void check_hits(const hive_gpu::VectorStorage& store, const std::vector<std::string>& ids,
                const std::vector<float>& rows, const float* query, const std::string* hit_ids,
                const float* hit_scores, std::size_t k, const std::string& what) {
    const std::size_t dim = store.dimension();
    const auto metric = store.metric();
    std::vector<double> ref(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i)
        ref[i] = reference_score(metric, query, &rows[i * dim], dim);
    std::vector<std::size_t> order(ids.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return hive_gpu::higher_is_better(metric) ? ref[a] > ref[b] : ref[a] < ref[b];
    });
    for (std::size_t j = 0; j < k; ++j) {
        check(close(hit_scores[j], ref[order[j]]),
              what + ": rank " + std::to_string(j) + " score " + std::to_string(hit_scores[j]) +
                  ", expected " + std::to_string(ref[order[j]]));
        auto it = std::find(ids.begin(), ids.end(), hit_ids[j]);
        check(it != ids.end() && close(hit_scores[j], ref[std::size_t(it - ids.begin())]),
              what + ": rank " + std::to_string(j) + " id " + hit_ids[j] + " has another score");
    }
}

template <class E, class F>
void expect_throw(F&& f, const std::string& what) {
    try {
        f();
    } catch (const E&) {
        return;
    } catch (const std::exception& e) {
        check(false, what + ": threw the wrong error: " + e.what());
        return;
    }
    check(false, what + ": did not throw");
}

void exercise(const std::shared_ptr<hive_gpu::Context>& ctx, hive_gpu::Metric metric) {
    const std::string tag = ctx->backend() + "/" + hive_gpu::metric_name(metric);
    constexpr std::size_t n = 500, dim = 48, nq = 7, k = 10;

    std::mt19937 gen(1234);
    std::normal_distribution<float> normal;
    std::vector<float> rows(n * dim), queries(nq * dim);
    for (float& v : rows) v = normal(gen);
    for (float& v : queries) v = normal(gen);
    std::vector<std::string> ids(n);
    std::vector<hive_gpu::Metadata> metadata(n);
    for (std::size_t i = 0; i < n; ++i) {
        ids[i] = "doc-" + std::to_string(i);
        metadata[i] = {{"shard", std::int64_t(i % 4)}, {"name", "doc " + std::to_string(i)}};
    }

    // The quick start: one store, a batch of vectors, a batch of queries.
    auto store = ctx->create_storage(dim, metric);
    store->add_vectors(ids, rows.data(), n, dim, metadata);
    hive_gpu::BatchResult batch = store->search_batch(queries.data(), nq, dim, k);

    check(store->size() == n, tag + ": size after add_vectors");
    check(batch.nq == nq && batch.k == k, tag + ": batch shape");
    for (std::size_t q = 0; q < nq; ++q)
        check_hits(*store, ids, rows, &queries[q * dim], &batch.ids[q * k], &batch.scores[q * k], k,
                   tag + ": search_batch query " + std::to_string(q));

    // Single-query search: the same answer, with each hit's metadata.
    auto hits = store->search(queries.data(), dim, k);
    std::vector<std::string> hit_ids;
    std::vector<float> hit_scores;
    auto split = [&] {
        hit_ids.clear();
        hit_scores.clear();
        for (const auto& h : hits) {
            hit_ids.push_back(h.id);
            hit_scores.push_back(h.score);
        }
    };
    split();
    check(hits.size() == k, tag + ": search returns k hits");
    if (hits.size() != k) return;
    check_hits(*store, ids, rows, queries.data(), hit_ids.data(), hit_scores.data(), k, tag + ": search");
    for (const auto& h : hits)
        check(h.metadata == metadata[std::stoul(h.id.substr(4))], tag + ": metadata of " + h.id);

    // A filtered search: only shard 2 may answer, ranked as the search over those rows alone.
    const auto shard2 = hive_gpu::Filter::parse(
        hive_gpu::FilterExpr::object({{"shard", hive_gpu::FilterExpr::of(2)}}));
    check(store->count(shard2) == n / 4, tag + ": count of shard 2");
    auto filtered = store->search(queries.data(), dim, k, shard2);
    check(filtered.size() == k, tag + ": filtered search returns k hits");
    std::vector<std::string> shard_ids;
    std::vector<float> shard_rows;
    for (std::size_t i = 2; i < n; i += 4) {
        shard_ids.push_back(ids[i]);
        shard_rows.insert(shard_rows.end(), &rows[i * dim], &rows[(i + 1) * dim]);
    }
    std::vector<std::string> filtered_ids;
    std::vector<float> filtered_scores;
    for (const auto& h : filtered) {
        filtered_ids.push_back(h.id);
        filtered_scores.push_back(h.score);
        check(std::get<std::int64_t>(h.metadata.at("shard")) == 2, tag + ": filtered hit outside shard 2");
    }
    if (filtered.size() == k)
        check_hits(*store, shard_ids, shard_rows, queries.data(), filtered_ids.data(), filtered_scores.data(), k,
                   tag + ": filtered search");

    // get_vector returns the data exactly as given.
    auto v = store->get_vector("doc-17");
    check(v && v->data == std::vector<float>(&rows[17 * dim], &rows[18 * dim]), tag + ": get_vector");
    check(!store->get_vector("no-such-id"), tag + ": get_vector of an unknown id");

    // Remove the best hit: it must vanish from the results and the rest must still be right.
    const std::string best = hits[0].id;
    check(store->remove_vector(best), tag + ": remove_vector");
    check(!store->contains(best) && store->size() == n - 1, tag + ": size after remove");
    std::size_t gone = std::stoul(best.substr(4));
    std::vector<std::string> ids_left = ids;
    std::vector<float> rows_left = rows;
    ids_left.erase(ids_left.begin() + long(gone));
    rows_left.erase(rows_left.begin() + long(gone * dim), rows_left.begin() + long((gone + 1) * dim));
    hits = store->search(queries.data(), dim, k);
    split();
    check(std::find(hit_ids.begin(), hit_ids.end(), best) == hit_ids.end(), tag + ": removed id returned");
    check_hits(*store, ids_left, rows_left, queries.data(), hit_ids.data(), hit_scores.data(), k,
               tag + ": search after remove");

    // Update a row to equal the query: it becomes the nearest (cosine 1, distance 0).
    if (metric != hive_gpu::Metric::DotProduct) {
        const std::string target = ids_left[3];
        check(store->update_vector(target, queries.data(), dim), tag + ": update_vector");
        hits = store->search(queries.data(), dim, 1);
        check(hits.size() == 1 && hits[0].id == target, tag + ": updated row ranks first");
        double want = metric == hive_gpu::Metric::Cosine ? 1.0 : 0.0;
        check(hits.size() == 1 && std::abs(hits[0].score - want) < 1e-3, tag + ": updated row's score");
    }
    check(!store->update_vector("no-such-id", queries.data(), dim), tag + ": update of an unknown id");

    // Bad input is an exception and leaves the store as it was.
    const std::size_t before = store->size();
    expect_throw<hive_gpu::DuplicateIdError>(
        [&] { store->add_vector("doc-0", rows.data(), dim); }, tag + ": duplicate id");
    expect_throw<hive_gpu::DimensionMismatchError>(
        [&] { store->add_vector("short", rows.data(), dim - 1); }, tag + ": wrong dimension");
    expect_throw<hive_gpu::InvalidArgumentError>(
        [&] { store->search(queries.data(), dim, 0); }, tag + ": k = 0");
    check(store->size() == before, tag + ": size after rejected calls");

    // k beyond the count returns every row.
    check(store->search(queries.data(), dim, std::int64_t(n) * 2).size() == before, tag + ": k > count");

    // A saved store loads back with the same answers.
    auto path = std::filesystem::temp_directory_path() /
                ("hive_gpu_example_" + ctx->backend() + "_" + hive_gpu::metric_name(metric) + ".hgpu");
    store->save(path.string());
    auto loaded = hive_gpu::VectorStorage::load(ctx, path.string());
    std::filesystem::remove(path);
    auto a = store->search_batch(queries.data(), nq, dim, k);
    auto b = loaded->search_batch(queries.data(), nq, dim, k);
    bool same = loaded->size() == before && a.ids == b.ids;
    for (std::size_t i = 0; same && i < a.scores.size(); ++i) same = close(b.scores[i], a.scores[i]);
    check(same, tag + ": save/load round trip");

    // Upsert replaces a stored row and adds a new one, get_vectors reads both back, and the
    // async queue runs an update and a removal in the order they were issued.
    {
        const std::vector<float> two(queries.begin(), queries.begin() + long(2 * dim));
        store->upsert_vectors({ids_left[0], "upserted"}, two.data(), 2, dim);
        std::vector<float> back(2 * dim);
        store->get_vectors({ids_left[0], "upserted"}, back.data());
        check(back == two && store->size() == before + 1, tag + ": upsert_vectors and get_vectors");
        hive_gpu::AsyncStorage async(store);
        auto updated = async.update_vector("upserted", std::vector<float>(rows.begin(), rows.begin() + long(dim)));
        auto removed = async.remove_vector(ids_left[0]);
        check(updated.get() && removed.get() && !store->contains(ids_left[0]) && store->size() == before,
              tag + ": async update and remove");
        expect_throw<hive_gpu::VectorNotFoundError>(
            [&] { store->get_vectors({ids_left[0]}, back.data()); }, tag + ": get_vectors of a removed id");
    }

    store->clear();
    check(store->size() == 0 && store->search(queries.data(), dim, k).empty(), tag + ": clear");
}

}  // namespace

int main(int argc, char** argv) {
    std::printf("hive_gpu %s, compiled backends:", HIVE_GPU_VERSION);
    for (const auto& b : hive_gpu::compiled_backends()) std::printf(" %s", b.c_str());
    std::printf("\n");
    // The installed header's list of backends is the library's.
    std::vector<std::string> listed;
#define LIST_BACKEND(name) listed.emplace_back(#name);
    HIVE_GPU_COMPILED_BACKENDS(LIST_BACKEND)
#undef LIST_BACKEND
    check(listed == hive_gpu::compiled_backends(), "hive_gpu/backend_list.hpp lists the compiled backends");

    std::vector<std::string> wanted(argv + 1, argv + argc);
    const bool named = !wanted.empty();
    if (!named) wanted = hive_gpu::compiled_backends();

    int ran = 0;
    for (const auto& backend : wanted) {
        if (!hive_gpu::backend_available(backend)) {
            std::string why = hive_gpu::backend_unavailable_reason(backend);
            std::printf("%s: unavailable (%s)\n", backend.c_str(), why.empty() ? "not compiled in" : why.c_str());
            if (named) ++failures;
            continue;
        }
        try {
            auto ctx = hive_gpu::create_context(backend);
            std::printf("%s: %s\n", backend.c_str(), ctx->device_info().name.c_str());
            for (auto metric : {hive_gpu::Metric::Cosine, hive_gpu::Metric::DotProduct, hive_gpu::Metric::Euclidean})
                exercise(ctx, metric);
            ++ran;
        } catch (const hive_gpu::Error& e) {
            check(false, backend + ": " + e.what());
        }
    }
    check(ran > 0, "no backend ran");
    std::printf("%s (%d failure%s)\n", failures ? "FAILED" : "all checks passed", failures, failures == 1 ? "" : "s");
    return failures ? 1 : 0;
}
