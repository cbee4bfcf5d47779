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
#include <cstdlib>
#include <string>
#include <type_traits>

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

// ---- The tensor-core variant (LINLY_GEMV=mma): the same dequantised weights, but the
// products and their fp32 sums go to mma.sync m16n8k16 instead of half2 FMAs and
// conversions, about a third of the scalar kernel's instructions per weight.
//
// A warp covers 8 weight rows (the mma's n) and the block's 4 warps split K between them.
// Lane (g, t) = (lane / 4, lane % 4) loads vector 4q + t of weight row g and the same
// elements of activation row g (zero for g ≥ M): a dot product does not care in which
// order its k run, so each mma's 16 k-slots are taken as 4 consecutive elements of each
// of the 4 lanes' vectors, the same for A's rows and B's columns (PTX fragment layout:
// a0/b0 hold slots 2t, 2t+1, a2/b1 slots 2t+8, 2t+9; rows 8-15 of A are zero). Lane
// (g, t) ends with y[g][2t] and y[g][2t + 1] of its warp's 8 rows in c0, c1.
constexpr int kMmaUnroll = 4;

__device__ __forceinline__ void mma_16816(float c[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

// The end of both tensor-core kernels: lane (g, t) holds its warp's K-share of
// y[g][n0 + 2t] and y[g][n0 + 2t + 1] (g < M); the block's warps' shares are summed.
template <int M, class OutT>
__device__ __forceinline__ void store_warp_sums(float (&red)[kWarps][M][8], float v0, float v1, int64_t n0,
                                                int64_t n, OutT* __restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  if (g < M) {
    red[warp][g][2 * t] = v0;
    red[warp][g][2 * t + 1] = v1;
  }
  __syncthreads();
  if (threadIdx.x < M * 8) {
    const int r = threadIdx.x / 8, col = threadIdx.x % 8;
    float v = 0.0f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) v += red[i][r][col];
    if (n0 + col < n) store(y + r * ldy + n0 + col, v);
  }
}

template <int M, class W, class OutT>
__global__ void __launch_bounds__(kWarps * 32) gemv_mma_kernel(W w, const half* __restrict__ x,
                                                               OutT* __restrict__ y, int64_t ldy) {
  constexpr int E = W::kElemsPerVec;  // elements of a lane's vector
  constexpr int H2 = E / 2;           // its half2 pairs; two per mma
  __shared__ float red[kWarps][M][8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n0 = (int64_t)blockIdx.x * 8;
  const int64_t wrow = n0 + g < w.n ? n0 + g : w.n - 1;  // rows past n repeat the last, never stored
  const typename W::Row wr = w.row_view(wrow);
  const int steps = (int)(w.k / E);
  float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
  for (int q0 = warp; q0 * 4 < steps; q0 += kWarps * kMmaUnroll) {
    uint4 c[kMmaUnroll];
    typename W::Scale sc[kMmaUnroll];
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int s = (q0 + kWarps * u) * 4 + t;
      if (s < steps) {
        c[u] = wr.codes(s);
        sc[u] = wr.scale(s);
      } else {
        c[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int s = (q0 + kWarps * u) * 4 + t;
      uint32_t a[H2], b[H2];
      if (s < steps) {
#pragma unroll
        for (int part = 0; part < E / 8; ++part) {
          half2 wv[4];
          wr.dequant(c[u], part, sc[u], wv);
#pragma unroll
          for (int i = 0; i < 4; ++i) b[part * 4 + i] = *reinterpret_cast<uint32_t*>(&wv[i]);
          uint4 xv = make_uint4(0, 0, 0, 0);
          if (g < M) xv = __ldg(reinterpret_cast<const uint4*>(x + g * w.k + (int64_t)s * E + part * 8));
          a[part * 4 + 0] = xv.x; a[part * 4 + 1] = xv.y; a[part * 4 + 2] = xv.z; a[part * 4 + 3] = xv.w;
        }
      } else {
#pragma unroll
        for (int i = 0; i < H2; ++i) a[i] = b[i] = 0u;
      }
#pragma unroll
      for (int j = 0; j < H2 / 2; ++j) mma_16816(acc[j & 1], a[2 * j], a[2 * j + 1], b[2 * j], b[2 * j + 1]);
    }
  }
  store_warp_sums<M>(red, acc[0][0] + acc[1][0], acc[0][1] + acc[1][1], n0, w.n, y, ldy);
}

// q4_g128 on the tensor cores: a warp step covers k [128q, 128q + 128) of its 8 rows,
// which is exactly group q of each row, so B holds the exact small integers q − z and
// the group's scale is applied to the fp32 mma result of the step (two FFMAs per lane)
// instead of to every weight in fp16: fewer instructions, and no fp16 rounding of the
// scaled weights. Lane (g, t) needs the scales of the rows its C columns hold, 2t and 2t+1.
template <int M, class OutT>
__global__ void __launch_bounds__(kWarps * 32) gemv_mma_g128_kernel(W4View<2> w, const half* __restrict__ x,
                                                                    OutT* __restrict__ y, int64_t ldy) {
  __shared__ float red[kWarps][M][8];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n0 = (int64_t)blockIdx.x * 8, last = w.n - 1;
  const int64_t wrow = n0 + g < w.n ? n0 + g : last;
  const uint4* codes = reinterpret_cast<const uint4*>(w.q + wrow * (w.k / 8));
  const uint8_t* zr = w.z + wrow * w.groups_per_row;
  const half* d0 = w.d + (n0 + 2 * t < w.n ? n0 + 2 * t : last) * w.groups_per_row;
  const half* d1 = w.d + (n0 + 2 * t + 1 < w.n ? n0 + 2 * t + 1 : last) * w.groups_per_row;
  const int groups = (int)w.groups_per_row;
  float acc0 = 0.0f, acc1 = 0.0f;
  for (int q0 = warp; q0 < groups; q0 += kWarps * kMmaUnroll) {
    uint4 c[kMmaUnroll];
    half2 zb[kMmaUnroll], zo[kMmaUnroll];  // 1024 + z and −(64 + z), exact in fp16
    float s0[kMmaUnroll], s1[kMmaUnroll];
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int q = q0 + kWarps * u;
      if (q < groups) {
        c[u] = __ldg(codes + 4 * q + t);
        zb[u] = u32_as_half2((0x6400u + zr[q]) * 0x10001u);         // 1024 + z (spacing 1 there)
        zo[u] = u32_as_half2((0xD400u + (zr[q] << 4)) * 0x10001u);  // −(64 + z) (spacing 1/16)
        s0[u] = __half2float(d0[q]);
        s1[u] = __half2float(d1[q]);
      }
    }
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int q = q0 + kWarps * u;
      if (q >= groups) break;  // the same for the whole warp: mma.sync needs every lane
      uint32_t a[16], b[16];
#pragma unroll
      for (int part = 0; part < 4; ++part) {
        // q − z for the word's four pairs with one shift and four masks: pairs 1 and 3 are
        // taken in place (1024 + 16q) and scaled by 1/16 inside the subtraction's FMA;
        // every step is exact (small integers)
        const uint32_t wd = (&c[u].x)[part], wh = wd >> 8;
        const half2 sixteenth = u32_as_half2(0x2C002C00u);  // 1/16
        half2 v[4];
        v[0] = __hsub2(u32_as_half2((wd & 0x000F000Fu) | 0x64006400u), zb[u]);
        v[1] = __hfma2(u32_as_half2((wd & 0x00F000F0u) | 0x64006400u), sixteenth, zo[u]);
        v[2] = __hsub2(u32_as_half2((wh & 0x000F000Fu) | 0x64006400u), zb[u]);
        v[3] = __hfma2(u32_as_half2((wh & 0x00F000F0u) | 0x64006400u), sixteenth, zo[u]);
#pragma unroll
        for (int i = 0; i < 4; ++i) b[part * 4 + i] = *reinterpret_cast<const uint32_t*>(&v[i]);
        uint4 xv = make_uint4(0, 0, 0, 0);
        if (g < M) xv = __ldg(reinterpret_cast<const uint4*>(x + g * w.k + (int64_t)(4 * q + t) * 32 + part * 8));
        a[part * 4 + 0] = xv.x; a[part * 4 + 1] = xv.y; a[part * 4 + 2] = xv.z; a[part * 4 + 3] = xv.w;
      }
      float dq[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < 8; ++j) mma_16816(dq, a[2 * j], a[2 * j + 1], b[2 * j], b[2 * j + 1]);
      acc0 += s0[u] * dq[0];
      acc1 += s1[u] * dq[1];
    }
  }
  store_warp_sums<M>(red, acc0, acc1, n0, w.n, y, ldy);
}

// LINLY_GEMV=mma picks the tensor-core variant; the default is the scalar one. Read at
// every launch (a few hundred ns against a kernel's microseconds; a captured graph keeps
// the variant it was captured with), so a benchmark can time both in one process.
bool use_mma_gemv() {
  const char* e = std::getenv("LINLY_GEMV");
  return e && e[0] == 'm' && std::string(e) == "mma";
}

// f(std::integral_constant<int, m>{}) for m = 1..8: the row count is a template
// parameter of every GEMV kernel (accumulators in registers).
template <class F>
void with_rows(int m, F&& f) {
  switch (m) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    default: throw std::invalid_argument("the GEMV path takes 1 to 8 rows");
  }
}

