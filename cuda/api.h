// The CUDA part seen from the host: plain C++ (no CUDA types), so the bindings compile
// with g++ whether or not the CUDA part was built (LINLY_CUDA_ENABLED says which).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "gpu/layout.h"

namespace linly {
namespace cuda {

// Number of usable devices; 0 with `why` set when there is none or no driver.
int device_count(std::string* why);
std::string device_name(int device);

// A weight matrix resident on the GPU in its layout (layout.h), with y = x·Wᵀ on it.
class Linear {
 public:
  static std::unique_ptr<Linear> from_w4(const gpu::W4Weights& w);
  static std::unique_ptr<Linear> from_w8(const gpu::W8Weights& w);
  virtual ~Linear() = default;
  virtual int64_t n() const = 0;
  virtual int64_t k() const = 0;
  virtual int64_t weight_bytes() const = 0;  // device bytes read per product (codes + scales)
  // x: host fp16 bits [m][k] → y: host fp16 bits [m][n]. m ≤ 8 runs the GEMV kernel,
  // larger m the tensor-core GEMM; force_gemm runs the GEMM for any m (tests).
  virtual void forward_host(const uint16_t* x, uint16_t* y, int m, bool force_gemm) = 0;
  // Microseconds per product with m rows of random device-resident input: the median
  // of 5 batches of `iters` back-to-back products between CUDA events, after warm-up,
  // cycling through `copies` copies of the weights so the L2 cache does not serve them.
  virtual double time_us(int m, int iters, int copies) = 0;
};

// The decoder's elementwise and attention kernels (layers.cu) on host arrays, for tests:
// fp16 values as uint16 bits, copied to the device and back.
void rmsnorm_host(const uint16_t* x, const float* w, uint16_t* y, int64_t rows, int64_t d, float eps);
void swiglu_host(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t count);
// v: [rows][heads][hd] in place; cos/sin: [table_rows][hd/2]; pos[r] < table_rows.
void rope_host(uint16_t* v, const int* pos, const float* cos_t, const float* sin_t, int64_t rows, int heads, int hd,
               int64_t table_rows);
// q: [heads][hd]; caches: [len][kv_heads][hd]; out: [heads][hd].
void attention_decode_host(const uint16_t* q, const uint16_t* kc, const uint16_t* vc, uint16_t* out, int len,
                           int heads, int kv_heads, int hd, float scale);
int attention_decode_max_len();

// Free and total bytes of device memory (cudaMemGetInfo).
void memory_info(int64_t* free_bytes, int64_t* total_bytes);

// Device-to-device copy bandwidth, GB/s counting bytes read plus written (cudaMemcpy of
// `bytes`, median of `iters`).
double copy_bandwidth_gbs(int64_t bytes, int iters);

}  // namespace cuda
}  // namespace linly
