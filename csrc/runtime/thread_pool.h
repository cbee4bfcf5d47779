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
#include <type_traits>
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
    run(n, 0, trampoline<F>, context(f));
  }

  // As parallel_for, but the threads take contiguous pieces of [0, n) as they come free,
  // each piece half of what remains divided among the threads (at least min_piece): big
  // pieces first, small ones at the end, so that nobody waits long for the last one. For
  // long jobs (a prompt's matmul) on cores whose speed drifts apart from moment to
  // moment, as a shared VM's do: a fixed split waits for the slowest core's whole share.
  template <class F>
  void parallel_for_dynamic(int64_t n, int64_t min_piece, F&& f) {
    run(n, min_piece < 1 ? 1 : min_piece, trampoline<F>, context(f));
  }

 private:
  using Fn = void (*)(void*, int64_t, int64_t);
  template <class F>
  static void trampoline(void* ctx, int64_t b, int64_t e) { (*static_cast<std::remove_reference_t<F>*>(ctx))(b, e); }
  template <class F>
  static void* context(F& f) { return const_cast<void*>(static_cast<const void*>(&f)); }
  void run(int64_t n, int64_t min_piece, Fn fn, void* ctx);  // min_piece 0: one fixed chunk per thread
  void take_pieces();  // the dynamic job's loop, on every thread
  void worker(int id);

  const int n_threads_;
  std::vector<std::thread> threads_;
  // Job description, published by the release-increment of generation_.
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  int n_chunks_ = 0;
  int64_t min_piece_ = 0;  // > 0: a dynamic job (parallel_for_dynamic)
  std::atomic<int64_t> next_{0};  // a dynamic job's first item not yet taken
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
