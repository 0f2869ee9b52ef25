// Runs the Metal engine's search on the CPU: the dispatch steps of csrc/metal/search_plan.hpp,
// each kernel of csrc/metal/kernels.metal compiled as C++ and run by grid_sim over its full
// grid. The matrix multiply the engine leaves to MPS is a float32 loop here.
//
// usage: metal_sim IN OUT    (or metal_sim --bindings, see print_bindings)
//   IN : u64 n, dim, nq, k, metric (0 cosine, 1 dot, 2 Euclidean), product (0/1),
//        chunk budget in bytes (0 = default), filter (0 none, 1 mask, 2 list); then
//        f32 rows[n*dim], u32 ordinals[n], f32 queries[nq*dim]; with a filter, u64 m and
//        u32 passing rows[m] (ascending). k <= m.
//        The mask is built as the engine builds a chunk's: the store's bits re-based from
//        a chunk that starts at slot kChunkFirst (chunk_mask).
//   OUT: f32 scores[nq*k] (engine units: squared L2 for Euclidean), i64 slots[nq*k]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "grid_sim.hpp"
#include "metal/search_plan.hpp"
// Last: the shim's macros (kernel, device, constant, threadgroup) must not reach other headers.
#include "metal/msl_shim.hpp"

namespace msl {
#include "metal/kernels.metal"
}

namespace {

using hive_gpu::metal::Buf;
using hive_gpu::metal::ChunkShape;
using hive_gpu::metal::Kernel;
using hive_gpu::metal::Plan;
using hive_gpu::metal::Step;

static_assert(sizeof(msl::Params) == sizeof(hive_gpu::metal::Params), "one Params layout");

// A buffer aligned for 64-bit keys, filled with a pattern no kernel should read back.
struct Buffer {
    std::vector<std::uint64_t> words;
    void allocate(std::size_t bytes) { words.assign((bytes + 7) / 8, 0xa5a5a5a5a5a5a5a5ull); }
    template <typename T>
    T* as() { return reinterpret_cast<T*>(words.data()); }
};

struct Buffers {
    Buffer b[hive_gpu::metal::kBufCount];
    Buffer& operator[](Buf r) { return b[static_cast<int>(r)]; }
};

msl::Params to_msl(const hive_gpu::metal::Params& p) {
    msl::Params m;
    std::memcpy(&m, &p, sizeof m);
    return m;
}

void run_step(const Step& st, Buffers& bufs, const ChunkShape& shape) {
    if (st.product) {
        // scores[q][r] = queries[q] . rows[r] in float, as a float32 GEMM would.
        const float* Q = bufs[Buf::Queries].as<float>();
        const float* X = bufs[Buf::Rows].as<float>();
        float* S = bufs[Buf::Scores].as<float>();
        for (std::size_t q = 0; q < shape.nq; ++q)
            for (std::size_t r = 0; r < shape.n; ++r) {
                float acc = 0.0f;
                for (std::size_t j = 0; j < shape.dim; ++j) acc += Q[q * shape.dim + j] * X[r * shape.dim + j];
                S[q * shape.n + r] = acc;
            }
        return;
    }
    const msl::Params p = to_msl(st.params);
    auto arg = [&](std::size_t i) -> Buffer& {
        if (i >= st.args.size()) throw std::runtime_error("kernel bound with too few buffers");
        return bufs[st.args[i]];
    };
    auto gid = [](std::uint32_t lid, metal_sim::Group g) {
        return msl::uint3{g.x * hive_gpu::metal::kThreads + lid, g.y, g.z};
    };
    std::function<void(std::uint32_t, metal_sim::Group)> body;
    switch (st.function) {
        case Kernel::ScoreRows:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::score_rows(arg(0).as<float>(), arg(1).as<float>(), arg(2).as<float>(),
                                arg(3).as<float>(), arg(4).as<float>(), arg(5).as<std::uint32_t>(), p,
                                gid(lid, g));
            };
            break;
        case Kernel::FinishProducts:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::finish_products(arg(0).as<float>(), arg(1).as<float>(), arg(2).as<float>(), p,
                                     gid(lid, g));
            };
            break;
        case Kernel::SelectSegments:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::select_segments(arg(0).as<float>(), arg(1).as<std::uint32_t>(),
                                     arg(2).as<std::uint64_t>(), arg(3).as<std::uint32_t>(),
                                     arg(4).as<std::uint32_t>(), p, lid, msl::uint3{g.x, g.y, g.z});
            };
            break;
        case Kernel::MergeLists:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::merge_lists(arg(0).as<std::uint64_t>(), arg(1).as<std::uint32_t>(),
                                 arg(2).as<std::uint64_t>(), arg(3).as<std::uint32_t>(), p, gid(lid, g));
            };
            break;
        case Kernel::WriteResults:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::write_results(arg(0).as<std::uint64_t>(), arg(1).as<std::uint32_t>(),
                                   arg(2).as<float>(), arg(3).as<std::uint32_t>(), p, gid(lid, g));
            };
            break;
    }
    metal_sim::run_grid(st.groups, hive_gpu::metal::kThreads, body);
}

