// hive_gpu._core.AsyncStorage: the asyncio bridge over hive_gpu::AsyncStorage (docs/async.md).
#include <chrono>
#include <memory>
#include <mutex>
#include <utility>
#include <variant>
#include <vector>

#include "hive_gpu/async.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/filter.hpp"
#include "hive_gpu/storage.hpp"
#include "python/binding.hpp"

using namespace hive_gpu;

namespace {

// An owned Python reference that a worker thread may drop: it takes the GIL to do so.
class PyRef {
   public:
    PyRef() = default;
    explicit PyRef(py::object o) : p_(o.release().ptr()) {}
    PyRef(PyRef&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    PyRef& operator=(PyRef&& o) noexcept {
        if (this != &o) {
            reset();
            p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }
    PyRef(const PyRef&) = delete;
    PyRef& operator=(const PyRef&) = delete;
    ~PyRef() { reset(); }
    void reset() {
        if (!p_) return;
        py::gil_scoped_acquire gil;
        Py_DECREF(std::exchange(p_, nullptr));
    }
    // The GIL must be held for both.
    py::handle get() const { return p_; }
    py::object take() { return py::reinterpret_steal<py::object>(std::exchange(p_, nullptr)); }

   private:
    PyObject* p_ = nullptr;
};

// A failed request's error, raised on the awaiting side by raise_(), where the module's
// translator turns it into the same exception class as the synchronous call.
struct AsyncError {
    std::exception_ptr error;
};

using AsyncResult = std::variant<std::monostate, std::vector<SearchHit>, BatchResult, bool, std::size_t>;

struct Done {
    PyRef future;
    PyRef keepalive;  // the array a borrowed request read
    std::exception_ptr error;
    AsyncResult result;
};

py::object result_to_python(AsyncResult&& r) {
    if (auto* hits = std::get_if<std::vector<SearchHit>>(&r)) return hits_to_list(std::move(*hits));
    if (auto* batch = std::get_if<BatchResult>(&r)) return batch_to_python(std::move(*batch));
    if (auto* found = std::get_if<bool>(&r)) return py::bool_(*found);
    if (auto* count = std::get_if<std::size_t>(&r)) return py::int_(*count);
    return py::none();
}

// Completions bound for one asyncio loop. Workers queue them without the GIL; the first of a
// burst takes the GIL once to schedule drain() with the loop's call_soon_threadsafe, and
// drain() resolves every queued future on the loop thread.
class LoopSink : public std::enable_shared_from_this<LoopSink> {
   public:
    // schedule(fn): calls fn soon on the loop thread, or raises when the loop is gone or closed.
    explicit LoopSink(py::object schedule) : schedule_(PyRef(std::move(schedule))) {}

    void push(Done done) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            items_.push_back(std::move(done));
            if (armed_) return;
            armed_ = true;
        }
        py::gil_scoped_acquire gil;
        try {
            if (!drain_.get()) {
                std::weak_ptr<LoopSink> self = weak_from_this();
                drain_ = PyRef(py::cpp_function([self] {
                    if (auto s = self.lock()) s->drain();
                }));
            }
            schedule_.get()(drain_.get());
        } catch (py::error_already_set&) {
            // The loop is closed or gone: nobody can await these any more.
            std::vector<Done> dropped;
            std::lock_guard<std::mutex> lock(mutex_);
            dropped.swap(items_);
            armed_ = false;
        }
    }

    // On the loop thread, with the GIL.
    void drain() {
        std::vector<Done> ready;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            ready.swap(items_);
            armed_ = false;
        }
        for (Done& d : ready) {
            py::object future = d.future.take();
            d.keepalive.reset();
            try {
                if (future.attr("done")().cast<bool>()) continue;  // cancelled: drop the result
                py::object value = d.error ? py::cast(AsyncError{d.error})
                                           : result_to_python(std::move(d.result));
                future.attr("set_result")(value);
            } catch (py::error_already_set&) {
                // One future that cannot take its result must not stop the others.
            }
        }
    }

