// What the binding's source files (module.cpp, async_bridge.cpp, testing.cpp) share: the
// metadata value caster, the array type and the conversions used on both sync and async paths.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "hive_gpu/storage.hpp"

namespace py = pybind11;
using namespace pybind11::literals;  // "key"_a = value in the dicts handed to Python

// ---- Typed metadata values: str, int, float, bool, list of str ----------------------------
// pybind11's variant caster would take a bool for an int; this one checks bool first and
// accepts nothing else. python/hive_gpu/_arrays.py checks first, with messages naming the key.
namespace pybind11::detail {
template <>
struct type_caster<hive_gpu::MetaValue> {
    PYBIND11_TYPE_CASTER(hive_gpu::MetaValue, const_name("str | int | float | bool | list[str]"));

    static bool utf8(handle h, std::string& out) {
        Py_ssize_t len = 0;
        const char* p = PyUnicode_AsUTF8AndSize(h.ptr(), &len);
        if (p == nullptr) {
            PyErr_Clear();
            return false;
        }
        out.assign(p, static_cast<std::size_t>(len));
        return true;
    }
    bool load(handle src, bool) {
        PyObject* o = src.ptr();
        if (PyBool_Check(o)) {
            value = o == Py_True;
        } else if (PyLong_Check(o)) {
            int overflow = 0;
            const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
            if (overflow || (v == -1 && PyErr_Occurred())) {
                PyErr_Clear();
                return false;
            }
            value = static_cast<std::int64_t>(v);
        } else if (PyFloat_Check(o)) {
            value = PyFloat_AS_DOUBLE(o);
        } else if (PyUnicode_Check(o)) {
            std::string s;
            if (!utf8(src, s)) return false;
            value = std::move(s);
        } else if (PyList_Check(o) || PyTuple_Check(o)) {
            hive_gpu::MetaTags tags;
            for (handle item : reinterpret_borrow<sequence>(src)) {
                if (!PyUnicode_Check(item.ptr())) return false;
                tags.emplace_back();
                if (!utf8(item, tags.back())) return false;
            }
            value = std::move(tags);
        } else {
            return false;
        }
        return true;
    }
    static handle cast(const hive_gpu::MetaValue& v, return_value_policy, handle) {
        return std::visit(
            [](const auto& x) -> handle {
                using T = std::decay_t<decltype(x)>;
                if constexpr (std::is_same_v<T, bool>) return pybind11::bool_(x).release();
                else if constexpr (std::is_same_v<T, std::string>) return pybind11::str(x).release();
                else if constexpr (std::is_same_v<T, std::int64_t>) return pybind11::int_(x).release();
                else if constexpr (std::is_same_v<T, double>) return pybind11::float_(x).release();
                else {
                    pybind11::list l(x.size());
                    for (std::size_t i = 0; i < x.size(); ++i) l[i] = pybind11::str(x[i]);
                    return l.release();
                }
            },
            v);
    }
};
}  // namespace pybind11::detail

using FloatArray = py::array_t<float, py::array::c_style>;

// A Python list of ids as C++ strings, each checked to be a str in the same pass.
// skip_unstorable: ids with no UTF-8 form, which no store can hold, are left out (for removals).
std::vector<std::string> ids_from(const py::list& ids, bool skip_unstorable = false);

// Shape of a 1-D or 2-D float32 array as (rows, cols).
std::pair<std::size_t, std::size_t> rows_cols(const FloatArray& a);

// (scores array, ids list, k) of a batch search.
py::tuple batch_to_python(hive_gpu::BatchResult&& r);

// [(id, score, metadata), ...] of a single search.
py::list hits_to_list(std::vector<hive_gpu::SearchHit>&& hits);

void bind_async(py::module_& m);    // async_bridge.cpp
void bind_testing(py::module_& m);  // testing.cpp
