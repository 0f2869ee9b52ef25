// hive_gpu._core: the module's bindings; the asyncio bridge is in async_bridge.cpp and the
// test-only hooks in testing.cpp. Every call that touches vectors releases the GIL.
#include <cstring>
#include <optional>
#include <utility>

#include "hive_gpu/backends.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/filter.hpp"
#include "hive_gpu/storage.hpp"
#include "python/binding.hpp"

using namespace hive_gpu;

namespace {

// An argument of the wrong Python type (hive_gpu.errors.InvalidArgumentTypeError, also a
// TypeError): only the binding sees Python types.
class ArgumentTypeError : public InvalidArgumentError {
   public:
    using InvalidArgumentError::InvalidArgumentError;
};

}  // namespace

// A Python list of ids as C++ strings, each checked to be a str in the same pass (the
// Python layer leaves that check to this loop: one pass over a million ids, not two).
// skip_unstorable: ids with no UTF-8 form, which no store can hold, are left out (for removals).
std::vector<std::string> ids_from(const py::list& ids, bool skip_unstorable) {
    std::vector<std::string> out;
    out.reserve(ids.size());
    for (py::handle h : ids) {
        if (!PyUnicode_CheckExact(h.ptr()))
            throw ArgumentTypeError("ids must be strings, got " +
                                       py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>() + " " +
                                       py::repr(h).cast<std::string>());
        Py_ssize_t len = 0;
        const char* p = PyUnicode_AsUTF8AndSize(h.ptr(), &len);
        if (p == nullptr) {  // a lone surrogate: no UTF-8 form
            PyErr_Clear();
            if (skip_unstorable) continue;
            throw InvalidArgumentError("ids must be valid Unicode text, got " + py::repr(h).cast<std::string>());
        }
        out.emplace_back(p, static_cast<std::size_t>(len));
    }
    return out;
}


// Shape of a 1-D or 2-D float32 array as (rows, cols).
std::pair<std::size_t, std::size_t> rows_cols(const FloatArray& a) {
    if (a.ndim() == 1) return {1, static_cast<std::size_t>(a.shape(0))};
    if (a.ndim() == 2) return {static_cast<std::size_t>(a.shape(0)), static_cast<std::size_t>(a.shape(1))};
    throw InvalidArgumentError("expected a 1-D or 2-D array, got " + std::to_string(a.ndim()) + " dimensions");
}

namespace {

// Host rows as the core takes them: a C-contiguous array of float32, float16 or bfloat16
// (ml_dtypes' type, which JAX and PyTorch's NumPy bridge use), read in place in its own
// dtype. Other arrays are cast to float32 where NumPy casts safely (ints, bools, complex
// and objects are refused).
struct TypedRows {
    py::array array;  // keeps the data alive
    Dtype dtype = Dtype::Float32;
    std::size_t rows = 0, cols = 0;
    const void* data() const { return array.data(); }
};

TypedRows typed_rows(const py::array& given, int ndim, const char* what) {
    TypedRows out;
    const py::dtype dt = given.dtype();
    const bool bf16 = dt.itemsize() == 2 && py::str(dt.attr("name")).cast<std::string>() == "bfloat16";
    if (dt.kind() == 'f' && (dt.itemsize() == 4 || dt.itemsize() == 2)) {
        out.dtype = dt.itemsize() == 4 ? Dtype::Float32 : Dtype::Float16;
        out.array = py::array::ensure(given, py::array::c_style);
    } else if (bf16) {
        out.dtype = Dtype::BFloat16;
        out.array = py::array::ensure(given, py::array::c_style);
    } else {
        out.array = FloatArray::ensure(given);
    }
    if (!out.array) {
        PyErr_Clear();
        throw ArgumentTypeError(std::string(what) + " must have a floating-point dtype, got " +
                                py::str(static_cast<py::object>(dt)).cast<std::string>());
    }
    if (out.array.ndim() != ndim)
        throw InvalidArgumentError(ndim == 1 ? std::string("a ") + what + " must be a 1-D array"
                                             : std::string(what) + " must be a 2-D array (n, dimension)");
    out.rows = ndim == 1 ? 1 : static_cast<std::size_t>(out.array.shape(0));
    out.cols = static_cast<std::size_t>(out.array.shape(ndim - 1));
    return out;
}

}  // namespace

