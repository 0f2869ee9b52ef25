// Runs the Metal engine's search on the CPU: the rows split into the engine's pages, the
// dispatch steps of csrc/metal/search_plan.hpp for every page, each kernel of
// csrc/metal/kernels.metal compiled as C++ and run by grid_sim over its full grid, and the
// host merge of the pages' lists. The matrix multiply the engine leaves to MPS is a float32
// loop here.
//
// usage: metal_sim IN OUT    (or metal_sim --bindings | --pages, see print_bindings, print_pages)
//   IN : u64 n, dim, nq, k, metric (0 cosine, 1 dot, 2 Euclidean), product (0/1),
//        tile budget in bytes (0 = default), filter (0 none, 1 mask, 2 list),
//        dtype (0 float32, 1 float16, 2 bfloat16), first page rows and rows per page
//        (0 and 0: one page); then rows[n*dim] (f32, or u16 bit patterns), u32 ordinals[n],
//        f32 queries[nq*dim]; with a filter, u64 m and u32 passing rows[m] (ascending).
//        k <= m. Each page's mask or list is made from the store's as the engine makes it.
//   OUT: f32 scores[nq*k] (engine units: squared L2 for Euclidean), i64 slots[nq*k]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
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

// Where each buffer role of a dispatch is bound: a buffer and a byte offset, as the engine's
// setBuffer:offset:atIndex:.
struct Binding {
    Buffer* buffer = nullptr;
    std::size_t offset = 0;
    template <typename T>
    T* as() const { return reinterpret_cast<T*>(reinterpret_cast<char*>(buffer->words.data()) + offset); }
};

struct Bindings {
    Binding b[hive_gpu::metal::kBufCount];
    Binding& operator[](Buf r) { return b[static_cast<int>(r)]; }
};

msl::Params to_msl(const hive_gpu::metal::Params& p) {
    msl::Params m;
    std::memcpy(&m, &p, sizeof m);
    return m;
}

void run_step(const Step& st, Bindings& bufs, const ChunkShape& shape) {
    if (st.product) {
        // scores[q][r] = queries[q] . rows[r] in float, as a float32 GEMM would.
        if (shape.dtype != hive_gpu::Dtype::Float32) throw std::runtime_error("a product step over 16-bit rows");
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
    auto arg = [&](std::size_t i) -> Binding& {
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
                msl::score_rows(arg(0).as<float>(), arg(1).as<float>(), arg(2).as<float>(), arg(3).as<float>(),
                                arg(4).as<float>(), arg(5).as<std::uint32_t>(), p, gid(lid, g));
            };
            break;
        case Kernel::ScoreRowsF16:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::score_rows_f16(arg(0).as<msl::half>(), arg(1).as<float>(), arg(2).as<float>(),
                                    arg(3).as<float>(), arg(4).as<float>(), arg(5).as<std::uint32_t>(), p, gid(lid, g));
            };
            break;
        case Kernel::ScoreRowsBF16:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::score_rows_bf16(arg(0).as<msl::ushort>(), arg(1).as<float>(), arg(2).as<float>(),
                                     arg(3).as<float>(), arg(4).as<float>(), arg(5).as<std::uint32_t>(), p, gid(lid, g));
            };
            break;
        case Kernel::FinishProducts:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::finish_products(arg(0).as<float>(), arg(1).as<float>(), arg(2).as<float>(), p, gid(lid, g));
            };
            break;
        case Kernel::SelectSegments:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::select_segments(arg(0).as<float>(), arg(1).as<std::uint32_t>(), arg(2).as<std::uint64_t>(),
                                     arg(3).as<std::uint32_t>(), arg(4).as<std::uint32_t>(), p, lid,
                                     msl::uint3{g.x, g.y, g.z});
            };
            break;
        case Kernel::MergeLists:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::merge_lists(arg(0).as<std::uint64_t>(), arg(1).as<std::uint32_t>(), arg(2).as<std::uint64_t>(),
                                 arg(3).as<std::uint32_t>(), p, gid(lid, g));
            };
            break;
        case Kernel::WriteResults:
            body = [&](std::uint32_t lid, metal_sim::Group g) {
                msl::write_results(arg(0).as<std::uint64_t>(), arg(1).as<std::uint32_t>(), arg(2).as<float>(),
                                   arg(3).as<std::uint32_t>(), p, gid(lid, g));
            };
            break;
    }
    metal_sim::run_grid(st.groups, hive_gpu::metal::kThreads, body);
}

template <typename T>
void read_exact(std::FILE* f, T* data, std::size_t count) {
    if (count && std::fread(data, sizeof(T), count, f) != count) throw std::runtime_error("short input file");
}

