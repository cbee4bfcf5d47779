// Device-side ownership of the weights (included by the kernel files and api.cu only).
#pragma once
#include "api.h"
#include "common.cuh"
#include "weights.cuh"

namespace linly {
namespace cuda {

// cudaMalloc'd memory, freed on destruction.
template <class T>
struct DeviceArray {
  T* ptr = nullptr;
  int64_t count = 0;
  DeviceArray() = default;
  explicit DeviceArray(int64_t n) : count(n) {
    if (n > 0) LINLY_CUDA_CHECK(cudaMalloc(&ptr, sizeof(T) * (size_t)n));
  }
  DeviceArray(const T* host, int64_t n) : DeviceArray(n) {
    if (n > 0) LINLY_CUDA_CHECK(cudaMemcpy(ptr, host, sizeof(T) * (size_t)n, cudaMemcpyHostToDevice));
  }
  DeviceArray(DeviceArray&& o) noexcept : ptr(o.ptr), count(o.count) { o.ptr = nullptr; o.count = 0; }
  DeviceArray& operator=(DeviceArray&& o) noexcept { std::swap(ptr, o.ptr); std::swap(count, o.count); return *this; }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { if (ptr) cudaFree(ptr); }
  int64_t bytes() const { return count * (int64_t)sizeof(T); }
};

struct DeviceW4 {
  DeviceArray<uint32_t> q;
  DeviceArray<uint16_t> d, m;
  DeviceArray<uint8_t> z;
  int64_t n = 0, k = 0;
  int group = 32, kind = 0;
  template <int KIND>
  W4View<KIND> view() const {
    return W4View<KIND>{q.ptr, reinterpret_cast<const half*>(d.ptr), reinterpret_cast<const half*>(m.ptr), z.ptr,
                        n, k, k / group, group_shift_of(group, k)};
  }
};

struct DeviceW8 {
  DeviceArray<int8_t> q;
  DeviceArray<uint16_t> d;
  int64_t n = 0, k = 0;
  int group = 32;
  W8View view() const {
    return W8View{q.ptr, reinterpret_cast<const half*>(d.ptr), n, k, k / group, group_shift_of(group, k)};
  }
};

struct DeviceW16 {
  DeviceArray<uint16_t> q;  // fp16 bits [n][k]
  int64_t n = 0, k = 0;
  W16View view() const { return W16View{reinterpret_cast<const half*>(q.ptr), n, k}; }
};

// The host layouts (gpu/layout.h) copied into device memory, and the bytes a product reads.
inline DeviceW4 upload_w4(const gpu::W4Weights& w) {
  DeviceW4 d;
  d.q = DeviceArray<uint32_t>(w.qweight.data(), (int64_t)w.qweight.size());
  d.d = DeviceArray<uint16_t>(w.scales.data(), (int64_t)w.scales.size());
  d.m = DeviceArray<uint16_t>(w.mins.data(), (int64_t)w.mins.size());
  d.z = DeviceArray<uint8_t>(w.zeros.data(), (int64_t)w.zeros.size());
  d.n = w.n; d.k = w.k; d.group = w.group; d.kind = (int)w.kind;
  return d;
}
inline DeviceW8 upload_w8(const gpu::W8Weights& w) {
  DeviceW8 d;
  d.q = DeviceArray<int8_t>(w.qweight.data(), (int64_t)w.qweight.size());
  d.d = DeviceArray<uint16_t>(w.scales.data(), (int64_t)w.scales.size());
  d.n = w.n; d.k = w.k; d.group = w.group;
  return d;
}
inline int64_t bytes_of(const DeviceW4& w) { return w.q.bytes() + w.d.bytes() + w.m.bytes() + w.z.bytes(); }
inline int64_t bytes_of(const DeviceW8& w) { return w.q.bytes() + w.d.bytes(); }
inline int64_t bytes_of(const DeviceW16& w) { return w.q.bytes(); }

// Calls f(view) with the W4View of w's kind (the kind is a template parameter of the
// kernels, so each gets its dequantiser without a branch in the inner loop).
template <class F>
void with_w4_view(const DeviceW4& w, F&& f) {
  switch (w.kind) {
    case 0: f(w.view<0>()); break;
    case 1: f(w.view<1>()); break;
    default: f(w.view<2>()); break;
  }
}

// y[r][0..n) (row pitch ldy) = x[r] (k contiguous halves) · Wᵀ for r < m. The GEMV
// takes m ≤ 8, the GEMM any m. y is fp16, or fp32 through the *_f32 overloads (logits).
void gemv_w4(const DeviceW4& w, const half* x, half* y, int m, int64_t ldy, cudaStream_t stream);
void gemv_w8(const DeviceW8& w, const half* x, half* y, int m, int64_t ldy, cudaStream_t stream);
void gemv_w16(const DeviceW16& w, const half* x, half* y, int m, int64_t ldy, cudaStream_t stream);
void gemm_w4(const DeviceW4& w, const half* x, half* y, int m, int64_t ldy, cudaStream_t stream);
void gemm_w8(const DeviceW8& w, const half* x, half* y, int m, int64_t ldy, cudaStream_t stream);
void gemm_w16(const DeviceW16& w, const half* x, half* y, int m, int64_t ldy, cudaStream_t stream);
void gemv_w4(const DeviceW4& w, const half* x, float* y, int m, int64_t ldy, cudaStream_t stream);
void gemv_w8(const DeviceW8& w, const half* x, float* y, int m, int64_t ldy, cudaStream_t stream);
void gemv_w16(const DeviceW16& w, const half* x, float* y, int m, int64_t ldy, cudaStream_t stream);
void gemm_w4(const DeviceW4& w, const half* x, float* y, int m, int64_t ldy, cudaStream_t stream);
void gemm_w8(const DeviceW8& w, const half* x, float* y, int m, int64_t ldy, cudaStream_t stream);
void gemm_w16(const DeviceW16& w, const half* x, float* y, int m, int64_t ldy, cudaStream_t stream);

}  // namespace cuda
}  // namespace linly