   private:
    // PyRef: the last owner of a sink may be a worker thread, without the GIL.
    PyRef schedule_;
    PyRef drain_;
    std::mutex mutex_;
    std::vector<Done> items_;
    bool armed_ = false;
};

// Joining the workers may wait on completions that need the GIL: never hold it meanwhile.
struct ReleaseGilDelete {
    void operator()(AsyncStorage* p) const {
        if (PyGILState_Check()) {
            py::gil_scoped_release release;
            delete p;
        } else {
            delete p;
        }
    }
};
using AsyncHolder = std::unique_ptr<AsyncStorage, ReleaseGilDelete>;

template <typename T>
Completion<T> completion_to(std::shared_ptr<LoopSink> sink, py::object future, py::object keepalive) {
    auto refs = std::make_shared<std::pair<PyRef, PyRef>>(PyRef(std::move(future)), PyRef(std::move(keepalive)));
    return [sink = std::move(sink), refs](std::exception_ptr error, T result) {
        sink->push(Done{std::move(refs->first), std::move(refs->second), error,
                        AsyncResult(std::in_place_type<T>, std::move(result))});
    };
}

WriteCompletion write_completion_to(std::shared_ptr<LoopSink> sink, py::object future, py::object keepalive) {
    auto refs = std::make_shared<std::pair<PyRef, PyRef>>(PyRef(std::move(future)), PyRef(std::move(keepalive)));
    return [sink = std::move(sink), refs](std::exception_ptr error) {
        sink->push(Done{std::move(refs->first), std::move(refs->second), error, AsyncResult{}});
    };
}

std::vector<float> vector_of(const FloatArray& v) {
    if (v.ndim() != 1) throw InvalidArgumentError("a vector must be a 1-D array");
    return std::vector<float>(v.data(), v.data() + v.shape(0));
}

py::dict async_stats_dict(const AsyncStats& s) {
    return py::dict("searches"_a = s.searches, "search_batches"_a = s.search_batches,
                    "largest_batch"_a = s.largest_batch, "batch_searches"_a = s.batch_searches,
                    "writes"_a = s.writes, "cancelled"_a = s.cancelled);
}

BatchingConfig batching_config(double max_wait_us, std::size_t max_batch) {
    if (!(max_wait_us >= 0.0) || max_wait_us > 3.6e9)
        throw InvalidArgumentError("max_wait_us must be in [0, 3.6e9]");
    return BatchingConfig{std::chrono::microseconds(static_cast<std::int64_t>(max_wait_us)), max_batch};
}

}  // namespace

