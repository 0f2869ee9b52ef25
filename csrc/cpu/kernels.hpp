// The CPU scoring kernels. One source (kernels_impl.inc) is compiled once per instruction
// set into its own namespace; kernels() picks the best table this CPU runs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hive_gpu::cpu {

// How a (query, row) pair is scored before the epilogue.
enum class Form : int {
    Dot = 0,  // sum q[j] * x[j]
    L2 = 1,   // sum (x[j] - q[j])^2, computed directly
};

// What the tile kernel does with each raw value r of a (query q, row x) pair.
enum class Epilogue : int {
    None = 0,        // r
    Cosine = 1,      // (r * row_factor[x]) * query_factor[q]   (factors: inverse norms)
    L2Expanded = 2,  // row_factor[x] - 2 r                     (factor: |x|^2; ranks like L2)
};

// out[q * ldo + x] = epilogue(score(queries[q], rows[x])) for q < nq, x < nx.
// Every (query, row) pair is computed by the same sequence of operations wherever it sits
// in a tile, so identical rows get bit-identical scores and ties stay exact.
struct TileArgs {
    const float* queries;
    std::size_t nq;
    std::size_t ldq;  // floats between consecutive queries
    const float* rows;
    std::size_t nx;
    std::size_t d;  // rows are contiguous, d floats each
    Form form;
    Epilogue epilogue;
    const float* row_factor;    // nx entries, or nullptr when the epilogue needs none
    const float* query_factor;  // nq entries, or nullptr
    float* out;
    std::size_t ldo;
};

struct KernelTable {
    const char* name;  // "avx512", "avx2" or "generic"
    void (*score_tile)(const TileArgs& args);
    // Writes to idx the positions i < n with s[i] >= thr (higher_first) or s[i] <= thr,
    // ascending; returns how many.
    std::size_t (*filter)(const float* s, std::size_t n, float thr, bool higher_first,
                          std::uint32_t* idx);
};

// The fastest table this CPU supports; HIVE_GPU_CPU_ISA=generic|avx2|avx512 caps the choice
// (read once), which lets the tests run every compiled path on one machine.
const KernelTable& kernels();

}  // namespace hive_gpu::cpu
