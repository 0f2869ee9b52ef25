// Asynchronous access to one VectorStorage: every call returns at once and completes later
// on a worker thread, through a callback or a std::future. Concurrent single-query searches
// are coalesced into one engine batch (micro-batching). See docs/async.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hive_gpu/error.hpp"
#include "hive_gpu/filter.hpp"
#include "hive_gpu/storage.hpp"
#include "hive_gpu/types.hpp"

namespace hive_gpu {

// The completion of a search that Ticket::cancel() dropped before it ran.
class CancelledError : public Error {
   public:
    using Error::Error;
};

struct BatchingConfig {
    // Longest time the oldest waiting single search waits for company while the engine has no
    // search batch running; while one runs, the next batch keeps filling until it ends.
    std::chrono::microseconds max_wait{200};
    // Most single searches in one engine call; 1 turns coalescing off.
    std::size_t max_batch = 256;
};

// Counters since the AsyncStorage was made.
struct AsyncStats {
    std::uint64_t searches = 0;        // single searches executed (cancelled ones excluded)
    std::uint64_t search_batches = 0;  // engine calls that executed them
    std::uint64_t largest_batch = 0;
    std::uint64_t batch_searches = 0;  // search_batch requests executed
    std::uint64_t writes = 0;          // add, update, remove and save requests executed
    std::uint64_t cancelled = 0;       // searches dropped before they ran
};

// Rows an async request reads when it runs. `owner` keeps `data` alive until the request has
// completed; with a null owner the caller guarantees that instead.
struct Rows {
    const float* data = nullptr;
    std::size_t n = 0;
    std::size_t dim = 0;
    std::shared_ptr<const void> owner;

    static Rows copy_of(const float* data, std::size_t n, std::size_t dim);
    static Rows borrow(const float* data, std::size_t n, std::size_t dim) { return {data, n, dim, nullptr}; }
};

// Called exactly once per request, on a worker thread: error is null on success. A completion
// must not throw (an exception it lets escape is dropped) and should return quickly: the
// worker that runs it serves the storage's queue.
template <typename T>
using Completion = std::function<void(std::exception_ptr error, T result)>;
using WriteCompletion = std::function<void(std::exception_ptr error)>;

namespace detail {
struct Request;
class Batcher;
}  // namespace detail

// Handle on one submitted request.
class Ticket {
   public:
    Ticket() = default;
    explicit Ticket(std::shared_ptr<detail::Request> request) : request_(std::move(request)) {}
    // Drops a search that has not started; its completion then gets CancelledError. Writes are
    // never dropped (later requests were issued after them), so this returns false for them.
    bool cancel();

   private:
    std::shared_ptr<detail::Request> request_;
};

// The asynchronous face of one storage. Requests run in the order they were submitted, except
// that adjacent single searches run together as one batch:
//   - a request sees every write submitted before it, and no write submitted after it;
//   - searches run concurrently with each other (up to `workers` engine calls at once), never
//     with a write of this queue.
// Synchronous calls on the storage itself are not ordered with this queue, only made safe by
// the storage's lock. Use one AsyncStorage per storage so that every request shares one order.
class AsyncStorage {
   public:
    explicit AsyncStorage(std::shared_ptr<VectorStorage> storage, BatchingConfig config = {},
                          std::size_t workers = 2);
    // Runs every request already submitted, then stops the workers.
    ~AsyncStorage();
    AsyncStorage(const AsyncStorage&) = delete;
    AsyncStorage& operator=(const AsyncStorage&) = delete;

    const std::shared_ptr<VectorStorage>& storage() const { return storage_; }

    // Callback forms. Results and errors are those of the synchronous call of the same name;
    // they throw StorageClosedError at once after shutdown().
    Ticket search(std::vector<float> query, std::int64_t k, Completion<std::vector<SearchHit>> done);
    Ticket search_batch(Rows queries, std::int64_t k, Completion<BatchResult> done);
    Ticket add_vector(std::string id, std::vector<float> data, Metadata metadata, WriteCompletion done);
    Ticket add_vectors(std::vector<std::string> ids, Rows rows, std::vector<Metadata> metadata,
                       WriteCompletion done);
    Ticket update_vector(std::string id, std::vector<float> data, std::optional<Metadata> metadata,
                         Completion<bool> done);
    Ticket remove_vector(std::string id, Completion<bool> done);
    Ticket remove_vectors(std::vector<std::string> ids, Completion<std::size_t> done);
    // A save is a write of the queue (it sees every earlier write and runs alone), so that
    // the file holds exactly what the requests before it made.
    Ticket save(std::string path, WriteCompletion done);

    // Filtered searches run as one storage call each, in queue order, without coalescing:
    // searches with different filters cannot share an engine batch.
    Ticket search(std::vector<float> query, std::int64_t k, Filter filter,
                  Completion<std::vector<SearchHit>> done);
    Ticket search_batch(Rows queries, std::int64_t k, Filter filter, Completion<BatchResult> done);
    // A write, like add_vector: completes with whether the id was found.
    Ticket update_metadata(std::string id, Metadata metadata, Completion<bool> done);

    // Future forms (the future rethrows the error of the synchronous call).
    std::future<std::vector<SearchHit>> search(std::vector<float> query, std::int64_t k);
    std::future<BatchResult> search_batch(Rows queries, std::int64_t k);
    std::future<void> add_vector(std::string id, std::vector<float> data, Metadata metadata = {});
    std::future<void> add_vectors(std::vector<std::string> ids, Rows rows,
                                  std::vector<Metadata> metadata = {});
    std::future<bool> update_vector(std::string id, std::vector<float> data,
                                    std::optional<Metadata> metadata = std::nullopt);
    std::future<bool> remove_vector(std::string id);
    std::future<std::size_t> remove_vectors(std::vector<std::string> ids);
    std::future<void> save(std::string path);

    // max_batch >= 1 (InvalidArgumentError otherwise). Applies to batches formed from now on.
    void set_batching(const BatchingConfig& config);
    BatchingConfig batching() const;
    AsyncStats stats() const;

    // Runs what was submitted, stops the workers; later submissions throw StorageClosedError.
    void shutdown();

   private:
    template <typename T, typename Call>
    Ticket submit_write(Completion<T> done, Call call);

    std::shared_ptr<VectorStorage> storage_;
    std::unique_ptr<detail::Batcher> batcher_;
};

}  // namespace hive_gpu
