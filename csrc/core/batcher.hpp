// The per-storage request queue behind AsyncStorage: issue order for writes, coalescing of
// adjacent single searches, a few worker threads that run the engine calls.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "hive_gpu/async.hpp"
#include "hive_gpu/storage.hpp"

namespace hive_gpu::detail {

enum class RequestKind { Search, Read, Write };

struct Request {
    enum State : int { Pending = 0, Running = 1, Cancelled = 2 };

    RequestKind kind;
    std::chrono::steady_clock::time_point submitted;
    std::atomic<int> state{Pending};

    // Search: coalesced by the batcher.
    std::vector<float> query;
    std::int64_t k = 0;
    Completion<std::vector<SearchHit>> on_hits;

    // Read and Write: one storage call; returns the delivery of its outcome, which the worker
    // calls after updating the counters and unblocking the queue.
    std::function<std::function<void()>(VectorStorage&)> run;
    // Completes the request with an error without running it (cancel, shutdown).
    std::function<void(std::exception_ptr)> fail;
};

class Batcher {
   public:
    Batcher(std::shared_ptr<VectorStorage> storage, BatchingConfig config, std::size_t workers);
    ~Batcher();  // shutdown()

    // Throws StorageClosedError after shutdown().
    void submit(std::shared_ptr<Request> request);
    void set_config(const BatchingConfig& config);
    BatchingConfig config() const;
    AsyncStats stats() const;
    void shutdown();

   private:
    void work();
    // Length of the run of single searches at the head of the queue (at most max_batch).
    std::size_t head_run() const;
    // Runs a closed run of single searches, then completes each of them.
    void execute_searches(std::vector<std::shared_ptr<Request>>& batch);

    std::shared_ptr<VectorStorage> storage_;

    mutable std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<std::shared_ptr<Request>> queue_;
    BatchingConfig config_;
    AsyncStats stats_;
    std::size_t reads_running_ = 0;
    std::size_t search_batches_running_ = 0;  // coalesced single-search batches in the engine
    bool write_running_ = false;
    std::size_t idle_workers_ = 0;  // waiting on an empty queue: the only ones a submit must wake
    bool stopping_ = false;
    std::vector<std::thread> workers_;
    std::mutex join_mutex_;  // one shutdown() joins, the others wait for it
};

}  // namespace hive_gpu::detail
