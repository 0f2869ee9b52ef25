#include "core/validate.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "hive_gpu/error.hpp"
#include "hive_gpu/limits.hpp"

namespace hive_gpu {

namespace {

RowFault check_row(const float* row, std::size_t dim) {
    // Summing squares in double both finds NaN/inf (the sum turns non-finite) and measures
    // the norm, in one pass the compiler vectorises.
    double sum = 0.0;
    for (std::size_t j = 0; j < dim; ++j) sum += static_cast<double>(row[j]) * row[j];
    if (!std::isfinite(sum)) {
        for (std::size_t j = 0; j < dim; ++j)
            if (!std::isfinite(row[j])) return RowFault::NonFinite;
        return RowFault::TooLarge;
    }
    return sum > kMaxSquaredNorm ? RowFault::TooLarge : RowFault::None;
}

// Index of the first faulty row in [begin, end), or end.
std::size_t first_fault(const float* rows, std::size_t begin, std::size_t end, std::size_t dim,
                        RowFault* fault) {
    for (std::size_t i = begin; i < end; ++i) {
        RowFault f = check_row(rows + i * dim, dim);
        if (f != RowFault::None) {
            *fault = f;
            return i;
        }
    }
    return end;
}

}  // namespace

void check_rows(const float* rows, std::size_t n, std::size_t dim, const char* what) {
    if (n == 0) return;
    RowFault fault = RowFault::None;
    std::size_t bad = n;
    constexpr std::size_t kParallelFloats = std::size_t{1} << 22;
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    if (n * dim < kParallelFloats || hw == 1 || n < 2) {
        bad = first_fault(rows, 0, n, dim, &fault);
    } else {
        const unsigned parts = std::min<std::size_t>(hw, n);
        std::vector<std::size_t> found(parts, n);
        std::vector<RowFault> faults(parts, RowFault::None);
        auto check_part = [&](unsigned p) {
            std::size_t b = n * p / parts, e = n * (p + 1) / parts;
            std::size_t i = first_fault(rows, b, e, dim, &faults[p]);
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
        for (unsigned p = 0; p < parts; ++p)
            if (found[p] < bad) {
                bad = found[p];
                fault = faults[p];
            }
    }
    if (bad == n) return;
    throw_row_fault(fault, bad, n, what);
}

void throw_row_fault(RowFault fault, std::size_t row, std::size_t n, const char* what) {
    std::string where = n == 1 ? std::string(what) : std::string(what) + " row " + std::to_string(row);
    if (fault == RowFault::NonFinite) throw NonFiniteValueError(where + " contains NaN or infinity");
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
