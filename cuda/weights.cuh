// Device views of the GPU weight layouts (csrc/gpu/layout.h), with the one dequantiser
// every kernel uses: eight consecutive elements of a row → four half2.
#pragma once
#include "common.cuh"

namespace linly {
namespace cuda {

// KIND: 0 = q4_0 (z = 8), 1 = q4_1 (d·q + m), 2 = q4_g (z per group)
template <int KIND>
struct W4View {
  const uint32_t* q;   // [n][k/8]
  const half* d;       // [n][k/group]
  const half* m;       // [n][k/group] (KIND 1)
  const uint8_t* z;    // [n][k/group] (KIND 2)
  int64_t n, k;
  int group;
  static constexpr int kElemsPerVec = 32;  // one uint4 of codes

  // (1024 + q) pairs → values: subtract 1024 + z (exact in fp16: small integers), then
  // scale. Subtracting first keeps the product exact up to the one rounding of ·d.
  __device__ __forceinline__ void scale_pairs(half2 p[4], int64_t gi) const {
    const half2 d2 = __half2half2(d[gi]);
    if (KIND == 1) {
      const half2 m2 = __half2half2(m[gi]);
      const half2 b = __float2half2_rn(1024.0f);
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = __hfma2(__hsub2(p[i], b), d2, m2);
    } else {
      const half2 b = __float2half2_rn(1024.0f + (KIND == 0 ? 8.0f : (float)z[gi]));
#pragma unroll
      for (int i = 0; i < 4; ++i) p[i] = __hmul2(__hsub2(p[i], b), d2);
    }
  }
  // The 16 bytes of codes for elements [k0, k0+32) of a row (k0 a multiple of 32; all
  // 32 lie in one group, since groups are multiples of 32).
  __device__ __forceinline__ uint4 codes(int64_t row, int64_t k0) const {
    return __ldg(reinterpret_cast<const uint4*>(q + (row * k + k0) / 8));
  }
  __device__ __forceinline__ int64_t group_of(int64_t row, int64_t k0) const { return row * (k / group) + k0 / group; }
  // eight elements [k0 + 8·part, +8) of the vector `c` loaded by codes()
  __device__ __forceinline__ void dequant(const uint4& c, int part, int64_t gi, half2 out[4]) const {
    w4_word_to_half2x4((&c.x)[part], out);
    scale_pairs(out, gi);
  }
  // elements [k0, k0+8) of row `row`, k0 a multiple of 8 (the GEMM's tile loads)
  __device__ __forceinline__ void dequant8(int64_t row, int64_t k0, half2 out[4]) const {
    w4_word_to_half2x4(__ldg(q + (row * k + k0) / 8), out);
    scale_pairs(out, group_of(row, k0));
  }
};

struct W8View {
  const int8_t* q;  // [n][k]
  const half* d;    // [n][k/group]
  int64_t n, k;
  int group;
  static constexpr int kElemsPerVec = 16;

  __device__ __forceinline__ uint4 codes(int64_t row, int64_t k0) const {
    return __ldg(reinterpret_cast<const uint4*>(q + row * k + k0));
  }
  __device__ __forceinline__ int64_t group_of(int64_t row, int64_t k0) const { return row * (k / group) + k0 / group; }
  __device__ __forceinline__ void dequant(const uint4& c, int part, int64_t gi, half2 out[4]) const {
    w8_word_to_half2x2((&c.x)[2 * part], out);
    w8_word_to_half2x2((&c.x)[2 * part + 1], out + 2);
    const half2 d2 = __half2half2(d[gi]);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = __hmul2(out[i], d2);
  }
  __device__ __forceinline__ void dequant8(int64_t row, int64_t k0, half2 out[4]) const {
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(q + row * k + k0));
    w8_word_to_half2x2(w.x, out);
    w8_word_to_half2x2(w.y, out + 2);
    const half2 d2 = __half2half2(d[group_of(row, k0)]);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = __hmul2(out[i], d2);
  }
};

}  // namespace cuda
}  // namespace linly
