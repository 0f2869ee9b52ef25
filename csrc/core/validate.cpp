#include "core/validate.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "hive_gpu/error.hpp"
#include "hive_gpu/limits.hpp"

namespace hive_gpu {

RowFault row_fault(const float* row, std::size_t dim) {
    // Summing squares in double both finds NaN/inf (the sum turns non-finite) and measures
    // the norm; four partial sums let the additions of one row overlap.
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    std::size_t i = 0;
    for (; i + 4 <= dim; i += 4)
        for (std::size_t l = 0; l < 4; ++l) acc[l] += static_cast<double>(row[i + l]) * row[i + l];
    for (; i < dim; ++i) acc[0] += static_cast<double>(row[i]) * row[i];
    const double sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    if (!std::isfinite(sum)) {
        for (std::size_t j = 0; j < dim; ++j)
            if (!std::isfinite(row[j])) return RowFault::NonFinite;
        return RowFault::TooLarge;
    }
    return sum > kMaxSquaredNorm ? RowFault::TooLarge : RowFault::None;
}

std::size_t first_faulty_row(std::size_t n, std::size_t elements,
                             const std::function<RowFault(std::size_t, float*)>& row_fault, RowFault* fault,
                             float* value) {
    // Index of the first faulty row in [begin, end), or end.
    auto first_in = [&](std::size_t begin, std::size_t end, RowFault* f, float* v) {
        for (std::size_t i = begin; i < end; ++i) {
            const RowFault got = row_fault(i, v);
            if (got != RowFault::None) {
                *f = got;
                return i;
            }
        }
        return end;
    };
    *fault = RowFault::None;
    constexpr std::size_t kParallelElements = std::size_t{1} << 22;
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    if (elements < kParallelElements || hw == 1 || n < 2) return first_in(0, n, fault, value);
    const unsigned parts = static_cast<unsigned>(std::min<std::size_t>(hw, n));
    std::vector<std::size_t> found(parts, n);
    std::vector<RowFault> faults(parts, RowFault::None);
    std::vector<float> values(parts, 0.0f);
    auto check_part = [&](unsigned p) {
        std::size_t b = n * p / parts, e = n * (p + 1) / parts;
        std::size_t i = first_in(b, e, &faults[p], &values[p]);
        if (i != e) found[p] = i;
    };
    std::vector<std::thread> workers;
    workers.reserve(parts);
    unsigned started = 0;
    // A thread that cannot start (memory or thread limits) must not turn validation into
    // an unexpected exception: the parts it would have checked run on this thread.
    try {
        for (; started < parts; ++started) workers.emplace_back(check_part, started);
    } catch (const std::system_error&) {
    } catch (const std::bad_alloc&) {
    }
    for (unsigned p = started; p < parts; ++p) check_part(p);
    for (auto& w : workers) w.join();
    std::size_t bad = n;
    for (unsigned p = 0; p < parts; ++p)
        if (found[p] < bad) {
            bad = found[p];
            *fault = faults[p];
            *value = values[p];
        }
    return bad;
}

void check_rows(const float* rows, std::size_t n, std::size_t dim, const char* what) {
    if (n == 0) return;
    RowFault fault = RowFault::None;
    float value = 0.0f;
    const std::size_t bad = first_faulty_row(
        n, n * dim, [&](std::size_t i, float*) { return row_fault(rows + i * dim, dim); }, &fault, &value);
    if (bad == n) return;
    throw_row_fault(fault, bad, n, what);
}

void throw_row_fault(RowFault fault, std::size_t row, std::size_t n, const char* what) {
    throw_row_fault(fault, row, n, what, Dtype::Float32, std::numeric_limits<float>::quiet_NaN());
}

void throw_row_fault(RowFault fault, std::size_t row, std::size_t n, const char* what, Dtype dtype, float value) {
    std::string where = n == 1 ? std::string(what) : std::string(what) + " row " + std::to_string(row);
    if (fault == RowFault::NonFinite) throw NonFiniteValueError(where + " contains NaN or infinity");
    if (fault == RowFault::DoesNotFit) {
        // Printed with the digits that make a float32 value unique.
        char shown[32] = "a value", limit[32];
        if (value == value) std::snprintf(shown, sizeof shown, "%.9g", static_cast<double>(value));
        std::snprintf(limit, sizeof limit, "%.9g", static_cast<double>(dtype_max(dtype)));
        throw NonFiniteValueError(where + " holds " + shown + ", which does not fit " + dtype_name(dtype) +
                                  " (largest magnitude " + limit + ")");
    }
    throw InvalidArgumentError(where + " has a norm too large for float32 distance arithmetic");
}

bool detail::valid_utf8(const std::string& s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const std::size_t n = s.size();
    std::size_t i = 0;
    while (i < n) {
        const unsigned c = p[i];
        if (c < 0x80) {
            ++i;
            continue;
        }
        // Sequence length and the range its second byte must fall in (RFC 3629, table 3-7
        // of the Unicode standard): this excludes overlongs, surrogates and > U+10FFFF.
        std::size_t len;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return false;
        }
        if (n - i < len) return false;
        if (p[i + 1] < lo || p[i + 1] > hi) return false;
        for (std::size_t j = 2; j < len; ++j)
            if ((p[i + j] & 0xC0) != 0x80) return false;
        i += len;
    }
    return true;
}

}  // namespace hive_gpu