template <class W, class OutT>
void launch_gemv(const W& w, const half* x, OutT* y, int m, int64_t ldy, cudaStream_t stream) {
  const dim3 block(kWarps * 32);
  if (!use_mma_gemv()) {
    const dim3 grid((unsigned)((w.n + kWarps - 1) / kWarps));
    with_rows(m, [&](auto M) { gemv_kernel<decltype(M)::value><<<grid, block, 0, stream>>>(w, x, y, ldy); });
    LINLY_CUDA_LAUNCHED("gemv_kernel");
    return;
  }
  const dim3 grid((unsigned)((w.n + 7) / 8));  // 8 rows per block
  if constexpr (std::is_same<W, W4View<2>>::value) {
    if (w.group_shift == 7) {  // q4_g128: the group-scaled tensor-core kernel
      with_rows(m, [&](auto M) { gemv_mma_g128_kernel<decltype(M)::value><<<grid, block, 0, stream>>>(w, x, y, ldy); });
      LINLY_CUDA_LAUNCHED("gemv_mma_g128_kernel");
      return;
    }
  }
  with_rows(m, [&](auto M) { gemv_mma_kernel<decltype(M)::value><<<grid, block, 0, stream>>>(w, x, y, ldy); });
  LINLY_CUDA_LAUNCHED("gemv_mma_kernel");
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
