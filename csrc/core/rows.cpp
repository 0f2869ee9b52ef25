#include "core/rows.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "core/validate.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/limits.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HIVE_GPU_HOST_F16C 1
#endif

namespace hive_gpu::detail {

namespace {

#ifdef HIVE_GPU_HOST_F16C
// F16C converts 8 lanes per instruction with IEEE round to nearest even, the rounding of
// dtype.hpp's float_to_f16 (subnormal halves included); the scalar code covers the tail and
// hosts without it.
const bool kHasF16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");

__attribute__((target("avx,f16c"))) std::size_t f16_to_float_f16c(const std::uint16_t* in, std::size_t n,
                                                                    float* out) {
    std::size_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(out + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + j))));
    return j;
}

__attribute__((target("avx,f16c"))) std::size_t float_to_f16_f16c(const float* in, std::size_t n,
                                                                    std::uint16_t* out) {
    std::size_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return j;
}
#endif

// n elements through one of dtype.hpp's scalar conversions, float16 with F16C first when
// the host has it (`f16c` converts a prefix and says how far it got).
template <typename In, typename Out, typename Bf16, typename F16, typename F16c>
void convert(const In* in, bool bf16, std::size_t n, Out* out, Bf16 bf16_one, F16 f16_one, F16c f16c) {
    std::size_t j = 0;
    if (bf16) {
        for (; j < n; ++j) out[j] = bf16_one(in[j]);
        return;
    }
#ifdef HIVE_GPU_HOST_F16C
    if (kHasF16c) j = f16c(in, n, out);
#else
    (void)f16c;
#endif
    for (; j < n; ++j) out[j] = f16_one(in[j]);
}

// 16-bit elements to float32, exactly.
void widen(const std::uint16_t* in, Dtype from, std::size_t n, float* out) {
#ifdef HIVE_GPU_HOST_F16C
    auto fast = [](const std::uint16_t* i, std::size_t m, float* o) { return f16_to_float_f16c(i, m, o); };
#else
    auto fast = [](const std::uint16_t*, std::size_t, float*) { return std::size_t{0}; };
#endif
    convert(in, from == Dtype::BFloat16, n, out, bf16_to_float, f16_to_float, fast);
}

// Finite float32 values that fit `to` (16-bit) rounded to nearest even.
void narrow(const float* in, Dtype to, std::size_t n, std::uint16_t* out) {
#ifdef HIVE_GPU_HOST_F16C
    auto fast = [](const float* i, std::size_t m, std::uint16_t* o) { return float_to_f16_f16c(i, m, o); };
#else
    auto fast = [](const float*, std::size_t, std::uint16_t*) { return std::size_t{0}; };
#endif
    convert(in, to == Dtype::BFloat16, n, out, float_to_bf16, float_to_f16, fast);
}

// NaN and infinity have every exponent bit set, in both 16-bit formats.
bool all_finite(const std::uint16_t* row, Dtype d, std::size_t dim) {
    const std::uint16_t exponent = d == Dtype::Float16 ? 0x7C00u : 0x7F80u;
    bool ok = true;
    for (std::size_t j = 0; j < dim; ++j) ok &= (row[j] & exponent) != exponent;
    return ok;
}

// Whether every value is finite with |x| <= most, in one branch-free pass (NaN compares false).
bool all_within(const float* row, std::size_t dim, float most) {
    bool ok = true;
    for (std::size_t j = 0; j < dim; ++j) ok &= std::fabs(row[j]) <= most;
    return ok;
}

// Why a row that failed all_within() fails: NaN/inf anywhere first, else the first value
// beyond `most` (in *value).
RowFault range_fault(const float* row, std::size_t dim, float most, float* value) {
    for (std::size_t j = 0; j < dim; ++j)
        if (!std::isfinite(row[j])) return RowFault::NonFinite;
    for (std::size_t j = 0; j < dim; ++j)
        if (std::fabs(row[j]) > most) {
            *value = row[j];
            return RowFault::DoesNotFit;
        }
    return RowFault::None;
}

