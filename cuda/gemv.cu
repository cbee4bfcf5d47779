// Weight-only GEMV for decode: y[M][N] = x[M][K] · Wᵀ with M = 1..8 activation rows
// (fp16), 4-bit, 8-bit or fp16 weights, fp32 accumulation.
//
// Why it is shaped like this: at batch 1 the kernel's time is the time to stream the
// weights once, so everything serves the weight stream. One warp owns one output row;
// each lane reads 16 bytes of codes per vector (the warp: 512 contiguous bytes, fully
// coalesced). The loop is unrolled by hand, four vectors' codes and scales loaded before
// the first is used, so that every lane keeps 64 bytes in flight: the first version let
// the compiler keep one load per lane in flight and ran at a third of the H200's
// bandwidth, the same time per element for 4-bit and 8-bit weights. The activations
// are re-read by every warp from L1/L2, never from DRAM twice.
#include "api_impl.cuh"

namespace linly {
namespace cuda {

namespace {

constexpr int kWarps = 4;   // output rows per block
constexpr int kUnroll = 4;  // vectors in flight per lane

__device__ __forceinline__ void store(half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }

// acc[r] += the products of one code vector (E elements at x + e0 of each activation row)
template <int M, class W>
__device__ __forceinline__ void dot_vector(const typename W::Row& wr, const uint4& c, const typename W::Scale& sc,
                                           const half* __restrict__ x, int64_t e0, int64_t k, float acc[M]) {
  constexpr int E = W::kElemsPerVec;
#pragma unroll
  for (int part = 0; part < E / 8; ++part) {
    half2 wv[4];
    wr.dequant(c, part, sc, wv);
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + r * k + e0 + part * 8));
      const half2* xp = reinterpret_cast<const half2*>(&xv);
      // eight products summed in fp16 pairs, then carried in fp32
      half2 p = __hmul2(wv[0], xp[0]);
      p = __hfma2(wv[1], xp[1], p);
      p = __hfma2(wv[2], xp[2], p);
      p = __hfma2(wv[3], xp[3], p);
      const float2 f = __half22float2(p);
      acc[r] += f.x + f.y;
    }
  }
}

template <int M, class W, class OutT>
__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(W w, const half* __restrict__ x, OutT* __restrict__ y,
                                                           int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t row = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= w.n) return;
  constexpr int E = W::kElemsPerVec;  // elements per lane per vector
  const int steps = (int)(w.k / E);
  const typename W::Row wr = w.row_view(row);
  float acc[M];
#pragma unroll
  for (int r = 0; r < M; ++r) acc[r] = 0.0f;

  int s = lane;
  for (; s + 32 * (kUnroll - 1) < steps; s += 32 * kUnroll) {
    uint4 c[kUnroll];
    typename W::Scale sc[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      c[u] = wr.codes(s + 32 * u);
      sc[u] = wr.scale(s + 32 * u);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) dot_vector<M, W>(wr, c[u], sc[u], x, (int64_t)(s + 32 * u) * E, w.k, acc);
  }
  for (; s < steps; s += 32) {
    const uint4 c = wr.codes(s);
    dot_vector<M, W>(wr, c, wr.scale(s), x, (int64_t)s * E, w.k, acc);
  }
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float v = warp_sum(acc[r]);
    if (lane == 0) store(y + r * ldy + row, v);
  }
}

template <class W, class OutT>
void launch_gemv(const W& w, const half* x, OutT* y, int m, int64_t ldy, cudaStream_t stream) {
  const dim3 grid((unsigned)((w.n + kWarps - 1) / kWarps)), block(kWarps * 32);
  switch (m) {
#define LINLY_GEMV_CASE(MM) case MM: gemv_kernel<MM><<<grid, block, 0, stream>>>(w, x, y, ldy); break;
    LINLY_GEMV_CASE(1) LINLY_GEMV_CASE(2) LINLY_GEMV_CASE(3) LINLY_GEMV_CASE(4)
    LINLY_GEMV_CASE(5) LINLY_GEMV_CASE(6) LINLY_GEMV_CASE(7) LINLY_GEMV_CASE(8)
#undef LINLY_GEMV_CASE
    default: throw std::invalid_argument("the GEMV path takes 1 to 8 rows");
  }
  LINLY_CUDA_LAUNCHED("gemv_kernel");
}

}  // namespace

#define LINLY_GEMV_ENTRY(OUT)                                                                        \
  void gemv_w4(const DeviceW4& w, const half* x, OUT* y, int m, int64_t ldy, cudaStream_t stream) {   \
    with_w4_view(w, [&](const auto& v) { launch_gemv(v, x, y, m, ldy, stream); });                   \
  }                                                                                                  \
  void gemv_w8(const DeviceW8& w, const half* x, OUT* y, int m, int64_t ldy, cudaStream_t stream) {   \
    launch_gemv(w.view(), x, y, m, ldy, stream);                                                     \
  }                                                                                                  \
  void gemv_w16(const DeviceW16& w, const half* x, OUT* y, int m, int64_t ldy, cudaStream_t stream) { \
    launch_gemv(w.view(), x, y, m, ldy, stream);                                                     \
  }
LINLY_GEMV_ENTRY(half)
LINLY_GEMV_ENTRY(float)
#undef LINLY_GEMV_ENTRY

}  // namespace cuda
}  // namespace linly