py::tuple batch_to_python(BatchResult&& r) {
    FloatArray scores({r.nq, r.k});
    if (!r.scores.empty()) std::memcpy(scores.mutable_data(), r.scores.data(), r.scores.size() * sizeof(float));
    py::list ids(r.ids.size());
    for (std::size_t i = 0; i < r.ids.size(); ++i) ids[i] = py::str(r.ids[i]);
    return py::make_tuple(scores, ids, r.k);
}

py::list hits_to_list(std::vector<SearchHit>&& hits) {
    py::list out(hits.size());
    for (std::size_t i = 0; i < hits.size(); ++i)
        out[i] = py::make_tuple(std::move(hits[i].id), hits[i].score, std::move(hits[i].metadata));
    return out;
}

namespace {

// A file error as hive_gpu.errors builds it: a PersistenceError that is also the OSError
// subclass of its errno (FileNotFoundError, PermissionError...), errno and filename set.
void set_io_error(const IoError& e) {
    try {
        // Looked up per error, not kept in a static: a static py::object is released after
        // the interpreter has shut down.
        py::object make = py::module_::import("hive_gpu.errors").attr("_persistence_error");
        py::object err = make(e.what(), e.error_number(), py::bytes(e.path()));
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(err.ptr())), err.ptr());
    } catch (py::error_already_set& failed) {
        failed.restore();  // building the error failed (out of memory): raise that instead
    }
}

void register_errors(py::module_& m) {
    py::module_ errors = py::module_::import("hive_gpu.errors");
    // Captured once; the translator runs with the GIL held.
    static py::object base = errors.attr("HiveGpuError");
    static py::object invalid = errors.attr("InvalidArgumentError");
    static py::object invalid_type = errors.attr("InvalidArgumentTypeError");
    static py::object dimension = errors.attr("DimensionMismatchError");
    static py::object nonfinite = errors.attr("NonFiniteValueError");
    static py::object bad_dtype = errors.attr("InvalidDtypeError");
    static py::object duplicate = errors.attr("DuplicateIdError");
    static py::object notfound = errors.attr("VectorNotFoundError");
    static py::object nodevice = errors.attr("NoDeviceError");
    static py::object badid = errors.attr("InvalidDeviceIdError");
    static py::object oom = errors.attr("OutOfMemoryError");
    static py::object backend = errors.attr("BackendError");
    static py::object corrupt = errors.attr("CorruptFileError");
    static py::object io = errors.attr("PersistenceError");
    static py::object closed = errors.attr("StorageClosedError");
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const DimensionMismatchError& e) {
            PyErr_SetString(dimension.ptr(), e.what());
        } catch (const NonFiniteValueError& e) {
            PyErr_SetString(nonfinite.ptr(), e.what());
        } catch (const DuplicateIdError& e) {
            PyErr_SetString(duplicate.ptr(), e.what());
        } catch (const InvalidDtypeError& e) {
            PyErr_SetString(bad_dtype.ptr(), e.what());
        } catch (const ArgumentTypeError& e) {
            PyErr_SetString(invalid_type.ptr(), e.what());
        } catch (const InvalidArgumentError& e) {
            PyErr_SetString(invalid.ptr(), e.what());
        } catch (const VectorNotFoundError& e) {
            PyErr_SetString(notfound.ptr(), e.what());
        } catch (const NoDeviceError& e) {
            PyErr_SetString(nodevice.ptr(), e.what());
        } catch (const InvalidDeviceIdError& e) {
            PyErr_SetString(badid.ptr(), e.what());
        } catch (const OutOfMemoryError& e) {
            PyErr_SetString(oom.ptr(), e.what());
        } catch (const BackendError& e) {
            PyErr_SetString(backend.ptr(), e.what());
        } catch (const CorruptFileError& e) {
            PyErr_SetString(corrupt.ptr(), e.what());
        } catch (const IoError& e) {
            set_io_error(e);
        } catch (const StorageClosedError& e) {
            PyErr_SetString(closed.ptr(), e.what());
        } catch (const Error& e) {
            PyErr_SetString(base.ptr(), e.what());
        } catch (const std::bad_alloc&) {
            PyErr_SetString(oom.ptr(), "host memory exhausted");
        }
    });
}

