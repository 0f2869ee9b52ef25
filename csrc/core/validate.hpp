// Input checks shared by every write and search path.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "hive_gpu/dtype.hpp"

namespace hive_gpu {

// Throws NonFiniteValueError naming the first row holding NaN/inf, or InvalidArgumentError
// for a row whose squared norm is beyond kMaxSquaredNorm. Large inputs are checked on
// several threads.
void check_rows(const float* rows, std::size_t n, std::size_t dim, const char* what);

// Why a row breaks the input rules. Device-side checks report the same codes.
// DoesNotFit: a finite value beyond the largest finite value of the store's dtype
// (|x| > 65504 for float16), refused rather than stored as infinity.
enum class RowFault : int { None = 0, NonFinite = 1, TooLarge = 2, DoesNotFit = 3 };

// check_rows()'s rules for one row of float32 values.
RowFault row_fault(const float* row, std::size_t dim);

// Throws the error check_rows() throws for row `row` of `n` rows. DoesNotFit names `dtype`
// and, when it is not NaN, the offending `value`.
[[noreturn]] void throw_row_fault(RowFault fault, std::size_t row, std::size_t n, const char* what);
[[noreturn]] void throw_row_fault(RowFault fault, std::size_t row, std::size_t n, const char* what, Dtype dtype,
                                  float value);

// The first row i in [0, n) whose `row_fault(i, &value)` is not None, with its fault and
// value; n when every row passes. `elements` (rows times their length) sizes the work:
// large batches are searched on several threads, each part in order.
std::size_t first_faulty_row(std::size_t n, std::size_t elements,
                             const std::function<RowFault(std::size_t, float*)>& row_fault, RowFault* fault,
                             float* value);

namespace detail {
// True when `s` is well-formed UTF-8 as Python decodes it: no overlong forms, no surrogates
// (U+D800..U+DFFF), nothing above U+10FFFF. Text read from a file passes this before use.
bool valid_utf8(const std::string& s);
}  // namespace detail

}  // namespace hive_gpu
