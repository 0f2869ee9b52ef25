#include "core/batcher.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "hive_gpu/error.hpp"

namespace hive_gpu::detail {

namespace {

using Clock = std::chrono::steady_clock;
using Delivery = std::function<void()>;

// A completion that throws must not take the worker (and with it the queue) down.
void deliver(Delivery& d) {
    try {
        d();
    } catch (...) {
    }
    d = nullptr;
}

void fail(Request& r, std::exception_ptr error) {
    try {
        if (r.kind == RequestKind::Search)
            r.on_hits(error, {});
        else
            r.fail(error);
    } catch (...) {
    }
}

std::exception_ptr cancelled_error() {
    return std::make_exception_ptr(CancelledError("the request was cancelled before it ran"));
}

}  // namespace

Batcher::Batcher(std::shared_ptr<VectorStorage> storage, BatchingConfig config, std::size_t workers)
    : storage_(std::move(storage)) {
    set_config(config);
    if (workers == 0) throw InvalidArgumentError("an async storage needs at least one worker");
    workers_.reserve(workers);
    for (std::size_t i = 0; i < workers; ++i) workers_.emplace_back([this] { work(); });
}

Batcher::~Batcher() { shutdown(); }

void Batcher::set_config(const BatchingConfig& config) {
    if (config.max_batch == 0) throw InvalidArgumentError("max_batch must be >= 1");
    if (config.max_wait.count() < 0) throw InvalidArgumentError("max_wait must be >= 0");
    {
        std::lock_guard<std::mutex> lock(mutex_);
        config_ = config;
    }
    wake_.notify_all();  // waiting workers recompute their deadline
}

BatchingConfig Batcher::config() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return config_;
}

AsyncStats Batcher::stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
}

std::size_t Batcher::head_run() const {
    std::size_t n = 0;
    for (const auto& r : queue_) {
        if (r->kind != RequestKind::Search || n == config_.max_batch) break;
        ++n;
    }
    return n;
}

void Batcher::submit(std::shared_ptr<Request> request) {
    request->submitted = Clock::now();
    const RequestKind kind = request->kind;
    bool wake;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) throw StorageClosedError("the async queue of this storage is shut down");
        queue_.push_back(std::move(request));
        // A worker waiting for a batch to fill wakes only when the batch is complete: a
        // wake-up per search would cost a context switch per query.
        wake = idle_workers_ > 0 || kind != RequestKind::Search || head_run() >= config_.max_batch;
    }
    if (wake) wake_.notify_all();
}

void Batcher::shutdown() {
    std::lock_guard<std::mutex> join(join_mutex_);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_)
        if (t.joinable()) t.join();
    workers_.clear();
}

void Batcher::work() {
    std::unique_lock<std::mutex> lock(mutex_);
    // Runs r with the lock released, then `done` (with the lock held: the bookkeeping), then
    // delivers the outcome with the lock released again; returns with the lock held.
    auto run_unlocked = [&](std::shared_ptr<Request>& r, auto&& done) {
        lock.unlock();
        Delivery d = r->run(*storage_);
        lock.lock();
        done();
        wake_.notify_all();
        lock.unlock();
        deliver(d);
        r.reset();
        lock.lock();
    };
    for (;;) {
        if (queue_.empty()) {
            if (stopping_) return;
            ++idle_workers_;
            wake_.wait(lock);
            --idle_workers_;
            continue;
        }
        Request& head = *queue_.front();

        if (head.kind == RequestKind::Write) {
            // Every earlier request has finished, no later one starts before this one.
            if (reads_running_ > 0 || write_running_) {
                wake_.wait(lock);
                continue;
            }
            std::shared_ptr<Request> r = std::move(queue_.front());
            queue_.pop_front();
            write_running_ = true;
            run_unlocked(r, [&] {
                write_running_ = false;
                ++stats_.writes;
            });
            continue;
        }

        if (write_running_) {
            wake_.wait(lock);
            continue;
        }

        if (head.kind == RequestKind::Read) {
            std::shared_ptr<Request> r = std::move(queue_.front());
            queue_.pop_front();
            int expected = Request::Pending;
            if (!r->state.compare_exchange_strong(expected, Request::Running)) {
                ++stats_.cancelled;
                lock.unlock();
                fail(*r, cancelled_error());
                r.reset();
                lock.lock();
                continue;
            }
            ++reads_running_;
            run_unlocked(r, [&] {
                --reads_running_;
                ++stats_.batch_searches;
            });
            continue;
        }

        // A run of single searches closes when full, or when something else queues behind it
        // (that request may not start before it). Otherwise it waits for company up to
        // max_wait, and beyond that only while another search batch still holds the engine:
        // the run keeps growing then, and the engine never idles with work queued.
        const std::size_t run = head_run();
        const bool closed = stopping_ || run >= config_.max_batch || run < queue_.size();
        if (!closed) {
            const Clock::time_point deadline = head.submitted + config_.max_wait;
            if (Clock::now() < deadline) {
                wake_.wait_until(lock, deadline);
                continue;
            }
            if (search_batches_running_ > 0) {
                wake_.wait(lock);  // the running batch notifies when it ends
                continue;
            }
        }
        std::vector<std::shared_ptr<Request>> batch(std::make_move_iterator(queue_.begin()),
                                                    std::make_move_iterator(queue_.begin() + run));
        queue_.erase(queue_.begin(), queue_.begin() + run);
        ++reads_running_;
        ++search_batches_running_;
        lock.unlock();
        execute_searches(batch);
        lock.lock();
    }
}

