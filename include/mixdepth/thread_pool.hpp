#pragma once
// ThreadPool: opt-in threads for a Block's per-sequence work.
//
//   mixdepth::ThreadPool pool(4);       // the calling thread plus 3 workers
//   workspace.set_thread_pool(&pool);   // this workspace's forwards use it
//
// With a pool, a forward scores, selects, gathers and writes the output of different
// sequences on different threads. Every sequence is computed by exactly the code that runs
// without a pool, so results are bit-identical at any thread count. The block function
// itself is called once, on the calling thread, with the whole batch.
//
// One pool serves one run() at a time: a run() from another thread while one is in progress
// (or from inside a task) executes serially on its caller, as thread 0, instead of waiting.
// Thread numbers are therefore distinct only among the tasks of one run() call: per-thread
// scratch belongs to the call (Block keeps it in the Workspace), not to the pool.
// A run() allocates nothing unless a task throws.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "error.hpp"

namespace mixdepth {

class ThreadPool {
 public:
  // `threads` >= 1 threads in all, the caller of run() included. Throws mixdepth::Error
  // for threads < 1.
  explicit ThreadPool(int threads) : threads_(threads) {
    if (threads < 1) detail::fail("ThreadPool", "threads", ">= 1", threads);
    workers_.reserve(std::size_t(threads - 1));
    try {
      for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { work(w); });
    } catch (...) {
      stop();  // the threads started so far, before the exception leaves
      throw;
    }
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() { stop(); }

  // Threads in all, the caller included.
  int size() const noexcept { return threads_; }

  // Calls task(i, thread) for every i in [0, n), `thread` in [0, size()) naming the thread
  // that runs it (a task may use it to pick per-thread scratch), and returns when all have
  // returned. If tasks throw, no further items are started, run() returns once the started
  // ones have, and it rethrows the first exception; the pool stays usable.
  template <class Task>
  void run(std::int64_t n, Task&& task) {
    if (n <= 0) return;
    std::unique_lock lock(mutex_);
    if (n == 1 || threads_ == 1 || busy_ || inside_task()) {
      lock.unlock();
      for (std::int64_t i = 0; i < n; ++i) task(i, 0);
      return;
    }
    busy_ = true;
    job_ = Job{&invoke<std::remove_reference_t<Task>>, &task, n};
    next_.store(0, std::memory_order_relaxed);
    pending_ = threads_ - 1;
    ++generation_;
    lock.unlock();
    wake_.notify_all();
    take_items(0);
    lock.lock();
    done_.wait(lock, [this] { return pending_ == 0; });
    busy_ = false;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  }

 private:
  struct Job {
    void (*call)(void*, std::int64_t, int) = nullptr;
    void* task = nullptr;
    std::int64_t n = 0;
  };

  template <class Task>
  static void invoke(void* task, std::int64_t i, int thread) {
    (*static_cast<Task*>(task))(i, thread);
  }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  static bool& inside_task() {
    thread_local bool inside = false;
    return inside;
  }

  // Runs items until none is left. Does not throw: the first exception is kept for run(),
  // and the items not yet started are skipped.
  void take_items(int thread) noexcept {
    inside_task() = true;
    for (std::int64_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < job_.n;) {
      try {
        job_.call(job_.task, i, thread);
      } catch (...) {
        std::lock_guard lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(job_.n, std::memory_order_relaxed);
      }
    }
    inside_task() = false;
  }

  void work(int thread) {
    std::uint64_t seen = 0;
    std::unique_lock lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      lock.unlock();
      take_items(thread);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  Job job_;
  std::atomic<std::int64_t> next_{0};
  std::uint64_t generation_ = 0;
  int pending_ = 0;
  std::exception_ptr error_;  // the first exception a task of the current run() threw
  bool busy_ = false;
  bool stopping_ = false;
};

namespace detail {

// Runs task(i, thread) for i in [0, n) on `pool`, or in order on this thread without one.
template <class Task>
void for_each_item(ThreadPool* pool, std::int64_t n, Task&& task) {
  if (pool != nullptr) {
    pool->run(n, task);
  } else {
    for (std::int64_t i = 0; i < n; ++i) task(i, 0);
  }
}

}  // namespace detail
}  // namespace mixdepth
