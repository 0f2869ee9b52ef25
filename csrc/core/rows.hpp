// Host rows of any storage dtype made ready for Engine::append()/write(): rounded once to the
// store's dtype (nearest even, dtype.hpp's conversions) and checked on the values stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "hive_gpu/dtype.hpp"

namespace hive_gpu::detail {

// n rows of `dim` elements, row major, in `to`. Input of the store's own dtype is only
// checked and used in place; any other is converted into memory this object owns.
//
// The rules, for every input dtype: NaN or infinity is a NonFiniteValueError, a finite value
// beyond dtype_max(to) a NonFiniteValueError naming it ("does not fit float16"), a squared
// norm of the stored values beyond kMaxSquaredNorm an InvalidArgumentError. Errors name the
// first bad row (validate.hpp's throw_row_fault), and nothing is kept.
class StoreRows {
   public:
    StoreRows() = default;
    StoreRows(const void* rows, Dtype from, std::size_t n, std::size_t dim, Dtype to, const char* what);
    const void* data() const { return data_; }
    Dtype dtype() const { return to_; }

   private:
    std::unique_ptr<std::uint16_t[]> owned_;  // 16-bit rows, or float32 rows as pairs
    const void* data_ = nullptr;
    Dtype to_ = Dtype::Float32;
};

// Stored values read back as float32 (Engine::read) in `to` again, bit for bit as they were
// stored: every value is finite and fits, and the widening was exact. n elements.
void narrow_stored(const float* values, std::size_t n, Dtype to, void* out);

}  // namespace hive_gpu::detail
