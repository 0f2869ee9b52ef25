#include "cpu/thread_pool.hpp"

#include <algorithm>

namespace hive_gpu::cpu {

ThreadPool::ThreadPool(unsigned threads) {
    const unsigned workers = threads > 1 ? threads - 1 : 0;
    workers_.reserve(workers);
    try {
        for (unsigned i = 0; i < workers; ++i) workers_.emplace_back([this] { worker_loop(); });
    } catch (...) {
        // A pool with fewer workers still works: the callers run the tasks themselves.
    }
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::work_on(Job& job) {
    for (std::size_t i; (i = job.next.fetch_add(1, std::memory_order_relaxed)) < job.n;) {
        try {
            (*job.fn)(i);
        } catch (...) {
            std::lock_guard<std::mutex> lock(job.error_mutex);
            if (!job.error) job.error = std::current_exception();
        }
        job.done.fetch_add(1, std::memory_order_acq_rel);
    }
}

void ThreadPool::worker_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
        wake_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        Job* job = queue_.front();
        ++job->users;
        lock.unlock();
        work_on(*job);
        lock.lock();
        --job->users;
        // Every task of the job is claimed: nobody else needs to find it.
        auto it = std::find(queue_.begin(), queue_.end(), job);
        if (it != queue_.end()) queue_.erase(it);
        finished_.notify_all();
    }
}

void ThreadPool::run(std::size_t n, const std::function<void(std::size_t)>& fn) {
    if (n == 0) return;
    if (workers_.empty() || n == 1) {
        for (std::size_t i = 0; i < n; ++i) fn(i);
        return;
    }
    Job job;
    job.fn = &fn;
    job.n = n;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(&job);
    }
    if (n - 1 >= workers_.size())
        wake_.notify_all();
    else
        for (std::size_t i = 0; i + 1 < n; ++i) wake_.notify_one();
    work_on(job);
    {
        std::unique_lock<std::mutex> lock(mutex_);
        auto it = std::find(queue_.begin(), queue_.end(), &job);
        if (it != queue_.end()) queue_.erase(it);
        // The job lives on this stack: wait until no worker can touch it any more.
        finished_.wait(lock, [&] { return job.users == 0 && job.done.load() == job.n; });
    }
    if (job.error) std::rethrow_exception(job.error);
}

}  // namespace hive_gpu::cpu
