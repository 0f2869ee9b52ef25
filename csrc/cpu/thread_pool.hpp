// A small persistent pool: run(n, fn) calls fn(0..n-1) on the workers and the calling
// thread and returns when all are done. Several threads may call run() at once; each caller
// works on its own job, so a job always progresses even while the workers serve another.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hive_gpu::cpu {

class ThreadPool {
   public:
    // `threads` counts the caller: threads - 1 workers are started.
    explicit ThreadPool(unsigned threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    unsigned threads() const { return static_cast<unsigned>(workers_.size()) + 1; }

    // The first exception thrown by a task is rethrown here once all tasks have ended.
    void run(std::size_t n, const std::function<void(std::size_t)>& fn);

   private:
    struct Job {
        const std::function<void(std::size_t)>* fn;
        std::size_t n;
        std::atomic<std::size_t> next{0};
        std::atomic<std::size_t> done{0};
        unsigned users = 0;  // workers inside the job; guarded by mutex_
        std::exception_ptr error;
        std::mutex error_mutex;
    };
    static void work_on(Job& job);
    void worker_loop();

    std::mutex mutex_;
    std::condition_variable wake_;      // workers: a job was queued, or stop
    std::condition_variable finished_;  // callers: a worker left a job
    std::deque<Job*> queue_;
    bool stop_ = false;
    std::vector<std::thread> workers_;
};

}  // namespace hive_gpu::cpu
