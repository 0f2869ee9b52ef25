// The parsed form of a Filter (hive_gpu/filter.hpp) and exact number keys shared with the
// metadata indexes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "hive_gpu/filter.hpp"
#include "hive_gpu/types.hpp"

namespace hive_gpu::detail {

// A number as an index key: an int64, or a double that is not an integer in int64 range.
// Equal numbers have one form (2020 and 2020.0 are both Int), and the order between ints
// and doubles is exact (no rounding of large ints to double).
struct NumKey {
    bool is_int = true;
    std::int64_t i = 0;
    double d = 0.0;

    static NumKey of(std::int64_t v) { return NumKey{true, v, 0.0}; }
    static NumKey of(double v);  // v is not NaN
    bool operator==(const NumKey& o) const { return is_int == o.is_int && (is_int ? i == o.i : d == o.d); }
};
bool operator<(const NumKey& a, const NumKey& b);

enum class FilterOp { All, And, Or, Not, Eq, Ne, Gt, Gte, Lt, Lte, In, Nin, Contains, IdIn, IdNin };

struct FilterNode {
    FilterOp op = FilterOp::All;
    std::string key;   // the metadata key of a condition
    std::string path;  // where it was written, for error messages: "filter.$and[1].year.$gt"
    // Operands: one scalar (Eq, Ne, the orderings), the list (In, Nin, IdIn, IdNin), the tag
    // (Contains). Scalars only: str, int, float (not NaN), bool.
    std::vector<MetaValue> values;
    std::vector<FilterNode> children;  // And, Or, Not (one)
};

}  // namespace hive_gpu::detail