void bind_async(py::module_& m) {
    py::class_<AsyncError>(m, "AsyncError").def("raise_", [](const AsyncError& e) {
        std::rethrow_exception(e.error);
    });
    py::class_<Ticket>(m, "Ticket").def("cancel", &Ticket::cancel);
    py::class_<LoopSink, std::shared_ptr<LoopSink>>(m, "LoopSink")
        .def(py::init<py::object>(), py::arg("schedule"));

    using Sink = std::shared_ptr<LoopSink>;
    py::class_<AsyncStorage, AsyncHolder>(m, "AsyncStorage")
        .def(py::init([](std::shared_ptr<VectorStorage> s, double max_wait_us, std::size_t max_batch,
                         std::size_t workers) {
                 return AsyncHolder(new AsyncStorage(std::move(s), batching_config(max_wait_us, max_batch), workers));
             }),
             py::arg("storage"), py::arg("max_wait_us") = 200.0, py::arg("max_batch") = 256,
             py::arg("workers") = 2)
        .def("search",
             [](AsyncStorage& a, const FloatArray& q, std::int64_t k, Sink sink, py::object future) {
                 if (q.ndim() != 1) throw InvalidArgumentError("a query must be a 1-D array");
                 return a.search(vector_of(q), k,
                                 completion_to<std::vector<SearchHit>>(std::move(sink), std::move(future), py::none()));
             })
        .def("search_batch",
             [](AsyncStorage& a, const FloatArray& q, std::int64_t k, Sink sink, py::object future) {
                 if (q.ndim() != 2) throw InvalidArgumentError("queries must be a 2-D array (nq, dimension)");
                 auto [nq, d] = rows_cols(q);
                 return a.search_batch(Rows::borrow(q.data(), nq, d), k,
                                       completion_to<BatchResult>(std::move(sink), std::move(future), q));
             })
        .def("add_vector",
             [](AsyncStorage& a, const std::string& id, const FloatArray& v, const Metadata& md, Sink sink,
                py::object future) {
                 return a.add_vector(id, vector_of(v), md,
                                     write_completion_to(std::move(sink), std::move(future), py::none()));
             })
        .def("add_vectors",
             [](AsyncStorage& a, const py::list& ids, const FloatArray& v, std::vector<Metadata> md,
                Sink sink, py::object future) {
                 if (v.ndim() != 2) throw InvalidArgumentError("vectors must be a 2-D array (n, dimension)");
                 auto [n, d] = rows_cols(v);
                 return a.add_vectors(ids_from(ids), Rows::borrow(v.data(), n, d), std::move(md),
                                      write_completion_to(std::move(sink), std::move(future), v));
             })
        .def("update_vector",
             [](AsyncStorage& a, const std::string& id, const FloatArray& v, std::optional<Metadata> md, Sink sink,
                py::object future) {
                 return a.update_vector(id, vector_of(v), std::move(md),
                                        completion_to<bool>(std::move(sink), std::move(future), py::none()));
             })
        .def("remove_vector",
             [](AsyncStorage& a, const std::string& id, Sink sink, py::object future) {
                 return a.remove_vector(id, completion_to<bool>(std::move(sink), std::move(future), py::none()));
             })
        .def("remove_vectors",
             [](AsyncStorage& a, const py::list& ids, Sink sink, py::object future) {
                 return a.remove_vectors(ids_from(ids, true), completion_to<std::size_t>(std::move(sink),
                                                                                         std::move(future), py::none()));
             })
        .def("save",
             [](AsyncStorage& a, const std::string& path, Sink sink, py::object future) {
                 return a.save(path, write_completion_to(std::move(sink), std::move(future), py::none()));
             })
        .def("search_filtered",
             [](AsyncStorage& a, const FloatArray& q, std::int64_t k, const Filter& f, Sink sink, py::object future) {
                 if (q.ndim() != 1) throw InvalidArgumentError("a query must be a 1-D array");
                 return a.search(vector_of(q), k, f,
                                 completion_to<std::vector<SearchHit>>(std::move(sink), std::move(future), py::none()));
             })
        .def("search_batch_filtered",
             [](AsyncStorage& a, const FloatArray& q, std::int64_t k, const Filter& f, Sink sink, py::object future) {
                 if (q.ndim() != 2) throw InvalidArgumentError("queries must be a 2-D array (nq, dimension)");
                 auto [nq, d] = rows_cols(q);
                 return a.search_batch(Rows::borrow(q.data(), nq, d), k, f,
                                       completion_to<BatchResult>(std::move(sink), std::move(future), q));
             })
        .def("update_metadata",
             [](AsyncStorage& a, const std::string& id, Metadata md, Sink sink, py::object future) {
                 return a.update_metadata(id, std::move(md),
                                          completion_to<bool>(std::move(sink), std::move(future), py::none()));
             })
        .def("set_batching",
             [](AsyncStorage& a, double max_wait_us, std::size_t max_batch) {
                 a.set_batching(batching_config(max_wait_us, max_batch));
             },
             py::arg("max_wait_us"), py::arg("max_batch"))
        .def("batching",
             [](const AsyncStorage& a) {
                 BatchingConfig c = a.batching();
                 return py::make_tuple(static_cast<double>(c.max_wait.count()), c.max_batch);
             })
        .def("stats", [](const AsyncStorage& a) { return async_stats_dict(a.stats()); })
        .def("shutdown", &AsyncStorage::shutdown, py::call_guard<py::gil_scoped_release>());
}
