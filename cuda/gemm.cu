// Weight-only GEMM for prefill and batches (M > 8): y[M][N] = x[M][K] · Wᵀ on the tensor
// cores (WMMA 16×16×16, fp16 operands, fp32 accumulation).
//
// Each block computes a 64×64 tile of y, walking K 32 at a time: the activation tile is
// copied to shared memory, the weight tile is dequantised into shared memory (so the
// tensor cores only ever see fp16), then four warps each run a 32×32 sub-tile. Rows past
// M and columns past N are zero-filled on load and skipped on store, so any M, N work.
#include <mma.h>

#include "api_impl.cuh"

namespace linly {
namespace cuda {

namespace {

constexpr int BM = 64, BN = 64, BK = 32;
constexpr int LDS = BK + 8;      // smem row pitch in halves: 16 bytes of padding against bank conflicts
constexpr int LDC = BN + 4;      // fp32 epilogue pitch
constexpr int kThreads = 128;

__device__ __forceinline__ void store(half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(float* p, float v) { *p = v; }

template <class W, class OutT>
__global__ void __launch_bounds__(kThreads) gemm_kernel(W w, const half* __restrict__ x, OutT* __restrict__ y, int m,
                                                        int64_t ldy) {
  using namespace nvcuda;
  __shared__ __align__(16) half As[BM * LDS];  // [row of x][k]
  __shared__ __align__(16) half Bs[BN * LDS];  // [row of W][k]  (= Wᵀ tile, column-major)
  __shared__ __align__(16) float Cs[BM * LDC];
  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t m0 = (int64_t)blockIdx.y * BM, n0 = (int64_t)blockIdx.x * BN;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int64_t k0 = 0; k0 < w.k; k0 += BK) {
    // 64 rows × 4 vectors of 8 halves each, for both tiles: two of each per thread
    for (int v = tid; v < BM * (BK / 8); v += kThreads) {
      const int r = v >> 2, c = (v & 3) * 8;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (m0 + r < m) val = __ldg(reinterpret_cast<const uint4*>(x + (m0 + r) * w.k + k0 + c));
      *reinterpret_cast<uint4*>(As + r * LDS + c) = val;
      half2 wv[4];
      if (n0 + r < w.n) {
        w.dequant8(n0 + r, k0 + c, wv);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) wv[i] = __float2half2_rn(0.0f);
      }
      *reinterpret_cast<uint4*>(Bs + r * LDS + c) = *reinterpret_cast<uint4*>(wv);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], As + (wm + 16 * i) * LDS + kk, LDS);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + (wn + 16 * j) * LDS + kk, LDS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
  __syncthreads();
  for (int v = tid; v < BM * BN; v += kThreads) {
    const int r = v / BN, c = v % BN;
    if (m0 + r < m && n0 + c < w.n) store(y + (m0 + r) * ldy + n0 + c, Cs[r * LDC + c]);
  }
}

template <class W, class OutT>
void launch_gemm(const W& w, const half* x, OutT* y, int m, int64_t ldy, cudaStream_t stream) {
  const dim3 grid((unsigned)((w.n + BN - 1) / BN), (unsigned)((m + BM - 1) / BM));
  gemm_kernel<<<grid, kThreads, 0, stream>>>(w, x, y, m, ldy);
  LINLY_CUDA_LAUNCHED("gemm_kernel");
}

}  // namespace

#define LINLY_GEMM_ENTRY(OUT)                                                                        \
  void gemm_w4(const DeviceW4& w, const half* x, OUT* y, int m, int64_t ldy, cudaStream_t stream) {   \
    with_w4_view(w, [&](const auto& v) { launch_gemm(v, x, y, m, ldy, stream); });                   \
  }                                                                                                  \
  void gemm_w8(const DeviceW8& w, const half* x, OUT* y, int m, int64_t ldy, cudaStream_t stream) {   \
    launch_gemm(w.view(), x, y, m, ldy, stream);                                                     \
  }                                                                                                  \
  void gemm_w16(const DeviceW16& w, const half* x, OUT* y, int m, int64_t ldy, cudaStream_t stream) { \
    launch_gemm(w.view(), x, y, m, ldy, stream);                                                     \
  }
LINLY_GEMM_ENTRY(half)
LINLY_GEMM_ENTRY(float)
#undef LINLY_GEMM_ENTRY

}  // namespace cuda
}  // namespace linly
