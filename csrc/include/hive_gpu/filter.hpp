// Filters over metadata: the operator language (MongoDB/Chroma-like) that search, ids, count
// and remove_vectors accept. A filter is parsed once from a JSON-like FilterExpr into an
// immutable Filter; the storage evaluates it against its metadata indexes (docs/design.md).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace hive_gpu {

namespace detail {
struct FilterNode;
}

// A JSON-like value, as a filter is written:
//   {"lang": "pt", "year": {"$gte": 2020}, "$or": [{"tags": {"$contains": "x"}}, ...]}
// Object fields keep the order they were given in (error paths name them in that order).
struct FilterExpr {
    enum class Kind { Null, Bool, Int, Float, Str, List, Object };
    Kind kind = Kind::Null;
    bool b = false;
    std::int64_t i = 0;
    double f = 0.0;
    std::string s;
    std::vector<FilterExpr> items;                           // List
    std::vector<std::pair<std::string, FilterExpr>> fields;  // Object

    FilterExpr() = default;
    static FilterExpr of(bool v) { FilterExpr e; e.kind = Kind::Bool; e.b = v; return e; }
    static FilterExpr of(std::int64_t v) { FilterExpr e; e.kind = Kind::Int; e.i = v; return e; }
    static FilterExpr of(int v) { return of(static_cast<std::int64_t>(v)); }
    static FilterExpr of(double v) { FilterExpr e; e.kind = Kind::Float; e.f = v; return e; }
    static FilterExpr of(std::string v) { FilterExpr e; e.kind = Kind::Str; e.s = std::move(v); return e; }
    static FilterExpr of(const char* v) { return of(std::string(v)); }
    static FilterExpr list(std::vector<FilterExpr> v) { FilterExpr e; e.kind = Kind::List; e.items = std::move(v); return e; }
    static FilterExpr object(std::vector<std::pair<std::string, FilterExpr>> v) {
        FilterExpr e;
        e.kind = Kind::Object;
        e.fields = std::move(v);
        return e;
    }
};

// A parsed filter. Semantics:
// - top-level keys are ANDed; {"key": value} is {"key": {"$eq": value}};
// - $eq $ne $in $nin compare any scalar (str, int, float, bool); values of different types
//   are never equal, except int and float, which compare as numbers;
// - $gt $gte $lt $lte order numbers with numbers and str with str (by UTF-8 bytes); an
//   operand of the other kind than the values stored under the key raises
//   InvalidArgumentError at evaluation; bool and tag-list values never satisfy them;
// - $contains matches rows whose list-of-str value holds the operand;
// - a row that lacks the key never matches a condition on it, $ne and $nin included;
//   {"$not": {...}} is the complement over all rows (rows lacking the key included);
// - {"$id": {"$in": [...]}} (also $eq, $ne, $nin) selects by vector id;
// - {} matches every row.
class Filter {
   public:
    Filter();  // matches every row
    // Throws InvalidArgumentError naming the path of the fault, e.g. "filter.$and[1].year.$gt".
    static Filter parse(const FilterExpr& expr);
    bool matches_all() const;
    const detail::FilterNode& root() const { return *root_; }

   private:
    explicit Filter(std::shared_ptr<const detail::FilterNode> root) : root_(std::move(root)) {}
    std::shared_ptr<const detail::FilterNode> root_;
};

}  // namespace hive_gpu