void Batcher::execute_searches(std::vector<std::shared_ptr<Request>>& batch) {
    std::vector<Request*> live;
    std::vector<Request*> dropped;
    for (auto& r : batch) {
        int expected = Request::Pending;
        if (r->state.compare_exchange_strong(expected, Request::Running))
            live.push_back(r.get());
        else
            dropped.push_back(r.get());
    }

    const std::size_t dim = storage_->dimension();
    std::vector<std::exception_ptr> errors(live.size());
    std::vector<std::vector<SearchHit>> hits(live.size());
    // A query of the wrong dimension or k <= 0 cannot share a batch; the storage's own
    // search() then reports exactly what the synchronous call would.
    std::vector<std::size_t> together, alone;
    for (std::size_t i = 0; i < live.size(); ++i)
        (live[i]->query.size() == dim && live[i]->k > 0 ? together : alone).push_back(i);
    if (together.size() == 1) {
        alone.push_back(together[0]);
        together.clear();
    }

    std::uint64_t engine_calls = 0;
    std::size_t largest = 0;
    if (!together.empty()) {
        std::vector<float> queries(together.size() * dim);
        std::int64_t k_max = 0;
        for (std::size_t j = 0; j < together.size(); ++j) {
            const Request& r = *live[together[j]];
            std::copy(r.query.begin(), r.query.end(), queries.begin() + j * dim);
            k_max = std::max(k_max, r.k);
        }
        BatchResult result;
        bool ran = false;
        try {
            result = storage_->search_batch(queries.data(), together.size(), dim, k_max);
            ran = true;
        } catch (const InvalidArgumentError&) {
            // One bad query (NaN, a huge norm) fails the whole batch: run them one by one so
            // that every caller gets its own answer.
            alone.insert(alone.end(), together.begin(), together.end());
        } catch (...) {
            for (std::size_t i : together) errors[i] = std::current_exception();
        }
        ++engine_calls;
        if (ran) {
            largest = together.size();
            // Best-first order with ordinal tie-breaks makes the first k of the k_max best
            // exactly the k best.
            for (std::size_t j = 0; j < together.size(); ++j) {
                const std::size_t i = together[j];
                const std::size_t k = std::min(static_cast<std::size_t>(live[i]->k), result.k);
                try {
                    hits[i].reserve(k);
                    for (std::size_t c = 0; c < k; ++c) {
                        const std::size_t at = j * result.k + c;
                        auto md = storage_->get_metadata(result.ids[at]);
                        hits[i].push_back(SearchHit{result.ids[at], result.scores[at],
                                                    md ? std::move(*md) : Metadata{}});
                    }
                } catch (...) {
                    errors[i] = std::current_exception();
                }
            }
        }
    }
    for (std::size_t i : alone) {
        try {
            hits[i] = storage_->search(live[i]->query.data(), live[i]->query.size(), live[i]->k);
        } catch (...) {
            errors[i] = std::current_exception();
        }
        ++engine_calls;
        largest = std::max<std::size_t>(largest, 1);
    }

    // Counters first: a caller woken by its completion must find them up to date.
    {
        std::lock_guard<std::mutex> lock(mutex_);
        --reads_running_;
        --search_batches_running_;
        stats_.searches += live.size();
        stats_.search_batches += engine_calls;
        stats_.largest_batch = std::max<std::uint64_t>(stats_.largest_batch, largest);
        stats_.cancelled += dropped.size();
    }
    wake_.notify_all();

    for (Request* r : dropped) fail(*r, cancelled_error());
    for (std::size_t i = 0; i < live.size(); ++i) {
        try {
            live[i]->on_hits(errors[i], std::move(hits[i]));
        } catch (...) {
        }
    }
    batch.clear();
}

}  // namespace hive_gpu::detail