// A Python filter (dicts, lists, scalars) as the core's FilterExpr; `path` names where a
// value of a type no filter holds was found.
FilterExpr filter_expr_from(py::handle h, const std::string& path) {
    PyObject* o = h.ptr();
    if (o == Py_None) return FilterExpr();
    if (PyBool_Check(o)) return FilterExpr::of(o == Py_True);
    if (PyLong_Check(o)) {
        int overflow = 0;
        const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            throw InvalidArgumentError(path + ": an int outside the 64-bit range");
        }
        return FilterExpr::of(static_cast<std::int64_t>(v));
    }
    if (PyFloat_Check(o)) return FilterExpr::of(PyFloat_AS_DOUBLE(o));
    if (PyUnicode_Check(o)) {
        Py_ssize_t len = 0;
        const char* p = PyUnicode_AsUTF8AndSize(o, &len);
        if (p == nullptr) {
            PyErr_Clear();
            throw InvalidArgumentError(path + ": a str that is not valid Unicode text");
        }
        return FilterExpr::of(std::string(p, static_cast<std::size_t>(len)));
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
        std::vector<FilterExpr> items;
        std::size_t i = 0;
        for (py::handle item : py::reinterpret_borrow<py::sequence>(h))
            items.push_back(filter_expr_from(item, path + "[" + std::to_string(i++) + "]"));
        return FilterExpr::list(std::move(items));
    }
    if (PyDict_Check(o)) {
        std::vector<std::pair<std::string, FilterExpr>> fields;
        for (auto [k, v] : py::reinterpret_borrow<py::dict>(h)) {
            if (!PyUnicode_Check(k.ptr()))
                throw InvalidArgumentError(path + ": keys are str, got " +
                                           py::str(py::type::handle_of(k).attr("__name__")).cast<std::string>());
            std::string key = py::str(k).cast<std::string>();
            FilterExpr value = filter_expr_from(v, path + "." + key);
            fields.emplace_back(std::move(key), std::move(value));
        }
        return FilterExpr::object(std::move(fields));
    }
    throw InvalidArgumentError(path + ": a filter holds dicts, lists, str, int, float and bool, got " +
                               py::str(py::type::handle_of(h).attr("__name__")).cast<std::string>());
}

py::dict device_info_dict(const DeviceInfo& d) {
    return py::dict("name"_a = d.name, "backend"_a = d.backend, "vram_total"_a = d.vram_total,
                    "vram_available"_a = d.vram_available, "vram_used"_a = d.vram_used,
                    "driver_version"_a = d.driver_version, "compute_capability"_a = d.compute_capability,
                    "max_threads_per_block"_a = d.max_threads_per_block,
                    "max_shared_memory"_a = d.max_shared_memory, "device_id"_a = d.device_id,
                    "pci_bus_id"_a = d.pci_bus_id, "unknown"_a = d.unknown);
}

