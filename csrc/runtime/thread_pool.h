// A persistent pool for the per-token hot path: hundreds of parallel_for calls per
// token, so a call must cost microseconds. Workers spin briefly after each job (the
// next matmul usually follows within microseconds), then sleep on a condition variable
// so an idle engine burns no CPU. The calling thread always does chunk 0 itself.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace linly {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls f(begin, end) on contiguous, disjoint chunks covering [0, n), at most one per
  // thread; returns when all are done. Callers from several threads are served one after
  // the other (f must not itself call parallel_for).
  template <class F>
  void parallel_for(int64_t n, F&& f) {
    run(n, [](void* ctx, int64_t b, int64_t e) { (*static_cast<F*>(ctx))(b, e); }, &f);
  }

 private:
  using Fn = void (*)(void*, int64_t, int64_t);
  void run(int64_t n, Fn fn, void* ctx);
  void worker(int id);

  const int n_threads_;
  std::vector<std::thread> threads_;
  // Job description, published by the release-increment of generation_.
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int n_chunks_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::mutex run_mu_;  // one job at a time
};

// The process-wide pool. Callers hold the shared_ptr while they use it, so that
// set_global_threads() from another thread can swap in a new pool without pulling the
// old one out from under a running matmul.
std::shared_ptr<ThreadPool> global_pool();
void set_global_threads(int n);  // n >= 1
int global_threads();

}  // namespace linly
