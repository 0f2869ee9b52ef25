// Parsing a FilterExpr into the FilterNode tree, with the path of every fault.
#include "core/filter.hpp"

#include <cmath>
#include <string>
#include <utility>

#include "hive_gpu/error.hpp"

namespace hive_gpu {

namespace detail {

NumKey NumKey::of(double v) {
    // Integers in int64 range take the int form, so that 2020.0 and 2020 are one key.
    if (v == std::trunc(v) && v >= -0x1p63 && v < 0x1p63) return NumKey{true, static_cast<std::int64_t>(v), 0.0};
    return NumKey{false, 0, v};
}

namespace {
// -1, 0, 1 as x <, ==, > y, exactly; y is a double that is not an integer in int64 range.
int compare_int_double(std::int64_t x, double y) {
    if (y >= 0x1p63) return -1;
    if (y < -0x1p63) return 1;
    const double t = std::trunc(y);  // |y| < 2^63 and not integral: |y| < 2^52, exact
    const auto ti = static_cast<std::int64_t>(t);
    if (x != ti) return x < ti ? -1 : 1;
    return y > t ? -1 : 1;
}
}  // namespace

bool operator<(const NumKey& a, const NumKey& b) {
    if (a.is_int && b.is_int) return a.i < b.i;
    if (!a.is_int && !b.is_int) return a.d < b.d;
    if (a.is_int) return compare_int_double(a.i, b.d) < 0;
    return compare_int_double(b.i, a.d) > 0;
}

}  // namespace detail

namespace {

using detail::FilterNode;
using detail::FilterOp;
using Kind = FilterExpr::Kind;

[[noreturn]] void fail(const std::string& path, const std::string& why) {
    throw InvalidArgumentError(path + ": " + why);
}

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::Null: return "None";
        case Kind::Bool: return "bool";
        case Kind::Int: return "int";
        case Kind::Float: return "float";
        case Kind::Str: return "str";
        case Kind::List: return "list";
        case Kind::Object: return "dict";
    }
    return "?";
}

bool is_scalar(const FilterExpr& e) {
    return e.kind == Kind::Bool || e.kind == Kind::Int || e.kind == Kind::Float || e.kind == Kind::Str;
}

MetaValue scalar_of(const FilterExpr& e, const std::string& path) {
    switch (e.kind) {
        case Kind::Bool: return e.b;
        case Kind::Int: return e.i;
        case Kind::Float:
            if (std::isnan(e.f)) fail(path, "NaN matches nothing and cannot be compared");
            return e.f;
        case Kind::Str: return e.s;
        default: fail(path, std::string("expected a str, int, float or bool, got ") + kind_name(e.kind));
    }
}

FilterNode leaf(FilterOp op, const std::string& key, const std::string& path) {
    FilterNode n;
    n.op = op;
    n.key = key;
    n.path = path;
    return n;
}

// Several conditions at one level: their AND (one condition stands alone).
FilterNode all_of(std::vector<FilterNode>&& parts, const std::string& path) {
    if (parts.size() == 1) return std::move(parts.front());
    FilterNode n = leaf(FilterOp::And, "", path);
    n.children = std::move(parts);
    return n;
}

FilterNode parse_list_operand(FilterOp op, const std::string& key, const FilterExpr& e,
                              const std::string& path, bool ids) {
    if (e.kind != Kind::List) fail(path, std::string("expects a list, got ") + kind_name(e.kind));
    FilterNode n = leaf(op, key, path);
    n.values.reserve(e.items.size());
    for (std::size_t i = 0; i < e.items.size(); ++i) {
        const std::string at = path + "[" + std::to_string(i) + "]";
        if (ids && e.items[i].kind != Kind::Str)
            fail(at, std::string("ids are str, got ") + kind_name(e.items[i].kind));
        n.values.push_back(scalar_of(e.items[i], at));
    }
    return n;
}

// {"$id": ...}: a str, or {"$eq"|"$ne": str, "$in"|"$nin": [str, ...]}.
FilterNode parse_id(const FilterExpr& e, const std::string& path) {
    if (e.kind == Kind::Str) {
        FilterNode n = leaf(FilterOp::IdIn, "", path);
        n.values.emplace_back(e.s);
        return n;
    }
    if (e.kind != Kind::Object || e.fields.empty())
        fail(path, "expects a str id or a dict of $eq, $ne, $in, $nin");
    std::vector<FilterNode> parts;
    for (const auto& [op, operand] : e.fields) {
        const std::string at = path + "." + op;
        if (op == "$in" || op == "$nin") {
            parts.push_back(parse_list_operand(op == "$in" ? FilterOp::IdIn : FilterOp::IdNin, "", operand, at, true));
        } else if (op == "$eq" || op == "$ne") {
            if (operand.kind != Kind::Str) fail(at, std::string("ids are str, got ") + kind_name(operand.kind));
            FilterNode n = leaf(op == "$eq" ? FilterOp::IdIn : FilterOp::IdNin, "", at);
            n.values.emplace_back(operand.s);
            parts.push_back(std::move(n));
        } else {
            fail(at, "unknown operator for $id (use $eq, $ne, $in, $nin)");
        }
    }
    return all_of(std::move(parts), path);
}

