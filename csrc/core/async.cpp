#include "hive_gpu/async.hpp"

#include <utility>

#include "core/batcher.hpp"

namespace hive_gpu {

namespace {

using detail::Request;
using detail::RequestKind;

// The run() of a Read or Write: the storage call, then a delivery of its outcome.
template <typename T, typename Call>
std::function<std::function<void()>(VectorStorage&)> run_then_deliver(
    std::shared_ptr<Completion<T>> done, Call call) {
    // mutable: a write runs once and may move what it captured into the storage.
    return [done = std::move(done), call = std::move(call)](VectorStorage& s) mutable -> std::function<void()> {
        try {
            return [done, result = call(s)]() mutable { (*done)(nullptr, std::move(result)); };
        } catch (...) {
            return [done, error = std::current_exception()] { (*done)(error, T{}); };
        }
    };
}

template <typename T>
Completion<T> fulfil(std::shared_ptr<std::promise<T>> p) {
    return [p = std::move(p)](std::exception_ptr error, T result) {
        if (error)
            p->set_exception(error);
        else
            p->set_value(std::move(result));
    };
}

WriteCompletion fulfil(std::shared_ptr<std::promise<void>> p) {
    return [p = std::move(p)](std::exception_ptr error) {
        if (error)
            p->set_exception(error);
        else
            p->set_value();
    };
}

// The future form of a request: `submit(completion)` is its callback form.
template <typename T, typename Submit>
std::future<T> future_of(Submit submit) {
    auto p = std::make_shared<std::promise<T>>();
    auto f = p->get_future();
    submit(fulfil(std::move(p)));
    return f;
}

}  // namespace

Rows Rows::copy_of(const float* data, std::size_t n, std::size_t dim) {
    auto copy = std::make_shared<std::vector<float>>(data, data + n * dim);
    return Rows{copy->data(), n, dim, copy};
}

bool Ticket::cancel() {
    if (!request_ || request_->kind == RequestKind::Write) return false;
    int expected = Request::Pending;
    return request_->state.compare_exchange_strong(expected, Request::Cancelled);
}

AsyncStorage::AsyncStorage(std::shared_ptr<VectorStorage> storage, BatchingConfig config,
                           std::size_t workers)
    : storage_(std::move(storage)) {
    if (!storage_) throw InvalidArgumentError("AsyncStorage needs a storage");
    batcher_ = std::make_unique<detail::Batcher>(storage_, config, workers);
}

AsyncStorage::~AsyncStorage() = default;

void AsyncStorage::set_batching(const BatchingConfig& config) { batcher_->set_config(config); }
BatchingConfig AsyncStorage::batching() const { return batcher_->config(); }
AsyncStats AsyncStorage::stats() const { return batcher_->stats(); }
void AsyncStorage::shutdown() { batcher_->shutdown(); }

Ticket AsyncStorage::search(std::vector<float> query, std::int64_t k,
                            Completion<std::vector<SearchHit>> done) {
    auto r = std::make_shared<Request>();
    r->kind = RequestKind::Search;
    r->query = std::move(query);
    r->k = k;
    r->on_hits = std::move(done);
    batcher_->submit(r);
    return Ticket(std::move(r));
}

Ticket AsyncStorage::search_batch(Rows queries, std::int64_t k, Completion<BatchResult> done) {
    auto r = std::make_shared<Request>();
    r->kind = RequestKind::Read;
    auto shared = std::make_shared<Completion<BatchResult>>(std::move(done));
    r->fail = [shared](std::exception_ptr e) { (*shared)(e, BatchResult{}); };
    r->run = run_then_deliver<BatchResult>(shared, [queries = std::move(queries), k](VectorStorage& s) {
        return s.search_batch(queries.data, queries.n, queries.dim, k);
    });
    batcher_->submit(r);
    return Ticket(std::move(r));
}

// A write request: never dropped by Ticket::cancel, run alone in issue order.
template <typename T, typename Call>
Ticket AsyncStorage::submit_write(Completion<T> done, Call call) {
    auto r = std::make_shared<Request>();
    r->kind = RequestKind::Write;
    auto shared = std::make_shared<Completion<T>>(std::move(done));
    r->fail = [shared](std::exception_ptr e) { (*shared)(e, T{}); };
    r->run = run_then_deliver<T>(shared, std::move(call));
    batcher_->submit(r);
    return Ticket(std::move(r));
}

// A write whose caller wants no result: a Completion<bool> whose value is ignored.
static Completion<bool> without_result(WriteCompletion done) {
    return [done = std::move(done)](std::exception_ptr error, bool) { done(error); };
}

Ticket AsyncStorage::add_vector(std::string id, std::vector<float> data, Metadata metadata,
                                WriteCompletion done) {
    return submit_write<bool>(
        without_result(std::move(done)),
        [id = std::move(id), data = std::move(data), md = std::move(metadata)](VectorStorage& s) {
            s.add_vector(id, data.data(), data.size(), md);
            return true;
        });
}

Ticket AsyncStorage::add_vectors(std::vector<std::string> ids, Rows rows, std::vector<Metadata> metadata,
                                 WriteCompletion done) {
    return submit_write<bool>(
        without_result(std::move(done)),
        [ids = std::move(ids), rows = std::move(rows), md = std::move(metadata)](VectorStorage& s) mutable {
            s.add_vectors(std::move(ids), rows.data, rows.n, rows.dim, std::move(md));
            return true;
        });
}

Ticket AsyncStorage::search(std::vector<float> query, std::int64_t k, Filter filter,
                            Completion<std::vector<SearchHit>> done) {
    auto r = std::make_shared<Request>();
    r->kind = RequestKind::Read;
    auto shared = std::make_shared<Completion<std::vector<SearchHit>>>(std::move(done));
    r->fail = [shared](std::exception_ptr e) { (*shared)(e, {}); };
    r->run = run_then_deliver<std::vector<SearchHit>>(
        shared, [query = std::move(query), k, filter = std::move(filter)](VectorStorage& s) {
            return s.search(query.data(), query.size(), k, filter);
        });
    batcher_->submit(r);
    return Ticket(std::move(r));
}

Ticket AsyncStorage::update_vector(std::string id, std::vector<float> data, std::optional<Metadata> metadata,
                                   Completion<bool> done) {
    return submit_write<bool>(
        std::move(done), [id = std::move(id), data = std::move(data), md = std::move(metadata)](VectorStorage& s) {
            return s.update_vector(id, data.data(), data.size(), md ? &*md : nullptr);
        });
}

Ticket AsyncStorage::remove_vector(std::string id, Completion<bool> done) {
    return submit_write<bool>(std::move(done),
                              [id = std::move(id)](VectorStorage& s) { return s.remove_vector(id); });
}

Ticket AsyncStorage::remove_vectors(std::vector<std::string> ids, Completion<std::size_t> done) {
    return submit_write<std::size_t>(std::move(done),
                                     [ids = std::move(ids)](VectorStorage& s) { return s.remove_vectors(ids); });
}

Ticket AsyncStorage::save(std::string path, WriteCompletion done) {
    return submit_write<bool>(without_result(std::move(done)), [path = std::move(path)](VectorStorage& s) {
                                  s.save(path);
                                  return true;
                              });
}

Ticket AsyncStorage::search_batch(Rows queries, std::int64_t k, Filter filter, Completion<BatchResult> done) {
    auto r = std::make_shared<Request>();
    r->kind = RequestKind::Read;
    auto shared = std::make_shared<Completion<BatchResult>>(std::move(done));
    r->fail = [shared](std::exception_ptr e) { (*shared)(e, BatchResult{}); };
    r->run = run_then_deliver<BatchResult>(
        shared, [queries = std::move(queries), k, filter = std::move(filter)](VectorStorage& s) {
            return s.search_batch(queries.data, queries.n, queries.dim, k, filter);
        });
    batcher_->submit(r);
    return Ticket(std::move(r));
}

Ticket AsyncStorage::update_metadata(std::string id, Metadata metadata, Completion<bool> done) {
    return submit_write<bool>(std::move(done), [id = std::move(id), md = std::move(metadata)](VectorStorage& s) {
        return s.update_metadata(id, md);
    });
}

std::future<std::vector<SearchHit>> AsyncStorage::search(std::vector<float> query, std::int64_t k) {
    return future_of<std::vector<SearchHit>>([&](auto done) { search(std::move(query), k, std::move(done)); });
}

std::future<BatchResult> AsyncStorage::search_batch(Rows queries, std::int64_t k) {
    return future_of<BatchResult>([&](auto done) { search_batch(std::move(queries), k, std::move(done)); });
}

std::future<void> AsyncStorage::add_vector(std::string id, std::vector<float> data, Metadata metadata) {
    return future_of<void>(
        [&](auto done) { add_vector(std::move(id), std::move(data), std::move(metadata), std::move(done)); });
}

std::future<void> AsyncStorage::add_vectors(std::vector<std::string> ids, Rows rows,
                                            std::vector<Metadata> metadata) {
    return future_of<void>(
        [&](auto done) { add_vectors(std::move(ids), std::move(rows), std::move(metadata), std::move(done)); });
}

std::future<bool> AsyncStorage::update_vector(std::string id, std::vector<float> data,
                                              std::optional<Metadata> metadata) {
    return future_of<bool>(
        [&](auto done) { update_vector(std::move(id), std::move(data), std::move(metadata), std::move(done)); });
}

std::future<bool> AsyncStorage::remove_vector(std::string id) {
    return future_of<bool>([&](auto done) { remove_vector(std::move(id), std::move(done)); });
}

std::future<std::size_t> AsyncStorage::remove_vectors(std::vector<std::string> ids) {
    return future_of<std::size_t>([&](auto done) { remove_vectors(std::move(ids), std::move(done)); });
}

std::future<void> AsyncStorage::save(std::string path) {
    return future_of<void>([&](auto done) { save(std::move(path), std::move(done)); });
}

}  // namespace hive_gpu