// The rows are finite here: only the norm bound can fail (validate.cpp's rule).
RowFault norm_fault(const float* row, std::size_t dim) { return row_fault(row, dim); }

// A scratch row per thread: rows are checked on several threads for large batches.
float* scratch_row(std::size_t dim) {
    thread_local std::vector<float> scratch;
    if (scratch.size() < dim) scratch.resize(dim);
    return scratch.data();
}

// One row from `from` into `to` at dst (null when from == to: checked in place). The
// faults in order: NaN/inf, a value that does not fit, the norm of the stored values. A
// float16 value is at most 65504, so a float16 row's squared norm stays below
// 65504^2 * 2^20, far under kMaxSquaredNorm: its norm needs no check.
RowFault prepare_row(const void* src, Dtype from, Dtype to, std::size_t dim, void* dst, float* value) {
    if (from == to) {
        if (to == Dtype::Float32) return row_fault(static_cast<const float*>(src), dim);
        const auto* h = static_cast<const std::uint16_t*>(src);
        if (!all_finite(h, to, dim)) return RowFault::NonFinite;
        if (to == Dtype::Float16) return RowFault::None;
        float* f = scratch_row(dim);
        widen(h, to, dim, f);
        return norm_fault(f, dim);
    }
    if (from != Dtype::Float32) {
        const auto* h = static_cast<const std::uint16_t*>(src);
        if (!all_finite(h, from, dim)) return RowFault::NonFinite;
        if (to == Dtype::Float32) {  // exact: the stored values are the widened ones
            widen(h, from, dim, static_cast<float*>(dst));
            return from == Dtype::Float16 ? RowFault::None : norm_fault(static_cast<const float*>(dst), dim);
        }
        float* wide = scratch_row(dim);
        widen(h, from, dim, wide);
        src = wide;
    }
    const float* f = static_cast<const float*>(src);
    const float most = dtype_max(to);
    if (!all_within(f, dim, most)) return range_fault(f, dim, most, value);
    auto* out = static_cast<std::uint16_t*>(dst);
    narrow(f, to, dim, out);
    if (to == Dtype::Float16) return RowFault::None;
    // Rounding to bfloat16 may raise the norm past the bound the input met, or lower it below.
    float* stored = scratch_row(dim);
    widen(out, to, dim, stored);
    return norm_fault(stored, dim);
}

}  // namespace

StoreRows::StoreRows(const void* rows, Dtype from, std::size_t n, std::size_t dim, Dtype to, const char* what)
    : data_(rows), to_(to) {
    if (n == 0) return;
    if (from != to) {
        try {
            // Not zero-filled: every element is written before it is read.
            owned_.reset(new std::uint16_t[n * dim * dtype_size(to) / sizeof(std::uint16_t)]);
        } catch (const std::bad_alloc&) {
            throw OutOfMemoryError("host memory exhausted while converting rows to " + std::string(dtype_name(to)));
        }
        data_ = owned_.get();
    }
    const auto* in = static_cast<const unsigned char*>(rows);
    auto* out = from == to ? nullptr : reinterpret_cast<unsigned char*>(owned_.get());
    const std::size_t in_bytes = dim * dtype_size(from), out_bytes = dim * dtype_size(to);
    RowFault fault = RowFault::None;
    float value = std::numeric_limits<float>::quiet_NaN();
    const std::size_t bad = first_faulty_row(
        n, n * dim,
        [&](std::size_t i, float* v) {
            return prepare_row(in + i * in_bytes, from, to, dim, out ? out + i * out_bytes : nullptr, v);
        },
        &fault, &value);
    if (bad != n) throw_row_fault(fault, bad, n, what, to, value);
}

void narrow_stored(const float* values, std::size_t n, Dtype to, void* out) {
    if (to == Dtype::Float32)
        std::memcpy(out, values, n * sizeof(float));
    else
        narrow(values, to, n, static_cast<std::uint16_t*>(out));
}

}  // namespace hive_gpu::detail
