// Device entry points of layers.cu (pointers in device memory, launched on `s`).
#pragma once
#include "api_impl.cuh"

namespace linly {
namespace cuda {

// The scores of one head live in shared memory: 44 KiB of floats under the default
// 48 KiB limit. Longer contexts need the split-K kernel (not built yet).
constexpr int kAttentionDecodeMaxLen = 11264;

void rmsnorm(const half* x, const float* w, half* y, int64_t rows, int64_t d, float eps, cudaStream_t s);
void swiglu(const half* gate, const half* up, half* out, int64_t count, cudaStream_t s);
void rope(half* v, const int* pos, const float* cos_t, const float* sin_t, int64_t rows, int heads, int hd,
          cudaStream_t s);
void attention_decode(const half* q, const half* kc, const half* vc, half* out, int len, int heads, int kv_heads,
                      int hd, float scale, cudaStream_t s);

}  // namespace cuda
}  // namespace linly
