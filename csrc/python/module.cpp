// hive_gpu._core: the only binding file. Every call that touches vectors releases the GIL.
#include <cstring>
#include <optional>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "hive_gpu/backends.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/storage.hpp"

namespace py = pybind11;
using namespace hive_gpu;

namespace {

using FloatArray = py::array_t<float, py::array::c_style>;

// Shape of a 1-D or 2-D float32 array as (rows, cols).
std::pair<std::size_t, std::size_t> rows_cols(const FloatArray& a) {
    if (a.ndim() == 1) return {1, static_cast<std::size_t>(a.shape(0))};
    if (a.ndim() == 2) return {static_cast<std::size_t>(a.shape(0)), static_cast<std::size_t>(a.shape(1))};
    throw InvalidArgumentError("expected a 1-D or 2-D array, got " + std::to_string(a.ndim()) + " dimensions");
}

py::tuple batch_to_python(BatchResult&& r) {
    FloatArray scores({r.nq, r.k});
    if (!r.scores.empty()) std::memcpy(scores.mutable_data(), r.scores.data(), r.scores.size() * sizeof(float));
    py::list ids(r.ids.size());
    for (std::size_t i = 0; i < r.ids.size(); ++i) ids[i] = py::str(r.ids[i]);
    return py::make_tuple(scores, ids, r.k);
}

void register_errors(py::module_& m) {
    py::module_ errors = py::module_::import("hive_gpu.errors");
    // Captured once; the translator runs with the GIL held.
    static py::object base = errors.attr("HiveGpuError");
    static py::object invalid = errors.attr("InvalidArgumentError");
    static py::object dimension = errors.attr("DimensionMismatchError");
    static py::object nonfinite = errors.attr("NonFiniteValueError");
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
            PyErr_SetString(io.ptr(), e.what());
        } catch (const StorageClosedError& e) {
            PyErr_SetString(closed.ptr(), e.what());
        } catch (const Error& e) {
            PyErr_SetString(base.ptr(), e.what());
        } catch (const std::bad_alloc&) {
            PyErr_SetString(oom.ptr(), "host memory exhausted");
        }
    });
}

py::dict device_info_dict(const DeviceInfo& d) {
    py::dict r;
    r["name"] = d.name;
    r["backend"] = d.backend;
    r["vram_total"] = d.vram_total;
    r["vram_available"] = d.vram_available;
    r["vram_used"] = d.vram_used;
    r["driver_version"] = d.driver_version;
    r["compute_capability"] = d.compute_capability;
    r["max_threads_per_block"] = d.max_threads_per_block;
    r["max_shared_memory"] = d.max_shared_memory;
    r["device_id"] = d.device_id;
    r["pci_bus_id"] = d.pci_bus_id;
    r["unknown"] = d.unknown;
    return r;
}

py::dict pool_stats_dict(const PoolStats& s) {
    py::dict r;
    r["reserved_bytes"] = s.reserved_bytes;
    r["used_bytes"] = s.used_bytes;
    r["peak_bytes"] = s.peak_bytes;
    r["allocations"] = s.allocations;
    r["device_allocations"] = s.device_allocations;
    r["release_threshold"] = s.config.release_threshold;
    r["max_bytes"] = s.config.max_bytes;
    return r;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "hive_gpu native core";
    m.attr("__version__") = HIVE_GPU_VERSION;
    register_errors(m);

    py::enum_<Metric>(m, "Metric")
        .value("COSINE", Metric::Cosine)
        .value("DOT_PRODUCT", Metric::DotProduct)
        .value("EUCLIDEAN", Metric::Euclidean);

    m.def("compiled_backends", &compiled_backends);
    m.def("backend_available", &backend_available, py::arg("backend"), py::call_guard<py::gil_scoped_release>());
    m.def("device_count", &hive_gpu::device_count, py::arg("backend"), py::call_guard<py::gil_scoped_release>());
    m.def("backend_unavailable_reason", &backend_unavailable_reason, py::arg("backend"),
          py::call_guard<py::gil_scoped_release>());
    m.def("create_context", &create_context, py::arg("backend"), py::arg("device_id") = 0,
          py::call_guard<py::gil_scoped_release>());

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
        .def("create_storage", &Context::create_storage, py::arg("dimension"), py::arg("metric"),
             py::call_guard<py::gil_scoped_release>())
        .def("load_storage",
             [](const std::shared_ptr<Context>& c, const std::string& path) {
                 return VectorStorage::load(c, path);
             },
             py::arg("path"), py::call_guard<py::gil_scoped_release>());

    py::class_<VectorStorage, std::shared_ptr<VectorStorage>>(m, "Storage")
        .def_property_readonly("dimension", &VectorStorage::dimension)
        .def_property_readonly("metric", &VectorStorage::metric)
        .def_property_readonly("backend", [](const VectorStorage& s) { return s.context()->backend(); })
        .def_property_readonly("context", &VectorStorage::context)
        .def("size", &VectorStorage::size)
        .def("contains", &VectorStorage::contains)
        .def("ids", &VectorStorage::ids)
        .def("memory_bytes", &VectorStorage::memory_bytes)
        .def("add_vector",
             [](VectorStorage& s, const std::string& id, const FloatArray& v, const Metadata& md) {
                 if (v.ndim() != 1) throw InvalidArgumentError("a vector must be a 1-D array");
                 py::gil_scoped_release release;
                 s.add_vector(id, v.data(), static_cast<std::size_t>(v.shape(0)), md);
             },
             py::arg("id"), py::arg("data"), py::arg("metadata") = Metadata{})
        .def("add_vectors",
             [](VectorStorage& s, const std::vector<std::string>& ids, const FloatArray& a,
                const std::vector<Metadata>& md) {
                 if (a.ndim() != 2) throw InvalidArgumentError("vectors must be a 2-D array (n, dimension)");
                 auto [n, d] = rows_cols(a);
                 py::gil_scoped_release release;
                 s.add_vectors(ids, a.data(), n, d, md);
             },
             py::arg("ids"), py::arg("data"), py::arg("metadata") = std::vector<Metadata>{})
        .def("update_vector",
             [](VectorStorage& s, const std::string& id, const FloatArray& v, std::optional<Metadata> md) {
                 if (v.ndim() != 1) throw InvalidArgumentError("a vector must be a 1-D array");
                 py::gil_scoped_release release;
                 return s.update_vector(id, v.data(), static_cast<std::size_t>(v.shape(0)),
                                        md ? &*md : nullptr);
             },
             py::arg("id"), py::arg("data"), py::arg("metadata") = std::nullopt)
        .def("remove_vector", &VectorStorage::remove_vector, py::call_guard<py::gil_scoped_release>())
        .def("remove_vectors", &VectorStorage::remove_vectors, py::call_guard<py::gil_scoped_release>())
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
                 py::list out(hits.size());
                 for (std::size_t i = 0; i < hits.size(); ++i)
                     out[i] = py::make_tuple(std::move(hits[i].id), hits[i].score, std::move(hits[i].metadata));
                 return out;
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
        .def("save", &VectorStorage::save, py::arg("path"), py::call_guard<py::gil_scoped_release>())
        .def("close", &VectorStorage::close, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("closed", &VectorStorage::closed);
}
