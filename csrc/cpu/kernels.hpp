// The CPU scoring kernels. One source (kernels_impl.inc) is compiled once per instruction
// set into its own namespace; kernels() picks the best table this CPU runs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hive_gpu::cpu {

// How the 16-bit elements a kernel reads (TileArgs::hi) encode the rows: the two planes of
// a float32 store (hi and lo, below), or the rows of a 16-bit store themselves.
enum class Packing : int {
    Planes = 0,    // float32: (hi << 16) | lo
    BFloat16 = 1,  // hi << 16
    Float16 = 2,   // IEEE binary16, widened exactly
};

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
// in a tile, so identical rows get bit-identical scores and ties stay exact. The rows are
// floats, or (hi and lo set, rows unused) the two planes widened as they are loaded, which
// gives the same floats and therefore the same scores.
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
    const std::uint16_t* hi = nullptr;  // the rows' planes, d elements per row each
    const std::uint16_t* lo = nullptr;  // Packing::Planes only
    Packing packing = Packing::Planes;
};

// Rows are stored as two planes of 16-bit halves of each float's bit pattern: hi (sign,
// exponent, 7 mantissa bits: a truncated bfloat16) and lo (the other 16 mantissa bits).
// The screen reads only the hi plane and may load up to this many elements past the end of
// the last row, so the hi plane keeps this many zeros there (zero widens to a finite value,
// and the query is zero past d, so the overrun adds exactly 0).
inline constexpr std::size_t kPlaneSlack = 32;

// How the screen turns the approximate raw dot t of a row into the metric's score.
enum class ScreenForm : int {
    Dot = 0,     // t
    Cosine = 1,  // (t * row_g) * factor             (row_g: 1/|x|, factor: 1/|q|)
    L2 = 2,      // (row_sq + factor) - 2 t           (row_sq: |x|^2, factor: |q|^2)
};

// One query of a screen: its prepared vector and the constants of its error bound
// (screen.cpp derives them). The bound on |approximate - exact score| of a row is
// c + g * (lin + quad * g), g = row_g of the row; a row with g > g_limit, or whose
// approximate score or bound is not finite, gets infinite bounds (always a candidate).
struct ScreenQuery {
    const float* q;  // prepare_screen_query() layout
    float factor;
    float c, lin, quad;
    float g_limit;
};

// For each query i < nq (<= 3) and row x < nx of a tile of the hi plane:
//   keep[i * ldo + x]  = the bound the exact score is certain to reach (lower bound for
//                        higher-first forms, upper bound for L2),
//   reach[i * ldo + x] = the best the exact score can be (the other bound).
struct ScreenArgs {
    const std::uint16_t* hi;  // first row of the tile; rows are contiguous, d elements each
    std::size_t nx;
    std::size_t d;
    ScreenForm form;
    const ScreenQuery* queries;
    std::size_t nq;
    const float* row_g;   // nx entries: |x| rounded up (Dot, L2) or 1/|x| (Cosine)
    const float* row_sq;  // nx entries of |x|^2 for L2, else nullptr
    float* raw;           // scratch, nq * ldo
    float* keep;
    float* reach;
    std::size_t ldo;
};

struct KernelTable {
    const char* name;  // "avx512", "avx2" or "generic"
    void (*score_tile)(const TileArgs& args);
    // Writes to idx the positions i < n with s[i] >= thr (higher_first) or s[i] <= thr,
    // ascending; returns how many.
    std::size_t (*filter)(const float* s, std::size_t n, float thr, bool higher_first,
                          std::uint32_t* idx);
    // n floats into their hi and lo halves, and back.
    void (*split)(const float* in, std::size_t n, std::uint16_t* hi, std::uint16_t* lo);
    void (*widen)(const std::uint16_t* hi, const std::uint16_t* lo, std::size_t n, float* out);
    // n elements of a 16-bit store (BFloat16 or Float16 packing) to floats, exactly.
    void (*widen16)(const std::uint16_t* in, std::size_t n, Packing packing, float* out);
    // The screen walks rows in steps of screen_step elements; a prepared query holds
    // ceil(d / screen_step) * screen_step floats, permuted to match the kernel's loads and
    // zero past d.
    std::size_t screen_step;
    void (*prepare_screen_query)(const float* q, std::size_t d, float* out);
    void (*screen_tile)(const ScreenArgs& args);
};

// The fastest table this CPU supports; HIVE_GPU_CPU_ISA=generic|avx2|avx512 caps the choice
// (read once), which lets the tests run every compiled path on one machine.
const KernelTable& kernels();

}  // namespace hive_gpu::cpu