// A page of the engine: its rows (stored elements), per-row factors and ordinals.
struct Page {
    Buffer rows, factors, ordinals;
};

}  // namespace

// `metal_sim --bindings`: for every kernel the plans use, its name and how many buffers the
// engine binds before the Params (at indices 0 .. count-1, Params at count). The test holds
// these against the [[buffer(i)]] attributes of kernels.metal, which the C++ build ignores.
int print_bindings() {
    using hive_gpu::Dtype;
    for (const Dtype dtype : {Dtype::Float32, Dtype::Float16, Dtype::BFloat16})
        for (const bool product : {false, true})
            for (const std::size_t n : {std::size_t{1}, std::size_t{5000}}) {
                ChunkShape shape{n, 3, 2, std::min<std::size_t>(n, 4), 0, product,
                                 product ? hive_gpu::metal::kSelMask : hive_gpu::metal::kSelList};
                shape.dtype = dtype;
                for (const Step& st : hive_gpu::metal::plan_chunk(shape).steps)
                    if (!st.product)
                        std::printf("%s %zu\n", hive_gpu::metal::kernel_name(st.function), st.args.size());
            }
    return 0;
}

// `metal_sim --pages FIRST FULL N`: the page layout the engine addresses rows with: one line
// per page of a store of N rows (start, capacity), then the page of every slot.
int print_pages(std::size_t first, std::size_t full, std::size_t n) {
    const hive_gpu::PageLayout layout(first, full);
    const std::size_t pages = layout.pages_for(n);
    std::printf("%zu\n", pages);
    for (std::size_t p = 0; p < pages; ++p) std::printf("%zu %zu\n", layout.start(p), layout.rows(p));
    for (std::size_t s = 0; s < n; ++s) std::printf("%zu\n", layout.locate(s).page);
    return 0;
}

