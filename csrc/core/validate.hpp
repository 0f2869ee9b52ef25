// Input checks shared by every write and search path.
#pragma once

#include <cstddef>
#include <string>

namespace hive_gpu {

// Throws NonFiniteValueError naming the first row holding NaN/inf, or InvalidArgumentError
// for a row whose squared norm is beyond kMaxSquaredNorm. Large inputs are checked on
// several threads.
void check_rows(const float* rows, std::size_t n, std::size_t dim, const char* what);

// Why a row breaks the input rules. Device-side checks report the same codes.
enum class RowFault : int { None = 0, NonFinite = 1, TooLarge = 2 };

// Throws the error check_rows() throws for row `row` of `n` rows.
[[noreturn]] void throw_row_fault(RowFault fault, std::size_t row, std::size_t n, const char* what);

namespace detail {
// True when `s` is well-formed UTF-8 as Python decodes it: no overlong forms, no surrogates
// (U+D800..U+DFFF), nothing above U+10FFFF. Text read from a file passes this before use.
bool valid_utf8(const std::string& s);
}  // namespace detail

}  // namespace hive_gpu
