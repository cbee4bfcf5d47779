#include "runtime/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LINLY_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define LINLY_PAUSE() __asm__ __volatile__("yield")
#else
#define LINLY_PAUSE() ((void)0)
#endif

namespace linly {

namespace {
// How long an idle worker keeps spinning before it sleeps. Long enough to bridge the gap
// between two matmuls of one decode step, short enough not to steal a core for long.
constexpr auto kSpin = std::chrono::microseconds(300);
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back(&ThreadPool::worker, this, i);
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run(int64_t n, int64_t min_piece, Fn fn, void* ctx) {
  if (n <= 0) return;
  const int chunks = (int)(n < n_threads_ ? n : n_threads_);
  if (chunks == 1) { fn(ctx, 0, n); return; }
  std::lock_guard<std::mutex> job(run_mu_);
  fn_ = fn; ctx_ = ctx; n_ = n; n_chunks_ = chunks;
  min_piece_ = min_piece;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(n_threads_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lk(mu_);
    cv_.notify_all();
  }
  if (min_piece_ > 0) take_pieces();
  else fn(ctx, 0, n / chunks);
  while (pending_.load(std::memory_order_acquire) != 0) LINLY_PAUSE();
}

void ThreadPool::take_pieces() {
  for (;;) {
    int64_t b = next_.load(std::memory_order_relaxed), take;
    do {
      if (b >= n_) return;
      take = std::min(n_ - b, std::max(min_piece_, (n_ - b) / (2 * n_threads_)));
    } while (!next_.compare_exchange_weak(b, b + take, std::memory_order_relaxed));
    fn_(ctx_, b, b + take);
  }
}

void ThreadPool::worker(int id) {
  uint64_t seen = 0;
  for (;;) {
    // Spin, then sleep, until a new generation is published.
    auto t0 = std::chrono::steady_clock::now();
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      LINLY_PAUSE();
      if (++spins % 256 == 0 && std::chrono::steady_clock::now() - t0 > kSpin) {
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        cv_.wait(lk, [&] { return generation_.load(std::memory_order_seq_cst) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
      }
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    if (min_piece_ > 0) {
      take_pieces();
    } else if (id < n_chunks_) {
      const int64_t b = n_ * id / n_chunks_, e = n_ * (id + 1) / n_chunks_;
      fn_(ctx_, b, e);
    }
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

namespace {
int default_threads() {
  if (const char* env = std::getenv("LINLY_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? (int)hw : 1;
}
std::mutex g_pool_mu;
std::shared_ptr<ThreadPool>& pool_slot() {
  static std::shared_ptr<ThreadPool> p = std::make_shared<ThreadPool>(default_threads());
  return p;
}
}  // namespace

std::shared_ptr<ThreadPool> global_pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  return pool_slot();
}
void set_global_threads(int n) {
  std::shared_ptr<ThreadPool> old;  // destroyed (workers joined) outside the lock
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (pool_slot()->size() == n) return;
  old = std::move(pool_slot());
  pool_slot() = std::make_shared<ThreadPool>(n);
}
int global_threads() { return global_pool()->size(); }

}  // namespace linly