int main(int argc, char** argv) {
    using hive_gpu::PageLayout;
    if (argc == 5 && std::strcmp(argv[1], "--pages") == 0)
        return print_pages(std::strtoull(argv[2], nullptr, 10), std::strtoull(argv[3], nullptr, 10),
                           std::strtoull(argv[4], nullptr, 10));
    using hive_gpu::metal::PageSelection;
    using hive_gpu::metal::PageWork;
    if (argc == 2 && std::strcmp(argv[1], "--bindings") == 0) return print_bindings();
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s IN OUT | %s --bindings\n", argv[0], argv[0]);
        return 2;
    }
    try {
        std::FILE* in = std::fopen(argv[1], "rb");
        if (!in) throw std::runtime_error(std::string("cannot open ") + argv[1]);
        std::uint64_t h[11];
        read_exact(in, h, 11);
        const std::size_t n = h[0], dim = h[1], nq = h[2], k = h[3];
        const std::uint32_t metric = static_cast<std::uint32_t>(h[4]);
        const bool product = h[5] != 0;
        const std::size_t budget = h[6] ? h[6] : (std::size_t{256} << 20);
        const std::uint32_t sel = static_cast<std::uint32_t>(h[7]);
        if (n == 0 || dim == 0 || nq == 0 || k == 0 || k > n || metric > 2 || sel > 2 || h[8] > 2)
            throw std::runtime_error("invalid shape in input header");
        const hive_gpu::Dtype dtype = static_cast<hive_gpu::Dtype>(h[8]);
        const std::size_t elem = hive_gpu::dtype_size(dtype);
        const PageLayout layout(h[9] ? h[9] : n, h[10] ? h[10] : n);
        std::vector<unsigned char> rows(n * dim * elem);
        std::vector<float> queries(nq * dim);
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

        // The engine's pages, as append() fills them.
        const std::size_t npages = layout.pages_for(n);
        std::vector<Page> pages(npages);
        std::size_t largest = 0;
        for (std::size_t p = 0; p < npages; ++p) {
            const std::size_t first = layout.start(p), cap = layout.rows(p), used = std::min(cap, n - first);
            largest = std::max(largest, used);
            pages[p].rows.allocate(cap * dim * elem);
            std::memcpy(pages[p].rows.words.data(), &rows[first * dim * elem], used * dim * elem);
            pages[p].factors.allocate(cap * sizeof(float));
            pages[p].ordinals.allocate(cap * sizeof(std::uint32_t));
            for (std::size_t r = 0; r < used; ++r) {
                pages[p].factors.as<float>()[r] =
                    hive_gpu::metal::vector_factor(&rows[(first + r) * dim * elem], dtype, dim, metric);
                pages[p].ordinals.as<std::uint32_t>()[r] = ordinals[first + r];
            }
        }
        // A filter as the core hands it over: the store's bits, and the slot list for the sparse path.
        std::vector<PageSelection> sels;
        if (sel != hive_gpu::metal::kSelAll) {
            std::vector<std::uint64_t> bits((n + 63) / 64, 0);
            for (std::uint32_t r : passing) bits[r / 64] |= std::uint64_t{1} << (r % 64);
            sels = hive_gpu::metal::select_pages(bits.data(), sel == hive_gpu::metal::kSelList ? passing.data() : nullptr,
                                                 passing.size(), n, layout);
        }
        const std::vector<PageSelection>* page_sel = sels.empty() ? nullptr : &sels;
        std::vector<PageWork> work;
        for (std::size_t p = 0; p < npages; ++p)
            work.push_back(hive_gpu::metal::page_work(layout, p, n, k, page_sel ? &sels[p] : nullptr));

        std::vector<float> out_scores(nq * k);
        std::vector<std::int64_t> out_slots(nq * k);
        const std::size_t tile = hive_gpu::metal::query_chunk(largest, dim, std::min(k, largest), nq, budget, npages);
        Buffer scratch[hive_gpu::metal::kBufCount];
        for (std::size_t q0 = 0; q0 < nq; q0 += tile) {
            const std::size_t t = std::min(tile, nq - q0);
            const hive_gpu::metal::TileLayout tl = hive_gpu::metal::tile_layout(work, t, page_sel);
            // Fresh scratch for every tile: a kernel that reads what it did not write shows.
            for (int b = static_cast<int>(Buf::Queries); b < hive_gpu::metal::kBufCount; ++b) {
                std::size_t bytes = 0;
                for (std::size_t p = 0; p < npages; ++p) {
                    if (work[p].k == 0) continue;
                    ChunkShape shape{work[p].scored, dim, t, work[p].k, metric, product};
                    shape.dtype = dtype;
                    bytes = std::max(bytes, hive_gpu::metal::chunk_buffer_bytes(static_cast<Buf>(b), shape,
                                                                               hive_gpu::metal::plan_chunk(shape)));
                }
                scratch[b].allocate(bytes);
            }
            scratch[static_cast<int>(Buf::OutScores)].allocate(tl.out_entries * sizeof(float));
            scratch[static_cast<int>(Buf::OutSlots)].allocate(tl.out_entries * sizeof(std::uint32_t));
            scratch[static_cast<int>(Buf::RowSel)].allocate(tl.sel_words * sizeof(std::uint32_t));
            for (std::size_t p = 0; p < npages && page_sel; ++p)
                std::copy(sels[p].rowsel.begin(), sels[p].rowsel.end(),
                          scratch[static_cast<int>(Buf::RowSel)].as<std::uint32_t>() + tl.sel_at[p]);
            std::memcpy(scratch[static_cast<int>(Buf::Queries)].as<float>(), &queries[q0 * dim], t * dim * sizeof(float));
            for (std::size_t q = 0; q < t; ++q)
                scratch[static_cast<int>(Buf::QueryFactors)].as<float>()[q] =
                    hive_gpu::metal::vector_factor(&queries[(q0 + q) * dim], hive_gpu::Dtype::Float32, dim, metric);

            for (std::size_t p = 0; p < npages; ++p) {
                if (work[p].k == 0) continue;  // no row of this page passes the filter
                ChunkShape shape{work[p].scored, dim, t, work[p].k, metric, product,
                                 page_sel ? sels[p].sel : hive_gpu::metal::kSelAll};
                shape.dtype = dtype;
                Bindings bind;
                for (int b = 0; b < hive_gpu::metal::kBufCount; ++b) bind.b[b].buffer = &scratch[b];
                bind[Buf::Rows].buffer = &pages[p].rows;
                bind[Buf::RowFactors].buffer = &pages[p].factors;
                bind[Buf::Ordinals].buffer = &pages[p].ordinals;
                bind[Buf::OutScores].offset = tl.out_at[p] * sizeof(float);
                bind[Buf::OutSlots].offset = tl.out_at[p] * sizeof(std::uint32_t);
                bind[Buf::RowSel].offset = tl.sel_at[p] * sizeof(std::uint32_t);
                for (const Step& st : hive_gpu::metal::plan_chunk(shape).steps) run_step(st, bind, shape);
            }
            const bool ok = hive_gpu::metal::gather_tile(
                layout, work, tl, t, k, metric, scratch[static_cast<int>(Buf::OutScores)].as<float>(),
                scratch[static_cast<int>(Buf::OutSlots)].as<std::uint32_t>(),
                [&](std::size_t p, std::uint32_t row) { return pages[p].ordinals.as<std::uint32_t>()[row]; },
                &out_scores[q0 * k], &out_slots[q0 * k]);
            if (!ok) throw std::runtime_error("a kernel returned a row outside its page");
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