FilterNode parse_field(const std::string& key, const FilterExpr& e, const std::string& path);

FilterNode parse_operator(const std::string& key, const std::string& op, const FilterExpr& operand,
                          const std::string& at) {
    if (op == "$eq" || op == "$ne") {
        if (!is_scalar(operand))
            fail(at, std::string("expects a str, int, float or bool, got ") + kind_name(operand.kind));
        FilterNode n = leaf(op == "$eq" ? FilterOp::Eq : FilterOp::Ne, key, at);
        n.values.push_back(scalar_of(operand, at));
        return n;
    }
    if (op == "$gt" || op == "$gte" || op == "$lt" || op == "$lte") {
        if (operand.kind != Kind::Int && operand.kind != Kind::Float && operand.kind != Kind::Str)
            fail(at, std::string("orders numbers or str, got ") + kind_name(operand.kind));
        const FilterOp o = op == "$gt" ? FilterOp::Gt : op == "$gte" ? FilterOp::Gte : op == "$lt" ? FilterOp::Lt : FilterOp::Lte;
        FilterNode n = leaf(o, key, at);
        n.values.push_back(scalar_of(operand, at));
        return n;
    }
    if (op == "$in" || op == "$nin")
        return parse_list_operand(op == "$in" ? FilterOp::In : FilterOp::Nin, key, operand, at, false);
    if (op == "$contains") {
        if (operand.kind != Kind::Str) fail(at, std::string("expects a str tag, got ") + kind_name(operand.kind));
        FilterNode n = leaf(FilterOp::Contains, key, at);
        n.values.emplace_back(operand.s);
        return n;
    }
    if (op == "$not") {
        FilterNode n = leaf(FilterOp::Not, key, at);
        n.children.push_back(parse_field(key, operand, at));
        return n;
    }
    fail(at, "unknown operator");
}

// The value of a metadata key in a filter: a scalar ($eq), or a dict of operators.
FilterNode parse_field(const std::string& key, const FilterExpr& e, const std::string& path) {
    if (is_scalar(e)) {
        FilterNode n = leaf(FilterOp::Eq, key, path);
        n.values.push_back(scalar_of(e, path));
        return n;
    }
    if (e.kind != Kind::Object)
        fail(path, std::string("expects a value or a dict of operators, got ") + kind_name(e.kind) +
                       (e.kind == Kind::List ? " (use $in or $contains)" : ""));
    if (e.fields.empty()) fail(path, "an empty dict of operators");
    std::vector<FilterNode> parts;
    for (const auto& [op, operand] : e.fields) {
        const std::string at = path + "." + op;
        if (op.empty() || op[0] != '$') fail(at, "expected an operator ($eq, $gt, $in, ...); nested keys are not supported");
        parts.push_back(parse_operator(key, op, operand, at));
    }
    return all_of(std::move(parts), path);
}

FilterNode parse_expr(const FilterExpr& e, const std::string& path) {
    if (e.kind != Kind::Object) fail(path, std::string("a filter is a dict, got ") + kind_name(e.kind));
    if (e.fields.empty()) return leaf(FilterOp::All, "", path);
    std::vector<FilterNode> parts;
    for (const auto& [key, value] : e.fields) {
        const std::string at = path + "." + key;
        if (key == "$and" || key == "$or") {
            if (value.kind != Kind::List) fail(at, std::string("expects a list of filters, got ") + kind_name(value.kind));
            if (value.items.empty()) fail(at, "expects at least one filter");
            FilterNode n = leaf(key == "$and" ? FilterOp::And : FilterOp::Or, "", at);
            for (std::size_t i = 0; i < value.items.size(); ++i)
                n.children.push_back(parse_expr(value.items[i], at + "[" + std::to_string(i) + "]"));
            parts.push_back(std::move(n));
        } else if (key == "$not") {
            FilterNode n = leaf(FilterOp::Not, "", at);
            n.children.push_back(parse_expr(value, at));
            parts.push_back(std::move(n));
        } else if (key == "$id") {
            parts.push_back(parse_id(value, at));
        } else if (!key.empty() && key[0] == '$') {
            fail(at, "unknown operator");
        } else {
            parts.push_back(parse_field(key, value, at));
        }
    }
    return all_of(std::move(parts), path);
}

}  // namespace

Filter::Filter() : root_(std::make_shared<FilterNode>()) {}

Filter Filter::parse(const FilterExpr& expr) {
    return Filter(std::make_shared<const FilterNode>(parse_expr(expr, "filter")));
}

bool Filter::matches_all() const { return root_->op == FilterOp::All; }

}  // namespace hive_gpu
