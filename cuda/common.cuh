// Shared device helpers: error checks, the fp16 "magic number" dequantisers, warp sums.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace linly {
namespace cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}
#define LINLY_CUDA_CHECK(call) ::linly::cuda::check((call), #call)
// After every launch: a bad configuration shows up here, a fault at the next sync.
#define LINLY_CUDA_LAUNCHED(name) ::linly::cuda::check(cudaGetLastError(), name)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum / max over the block (blockDim a multiple of 32); every thread gets the result.
// shared32: 32 floats of shared memory, free again on return.
__device__ __forceinline__ float block_sum(float v, float* shared32) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? shared32[lane] : 0.0f;
  v = warp_sum(v);
  __syncthreads();  // shared32 may be reused by the caller
  return v;
}

__device__ __forceinline__ float block_max(float v, float* shared32) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? shared32[lane] : -INFINITY;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  return v;
}

__device__ __forceinline__ half2 u32_as_half2(uint32_t u) { return *reinterpret_cast<half2*>(&u); }

// One w4 word (layout.h) → four half2 (1024 + q) pairs of elements (0,1) (2,3) (4,5) (6,7).
// OR-ing a nibble into the mantissa of 1024.0 (0x6400) gives 1024 + q exactly, so no
// integer-to-float conversion is issued; the caller subtracts 1024 + z, also exact.
__device__ __forceinline__ void w4_word_to_half2x4(uint32_t w, half2 out[4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = u32_as_half2(((w >> (4 * i)) & 0x000F000Fu) | 0x64006400u);
}

// Four int8 (natural order) → two half2 (q0,q1) (q2,q3). Flipping the sign bit makes
// the byte q + 128 ∈ [0,255]; byte_perm places it under 0x64 to give 1024 + q + 128,
// and one subtraction of 1152 makes it exact q.
__device__ __forceinline__ void w8_word_to_half2x2(uint32_t w, half2 out[2]) {
  const uint32_t u = w ^ 0x80808080u;
  const half2 bias = u32_as_half2(0x64806480u);  // (1152, 1152)
  out[0] = __hsub2(u32_as_half2(__byte_perm(u, 0x64646464u, 0x4140)), bias);
  out[1] = __hsub2(u32_as_half2(__byte_perm(u, 0x64646464u, 0x4342)), bias);
}

}  // namespace cuda
}  // namespace linly
