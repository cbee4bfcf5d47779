// Host side of the CUDA part: devices, uploading weights, running and timing products.
#include <algorithm>
#include <random>
#include <vector>

#include "api_impl.cuh"
#include "quant/fp16.h"

namespace linly {
namespace cuda {

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = cudaGetErrorString(e);
    cudaGetLastError();  // clear it: no device is an answer, not a sticky error
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device is visible";
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp p;
  LINLY_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         std::to_string(p.multiProcessorCount) + " SMs, " + std::to_string(p.totalGlobalMem >> 20) + " MiB)";
}

namespace {

std::vector<uint16_t> random_half(int64_t count, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint16_t> v((size_t)count);
  for (auto& h : v) h = fp32_to_fp16(u(gen));
  return v;
}

// Median over 5 batches of the time per run of `step(i)`, each batch `iters` runs back to
// back between one pair of events: launch latency overlaps the previous run, as in the
// decoder's graph, instead of being counted once per run.
template <class Step>
double median_us(int iters, Step step) {
  cudaEvent_t a, b;
  LINLY_CUDA_CHECK(cudaEventCreate(&a));
  LINLY_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) step(i);  // warm-up: module load, first-touch
  LINLY_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> t;
  for (int batch = 0; batch < 5; ++batch) {
    LINLY_CUDA_CHECK(cudaEventRecord(a));
    for (int i = 0; i < iters; ++i) step(i);
    LINLY_CUDA_CHECK(cudaEventRecord(b));
    LINLY_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    LINLY_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0 / iters);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}

template <class DW>
class LinearImpl final : public Linear {
 public:
  explicit LinearImpl(DW w) : w_(std::move(w)) {}
  int64_t n() const override { return w_.n; }
  int64_t k() const override { return w_.k; }
  int64_t weight_bytes() const override { return bytes_of(w_); }

  void forward_host(const uint16_t* x, uint16_t* y, int m, bool force_gemm) override {
    if (m <= 0) throw std::invalid_argument("x must have at least one row");
    DeviceArray<uint16_t> dx(x, (int64_t)m * w_.k), dy((int64_t)m * w_.n);
    run(w_, reinterpret_cast<const half*>(dx.ptr), reinterpret_cast<half*>(dy.ptr), m, force_gemm, nullptr);
    LINLY_CUDA_CHECK(cudaDeviceSynchronize());
    LINLY_CUDA_CHECK(cudaMemcpy(y, dy.ptr, sizeof(uint16_t) * (size_t)(m * w_.n), cudaMemcpyDeviceToHost));
  }

  double time_us(int m, int iters, int copies) override {
    if (m <= 0 || iters <= 0 || copies <= 0) throw std::invalid_argument("m, iters and copies must be positive");
    std::vector<DW> extra;
    for (int c = 1; c < copies; ++c) extra.push_back(copy_of(w_));
    const std::vector<uint16_t> hx = random_half((int64_t)m * w_.k, 7);
    DeviceArray<uint16_t> dx(hx.data(), (int64_t)m * w_.k), dy((int64_t)m * w_.n);
    return median_us(iters, [&](int i) {
      const DW& w = i % copies == 0 ? w_ : extra[i % copies - 1];
      run(w, reinterpret_cast<const half*>(dx.ptr), reinterpret_cast<half*>(dy.ptr), m, false, nullptr);
    });
  }

 private:
  static void run(const DeviceW4& w, const half* x, half* y, int m, bool gemm, cudaStream_t s) {
    if (m <= 8 && !gemm) gemv_w4(w, x, y, m, w.n, s); else gemm_w4(w, x, y, m, w.n, s);
  }
  static void run(const DeviceW8& w, const half* x, half* y, int m, bool gemm, cudaStream_t s) {
    if (m <= 8 && !gemm) gemv_w8(w, x, y, m, w.n, s); else gemm_w8(w, x, y, m, w.n, s);
  }
  template <class T>
  static DeviceArray<T> dup(const DeviceArray<T>& a) {
    DeviceArray<T> b(a.count);
    if (a.count) LINLY_CUDA_CHECK(cudaMemcpy(b.ptr, a.ptr, (size_t)a.bytes(), cudaMemcpyDeviceToDevice));
    return b;
  }
  static DeviceW4 copy_of(const DeviceW4& w) {
    DeviceW4 c; c.q = dup(w.q); c.d = dup(w.d); c.m = dup(w.m); c.z = dup(w.z);
    c.n = w.n; c.k = w.k; c.group = w.group; c.kind = w.kind;
    return c;
  }
  static DeviceW8 copy_of(const DeviceW8& w) {
    DeviceW8 c; c.q = dup(w.q); c.d = dup(w.d); c.n = w.n; c.k = w.k; c.group = w.group;
    return c;
  }

  DW w_;
};

}  // namespace

std::unique_ptr<Linear> Linear::from_w4(const gpu::W4Weights& w) {
  return std::make_unique<LinearImpl<DeviceW4>>(upload_w4(w));
}

std::unique_ptr<Linear> Linear::from_w8(const gpu::W8Weights& w) {
  return std::make_unique<LinearImpl<DeviceW8>>(upload_w8(w));
}

void memory_info(int64_t* free_bytes, int64_t* total_bytes) {
  size_t f = 0, t = 0;
  LINLY_CUDA_CHECK(cudaMemGetInfo(&f, &t));
  *free_bytes = (int64_t)f;
  *total_bytes = (int64_t)t;
}

double copy_bandwidth_gbs(int64_t bytes, int iters) {
  DeviceArray<uint8_t> src(bytes), dst(bytes);
  LINLY_CUDA_CHECK(cudaMemset(src.ptr, 1, (size_t)bytes));
  const double us = median_us(iters, [&](int) {
    LINLY_CUDA_CHECK(cudaMemcpyAsync(dst.ptr, src.ptr, (size_t)bytes, cudaMemcpyDeviceToDevice));
  });
  return 2.0 * (double)bytes / (us * 1e3);
}

}  // namespace cuda
}  // namespace linly