template <typename T>
void read_exact(std::FILE* f, T* data, std::size_t count) {
    if (count && std::fread(data, sizeof(T), count, f) != count) throw std::runtime_error("short input file");
}

}  // namespace

// `metal_sim --bindings`: for every kernel the plans use, its name and how many buffers the
// engine binds before the Params (at indices 0 .. count-1, Params at count). The test holds
// these against the [[buffer(i)]] attributes of kernels.metal, which the C++ build ignores.
int print_bindings() {
    for (const bool product : {false, true})
        for (const std::size_t n : {std::size_t{1}, std::size_t{5000}}) {
            const Plan plan = hive_gpu::metal::plan_chunk({n, 3, 2, std::min<std::size_t>(n, 4), 0, product,
                                                           product ? hive_gpu::metal::kSelMask : hive_gpu::metal::kSelList});
            for (const Step& st : plan.steps)
                if (!st.product)
                    std::printf("%s %zu\n", hive_gpu::metal::kernel_name(st.function), st.args.size());
        }
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 2 && std::strcmp(argv[1], "--bindings") == 0) return print_bindings();
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s IN OUT | %s --bindings\n", argv[0], argv[0]);
        return 2;
    }
    try {
        std::FILE* in = std::fopen(argv[1], "rb");
        if (!in) throw std::runtime_error(std::string("cannot open ") + argv[1]);
        std::uint64_t h[8];
        read_exact(in, h, 8);
        const std::size_t n = h[0], dim = h[1], nq = h[2], k = h[3];
        const std::uint32_t metric = static_cast<std::uint32_t>(h[4]);
        const bool product = h[5] != 0;
        const std::size_t budget = h[6] ? h[6] : (std::size_t{256} << 20);
        const std::uint32_t sel = static_cast<std::uint32_t>(h[7]);
        if (n == 0 || dim == 0 || nq == 0 || k == 0 || k > n || metric > 2 || sel > 2)
            throw std::runtime_error("invalid shape in input header");
        std::vector<float> rows(n * dim), queries(nq * dim);
        std::vector<std::uint32_t> ordinals(n), passing;
        read_exact(in, rows.data(), rows.size());
        read_exact(in, ordinals.data(), ordinals.size());
        read_exact(in, queries.data(), queries.size());
        if (sel != hive_gpu::metal::kSelAll) {
            std::uint64_t m = 0;
            read_exact(in, &m, 1);
            if (m == 0 || m > n || k > m) throw std::runtime_error("invalid filter");
            passing.resize(m);
            read_exact(in, passing.data(), m);
        }
        std::fclose(in);
        // The chunk's RowSel, as the engine fills it.
        constexpr std::size_t kChunkFirst = 101;
        std::vector<std::uint32_t> rowsel(n + 1, 0);
        if (sel == hive_gpu::metal::kSelList) {
            std::copy(passing.begin(), passing.end(), rowsel.begin());
        } else if (sel == hive_gpu::metal::kSelMask) {
            std::vector<std::uint64_t> store_bits((kChunkFirst + n + 63) / 64, 0);
            for (std::uint32_t r : passing) store_bits[(kChunkFirst + r) / 64] |= std::uint64_t{1} << ((kChunkFirst + r) % 64);
            hive_gpu::metal::chunk_mask(store_bits.data(), kChunkFirst, n, rowsel.data());
        }
        const std::size_t scored = sel == hive_gpu::metal::kSelList ? passing.size() : n;

        // The engine's resident buffers, as append() fills them.
        Buffers bufs;
        bufs[Buf::Rows].allocate(rows.size() * sizeof(float));
        std::memcpy(bufs[Buf::Rows].as<float>(), rows.data(), rows.size() * sizeof(float));
        bufs[Buf::RowFactors].allocate(n * sizeof(float));
        for (std::size_t r = 0; r < n; ++r)
            bufs[Buf::RowFactors].as<float>()[r] = hive_gpu::metal::vector_factor(&rows[r * dim], dim, metric);
        bufs[Buf::Ordinals].allocate(n * sizeof(std::uint32_t));
        std::memcpy(bufs[Buf::Ordinals].as<std::uint32_t>(), ordinals.data(), n * sizeof(std::uint32_t));

        std::vector<float> out_scores(nq * k);
        std::vector<std::int64_t> out_slots(nq * k);
        const std::size_t chunk = hive_gpu::metal::query_chunk(scored, dim, k, nq, budget);
        for (std::size_t q0 = 0; q0 < nq; q0 += chunk) {
            const ChunkShape shape{scored, dim, std::min(chunk, nq - q0), k, metric, product, sel};
            const Plan plan = hive_gpu::metal::plan_chunk(shape);
            for (int b = static_cast<int>(Buf::Queries); b < hive_gpu::metal::kBufCount; ++b)
                bufs.b[b].allocate(hive_gpu::metal::chunk_buffer_bytes(static_cast<Buf>(b), shape, plan));
            std::copy_n(rowsel.data(), std::min(rowsel.size(), bufs[Buf::RowSel].words.size() * 2),
                        bufs[Buf::RowSel].as<std::uint32_t>());
            std::memcpy(bufs[Buf::Queries].as<float>(), &queries[q0 * dim], shape.nq * dim * sizeof(float));
            for (std::size_t q = 0; q < shape.nq; ++q)
                bufs[Buf::QueryFactors].as<float>()[q] =
                    hive_gpu::metal::vector_factor(&queries[(q0 + q) * dim], dim, metric);
            for (const Step& st : plan.steps) run_step(st, bufs, shape);
            for (std::size_t i = 0; i < shape.nq * k; ++i) {
                out_scores[q0 * k + i] = bufs[Buf::OutScores].as<float>()[i];
                const std::uint32_t slot = bufs[Buf::OutSlots].as<std::uint32_t>()[i];
                out_slots[q0 * k + i] = slot == hive_gpu::metal::kNoSlot ? -1 : slot;
            }
        }

        std::FILE* out = std::fopen(argv[2], "wb");
        if (!out) throw std::runtime_error(std::string("cannot open ") + argv[2]);
        std::fwrite(out_scores.data(), sizeof(float), out_scores.size(), out);
        std::fwrite(out_slots.data(), sizeof(std::int64_t), out_slots.size(), out);
        if (std::fclose(out) != 0) throw std::runtime_error("cannot write output");
    } catch (const std::exception& e) {
        std::fprintf(stderr, "metal_sim: %s\n", e.what());
        return 1;
    }
    return 0;
}