py::dict pool_stats_dict(const PoolStats& s) {
    return py::dict("reserved_bytes"_a = s.reserved_bytes, "used_bytes"_a = s.used_bytes,
                    "peak_bytes"_a = s.peak_bytes, "allocations"_a = s.allocations,
                    "device_allocations"_a = s.device_allocations, "rows_bytes"_a = s.rows_bytes,
                    "release_threshold"_a = s.config.release_threshold,
                    "max_bytes"_a = s.config.max_bytes);
}

}  // namespace


PYBIND11_MODULE(_core, m) {
    m.doc() = "hive_gpu native core";
    m.attr("__version__") = HIVE_GPU_VERSION;
    m.attr("MAX_DIMENSION") = kMaxDimension;
    register_errors(m);

    py::enum_<Metric>(m, "Metric")
        .value("COSINE", Metric::Cosine)
        .value("DOT_PRODUCT", Metric::DotProduct)
        .value("EUCLIDEAN", Metric::Euclidean);

    m.def("compiled_backends", &compiled_backends);
    m.def("backend_available", &backend_available, py::arg("backend"), py::call_guard<py::gil_scoped_release>());
    m.def("backend_emulated", &backend_emulated, py::arg("backend"), py::call_guard<py::gil_scoped_release>());
    m.def("device_count", &hive_gpu::device_count, py::arg("backend"), py::call_guard<py::gil_scoped_release>());
    m.def("backend_unavailable_reason", &backend_unavailable_reason, py::arg("backend"),
          py::call_guard<py::gil_scoped_release>());
    // Every backend of CMakeLists.txt, compiled or not, in "auto" order: (name, context class,
    // aliases, description). Python makes its context classes from it.
    m.def("known_backends", [] {
        py::list out;
#define HIVE_GPU_KNOWN_BACKEND(name, context, aliases, description, reason) \
    out.append(py::make_tuple(#name, context, py::str(aliases).attr("split")(), description));
        HIVE_GPU_KNOWN_BACKENDS(HIVE_GPU_KNOWN_BACKEND)
#undef HIVE_GPU_KNOWN_BACKEND
        return out;
    });
    m.def("create_context", &create_context, py::arg("backend"), py::arg("device_id") = 0,
          py::call_guard<py::gil_scoped_release>());
    // Checks a saved store as load() does, on no device: its header as a dict.
    m.def("inspect_file",
          [](const std::string& path) {
              StoreFileInfo info;
              {
                  py::gil_scoped_release release;
                  info = VectorStorage::inspect_file(path);
              }
              return py::dict("format_version"_a = info.format_version, "metric"_a = info.metric,
                              "dimension"_a = info.dimension, "count"_a = info.count,
                              "next_ordinal"_a = info.next_ordinal, "file_bytes"_a = info.file_bytes,
                              "dtype"_a = info.dtype);
          },
          py::arg("path"));

    py::class_<Context, std::shared_ptr<Context>>(m, "Context")
        .def_property_readonly("backend", &Context::backend)
        .def("device_info",
             [](const Context& c) {
                 DeviceInfo d;
                 {
                     py::gil_scoped_release release;
                     d = c.device_info();
                 }
                 return device_info_dict(d);
             })
        .def("pool_stats", [](const Context& c) { return pool_stats_dict(c.pool_stats()); })
        .def("set_pool_config",
             [](Context& c, std::uint64_t release_threshold, std::uint64_t max_bytes) {
                 c.set_pool_config(PoolConfig{release_threshold, max_bytes});
             },
             py::arg("release_threshold"), py::arg("max_bytes"))
        .def("create_storage",
             [](Context& c, std::size_t dimension, Metric metric, const std::string& dtype) {
                 const Dtype d = dtype_from_name(dtype);
                 py::gil_scoped_release release;
                 return c.create_storage(dimension, metric, d);
             },
             py::arg("dimension"), py::arg("metric"), py::arg("dtype") = "float32")
        .def("load_storage",
             [](const std::shared_ptr<Context>& c, const std::string& path) {
                 return VectorStorage::load(c, path);
             },
             py::arg("path"), py::call_guard<py::gil_scoped_release>())
        .def("storage_from_bytes",
             [](const std::shared_ptr<Context>& c, const py::buffer& data) {
                 py::buffer_info b = data.request();  // C-contiguous bytes-like, kept alive by `data`
                 if (b.ndim != 1 || b.itemsize != 1 || (b.ndim == 1 && b.strides[0] != 1))
                     throw InvalidArgumentError("from_bytes needs contiguous bytes (bytes, bytearray, memoryview)");
                 py::gil_scoped_release release;
                 return VectorStorage::from_bytes(c, b.ptr, static_cast<std::size_t>(b.size));
             },
             py::arg("data"));

    // A compiled filter (hive_gpu/filter.hpp); python/hive_gpu/_filter.py wraps it.
    py::class_<Filter>(m, "Filter")
        .def(py::init([](py::handle expr) { return Filter::parse(filter_expr_from(expr, "filter")); }),
             py::arg("expr"))
        .def_property_readonly("matches_all", &Filter::matches_all);

    py::class_<VectorStorage, std::shared_ptr<VectorStorage>>(m, "Storage")
        .def_property_readonly("dimension", &VectorStorage::dimension)
        .def_property_readonly("metric", &VectorStorage::metric)
        .def_property_readonly("dtype", [](const VectorStorage& s) { return std::string(dtype_name(s.dtype())); })
        .def_property_readonly("backend", [](const VectorStorage& s) { return s.context()->backend(); })
        .def_property_readonly("context", &VectorStorage::context)
        .def("size", &VectorStorage::size)
        .def("contains", &VectorStorage::contains)
        .def("ids", py::overload_cast<>(&VectorStorage::ids, py::const_))
        .def("memory_bytes", &VectorStorage::memory_bytes)
        .def("add_vector",
             [](VectorStorage& s, const std::string& id, const py::array& data, const Metadata& md) {
                 const TypedRows v = typed_rows(data, 1, "vector");
                 py::gil_scoped_release release;
                 s.add_vector(id, v.data(), v.dtype, v.cols, md);
             },
             py::arg("id"), py::arg("data"), py::arg("metadata") = Metadata{})
        .def("add_vectors",
             [](VectorStorage& s, const py::list& id_list, const py::array& data, std::vector<Metadata> md) {
                 const TypedRows a = typed_rows(data, 2, "vectors");
                 const std::size_t n = a.rows, d = a.cols;
                 // A large batch starts travelling to the device (on threads of its own)
                 // while this one converts the ids, which needs the GIL. `a` stays alive.
                 // Staging carries float32 rows only.
                 std::unique_ptr<StagedRows> staged;
                 if (id_list.size() == n && a.dtype == Dtype::Float32) {
                     try {
                         staged = s.stage_rows(static_cast<const float*>(a.data()), n, d);
                     } catch (const std::exception&) {
                         // The add from host memory runs instead and reports any error.
                     }
                 }
                 std::vector<std::string> ids;
                 try {
                     ids = ids_from(id_list);
                 } catch (...) {
                     {
                         py::gil_scoped_release release;
                         staged.reset();  // waits for the copy
                     }
                     throw;
                 }
                 py::gil_scoped_release release;
                 s.add_vectors(std::move(ids), a.data(), a.dtype, n, d, std::move(md), std::move(staged));
             },
             py::arg("ids"), py::arg("data"), py::arg("metadata") = std::vector<Metadata>{})
        .def("update_vector",
             [](VectorStorage& s, const std::string& id, const py::array& data, std::optional<Metadata> md) {
                 const TypedRows v = typed_rows(data, 1, "vector");
                 py::gil_scoped_release release;
                 return s.update_vector(id, v.data(), v.dtype, v.cols, md ? &*md : nullptr);
             },
             py::arg("id"), py::arg("data"), py::arg("metadata") = std::nullopt)
        .def("upsert_vectors",
             [](VectorStorage& s, const py::list& id_list, const py::array& data, std::vector<std::optional<Metadata>> md) {
                 const TypedRows a = typed_rows(data, 2, "vectors");
                 std::vector<std::string> ids = ids_from(id_list);
                 py::gil_scoped_release release;
                 s.upsert_vectors(std::move(ids), a.data(), a.dtype, a.rows, a.cols, std::move(md));
             },
             py::arg("ids"), py::arg("data"), py::arg("metadata") = std::vector<std::optional<Metadata>>{})
        .def("get_vectors",
             [](const VectorStorage& s, const py::list& id_list) {
                 std::vector<std::string> ids = ids_from(id_list);
                 FloatArray rows({ids.size(), s.dimension()});
                 std::vector<Metadata> md;
                 float* out = rows.mutable_data();
                 {
                     py::gil_scoped_release release;
                     s.get_vectors(ids, out, &md);
                 }
                 return py::make_tuple(rows, md);
             },
             py::arg("ids"))
        .def("remove_vector", &VectorStorage::remove_vector, py::call_guard<py::gil_scoped_release>())
        .def("remove_vectors", py::overload_cast<const std::vector<std::string>&>(&VectorStorage::remove_vectors),
             py::call_guard<py::gil_scoped_release>())
        .def("clear", &VectorStorage::clear, py::call_guard<py::gil_scoped_release>())
        .def("get_vector",
             [](const VectorStorage& s, const std::string& id) -> py::object {
                 std::optional<Vector> v;
                 {
                     py::gil_scoped_release release;
                     v = s.get_vector(id);
                 }
                 if (!v) return py::none();
                 FloatArray data(static_cast<py::ssize_t>(v->data.size()));
                 std::memcpy(data.mutable_data(), v->data.data(), v->data.size() * sizeof(float));
                 return py::make_tuple(data, v->metadata);
             })
        .def("get_metadata", &VectorStorage::get_metadata)
        .def("search",
             [](const VectorStorage& s, const FloatArray& q, std::int64_t k) {
                 if (q.ndim() != 1) throw InvalidArgumentError("a query must be a 1-D array");
                 std::vector<SearchHit> hits;
                 {
                     py::gil_scoped_release release;
                     hits = s.search(q.data(), static_cast<std::size_t>(q.shape(0)), k);
                 }
                 return hits_to_list(std::move(hits));
             },
             py::arg("query"), py::arg("k"))
        .def("search_batch",
             [](const VectorStorage& s, const FloatArray& q, std::int64_t k) {
                 if (q.ndim() != 2) throw InvalidArgumentError("queries must be a 2-D array (nq, dimension)");
                 auto [nq, d] = rows_cols(q);
                 BatchResult r;
                 {
                     py::gil_scoped_release release;
                     r = s.search_batch(q.data(), nq, d, k);
                 }
                 return batch_to_python(std::move(r));
             },
             py::arg("queries"), py::arg("k"))
        // Device arrays: raw device pointers plus the producer's stream (as in
        // __cuda_array_interface__ v3); python/hive_gpu/_device_arrays.py fills them in.
        .def("add_vectors_device",
             [](VectorStorage& s, const py::list& id_list, std::uintptr_t ptr, std::size_t n,
                std::size_t dim, std::size_t ld, std::uintptr_t stream, std::vector<Metadata> md,
                const std::string& dtype) {
                 std::vector<std::string> ids = ids_from(id_list);
                 const Dtype d = dtype_from_name(dtype);
                 py::gil_scoped_release release;
                 s.add_vectors_device(std::move(ids), reinterpret_cast<const void*>(ptr), d, n, dim, ld, stream,
                                      std::move(md));
             },
             py::arg("ids"), py::arg("ptr"), py::arg("n"), py::arg("dim"), py::arg("ld"), py::arg("stream"),
             py::arg("metadata") = std::vector<Metadata>{}, py::arg("dtype") = "float32")
        .def("search_device",
             [](const VectorStorage& s, std::uintptr_t ptr, std::size_t dim, std::int64_t k, std::uintptr_t stream,
                const std::string& dtype) {
                 const Dtype d = dtype_from_name(dtype);
                 std::vector<SearchHit> hits;
                 {
                     py::gil_scoped_release release;
                     hits = s.search_device(reinterpret_cast<const void*>(ptr), d, dim, k, stream);
                 }
                 return hits_to_list(std::move(hits));
             },
             py::arg("ptr"), py::arg("dim"), py::arg("k"), py::arg("stream"), py::arg("dtype") = "float32")
        .def("search_batch_device",
             [](const VectorStorage& s, std::uintptr_t ptr, std::size_t nq, std::size_t dim, std::size_t ld,
                std::int64_t k, std::uintptr_t stream, std::uintptr_t out_ptr, const std::string& dtype) {
                 const Dtype d = dtype_from_name(dtype);
                 BatchResult r;
                 {
                     py::gil_scoped_release release;
                     r = s.search_batch_device(reinterpret_cast<const void*>(ptr), d, nq, dim, ld, k, stream,
                                               reinterpret_cast<float*>(out_ptr));
                 }
                 return batch_to_python(std::move(r));
             },
             py::arg("ptr"), py::arg("nq"), py::arg("dim"), py::arg("ld"), py::arg("k"), py::arg("stream"),
             py::arg("out_ptr") = 0, py::arg("dtype") = "float32")
        // Filtered forms and metadata updates (hive_gpu/filter.hpp).
        .def("update_metadata", &VectorStorage::update_metadata, py::arg("id"), py::arg("metadata"),
             py::call_guard<py::gil_scoped_release>())
        .def("count", py::overload_cast<const Filter&>(&VectorStorage::count, py::const_), py::arg("filter"),
             py::call_guard<py::gil_scoped_release>())
        .def("ids_filtered", py::overload_cast<const Filter&>(&VectorStorage::ids, py::const_), py::arg("filter"),
             py::call_guard<py::gil_scoped_release>())
        .def("remove_filtered", py::overload_cast<const Filter&>(&VectorStorage::remove_vectors), py::arg("filter"),
             py::call_guard<py::gil_scoped_release>())
        .def("search_filtered",
             [](const VectorStorage& s, const FloatArray& q, std::int64_t k, const Filter& f) {
                 if (q.ndim() != 1) throw InvalidArgumentError("a query must be a 1-D array");
                 std::vector<SearchHit> hits;
                 {
                     py::gil_scoped_release release;
                     hits = s.search(q.data(), static_cast<std::size_t>(q.shape(0)), k, f);
                 }
                 return hits_to_list(std::move(hits));
             },
             py::arg("query"), py::arg("k"), py::arg("filter"))
        .def("search_batch_filtered",
             [](const VectorStorage& s, const FloatArray& q, std::int64_t k, const Filter& f) {
                 if (q.ndim() != 2) throw InvalidArgumentError("queries must be a 2-D array (nq, dimension)");
                 auto [nq, d] = rows_cols(q);
                 BatchResult r;
                 {
                     py::gil_scoped_release release;
                     r = s.search_batch(q.data(), nq, d, k, f);
                 }
                 return batch_to_python(std::move(r));
             },
             py::arg("queries"), py::arg("k"), py::arg("filter"))
        .def("save", &VectorStorage::save, py::arg("path"), py::call_guard<py::gil_scoped_release>())
        .def("to_bytes",
             [](const VectorStorage& s) {
                 std::string out;
                 {
                     py::gil_scoped_release release;
                     out = s.to_bytes();
                 }
                 return py::bytes(out);
             })
        .def("close", &VectorStorage::close, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("closed", &VectorStorage::closed);

    bind_async(m);
    bind_testing(m);
}
