// Input checks shared by every write and search path.
#pragma once

#include <cstddef>

namespace hive_gpu {

// Throws NonFiniteValueError naming the first row holding NaN/inf, or InvalidArgumentError
// for a row whose squared norm is beyond kMaxSquaredNorm. Large inputs are checked on
// several threads.
void check_rows(const float* rows, std::size_t n, std::size_t dim, const char* what);

}  // namespace hive_gpu
