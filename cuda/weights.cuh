// Device views of the GPU weight layouts (csrc/gpu/layout.h), with the one dequantiser
// every kernel uses: eight consecutive elements of a row → four half2.
//
// Group index: row·groups_per_row + (k0 >> group_shift), both fixed on the host. (An
// earlier version divided by the group size here, a 64-bit division per 32 weights that
// made the GEMV instruction-bound at a third of the memory bandwidth on an H200.)
#pragma once
#include "common.cuh"

namespace linly {
namespace cuda {

// log2 of a power-of-two group size; a group that is a whole row (k not a power of two)
// takes 30, so that k0 >> 30 = 0 for any k0 < 2^30.
inline int group_shift_of(int64_t group, int64_t k) {
  if (group == k && (group & (group - 1))) return 30;
  int s = 0;
  while ((int64_t(1) << s) < group) ++s;
  return s;
}

// KIND: 0 = q4_0 (z = 8), 1 = q4_1 (d·q + m), 2 = q4_g (z per group)
template <int KIND>
struct W4View {
  const uint32_t* q;   // [n][k/8]
  const half* d;       // [n][k/group]
  const half* m;       // [n][k/group] (KIND 1)
  const uint8_t* z;    // [n][k/group] (KIND 2)
  int64_t n, k;
  int64_t groups_per_row;
  int group_shift;
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
  __device__ __forceinline__ int64_t group_of(int64_t row, int64_t k0) const {
    return row * groups_per_row + (k0 >> group_shift);
  }
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

  // The GEMV's view of one row: vector s holds elements [32s, 32s+32), all in group
  // s >> vec_shift. The scale and offset are loaded once per vector (Scale), and every
  // constant is a bit pattern (1024 + z in fp16 is 0x6400 + z), not a conversion.
  struct Scale {
    half2 d, b;  // KIND 1: value = (p − 1024)·d + b (b = m); else (p − b)·d, b = 1024 + z
  };
  struct Row {
    const uint4* codes_;
    const half* d;
    const half* m;
    const uint8_t* z;
    int vec_shift;
    __device__ __forceinline__ uint4 codes(int s) const { return __ldg(codes_ + s); }
    __device__ __forceinline__ Scale scale(int s) const {
      const int g = s >> vec_shift;
      Scale sc;
      sc.d = __half2half2(d[g]);
      if (KIND == 1) sc.b = __half2half2(m[g]);
      else if (KIND == 0) sc.b = u32_as_half2(0x64086408u);  // 1024 + 8
      else sc.b = u32_as_half2((0x6400u + z[g]) * 0x10001u);
      return sc;
    }
    __device__ __forceinline__ void dequant(const uint4& c, int part, const Scale& sc, half2 out[4]) const {
      w4_word_to_half2x4((&c.x)[part], out);
      if (KIND == 1) {
        const half2 b = u32_as_half2(0x64006400u);  // 1024
#pragma unroll
        for (int i = 0; i < 4; ++i) out[i] = __hfma2(__hsub2(out[i], b), sc.d, sc.b);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) out[i] = __hmul2(__hsub2(out[i], sc.b), sc.d);
      }
    }
  };
  __device__ __forceinline__ Row row_view(int64_t r) const {
    return Row{reinterpret_cast<const uint4*>(q + r * (k / 8)), d + r * groups_per_row,
               KIND == 1 ? m + r * groups_per_row : nullptr, KIND == 2 ? z + r * groups_per_row : nullptr,
               group_shift - 5};
  }
};

struct W8View {
  const int8_t* q;  // [n][k]
  const half* d;    // [n][k/group]
  int64_t n, k;
  int64_t groups_per_row;
  int group_shift;
  static constexpr int kElemsPerVec = 16;

  __device__ __forceinline__ uint4 codes(int64_t row, int64_t k0) const {
    return __ldg(reinterpret_cast<const uint4*>(q + row * k + k0));
  }
  __device__ __forceinline__ int64_t group_of(int64_t row, int64_t k0) const {
    return row * groups_per_row + (k0 >> group_shift);
  }
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

  // The GEMV's view of one row: vector s holds elements [16s, 16s+16).
  struct Scale {
    half2 d;
  };
  struct Row {
    const uint4* codes_;
    const half* d;
    int vec_shift;
    __device__ __forceinline__ uint4 codes(int s) const { return __ldg(codes_ + s); }
    __device__ __forceinline__ Scale scale(int s) const { return Scale{__half2half2(d[s >> vec_shift])}; }
    __device__ __forceinline__ void dequant(const uint4& c, int part, const Scale& sc, half2 out[4]) const {
      w8_word_to_half2x2((&c.x)[2 * part], out);
      w8_word_to_half2x2((&c.x)[2 * part + 1], out + 2);
#pragma unroll
      for (int i = 0; i < 4; ++i) out[i] = __hmul2(out[i], sc.d);
    }
  };
  __device__ __forceinline__ Row row_view(int64_t r) const {
    // per-channel scales (group_shift 30, or log2 k) leave s >> vec_shift at 0
    return Row{reinterpret_cast<const uint4*>(q + r * k), d + r * groups_per_row,
               group_shift >= 30 ? 30 : group_shift - 4};
  }
};

// Dense fp16 weights [n][k] (the fp16 decoder's matrices, and anything with no integer
// GPU layout): the same kernels, with a dequantiser that is a reinterpretation.
struct W16View {
  const half* q;  // [n][k]
  int64_t n, k;
  static constexpr int kElemsPerVec = 8;

  __device__ __forceinline__ uint4 codes(int64_t row, int64_t k0) const {
    return __ldg(reinterpret_cast<const uint4*>(q + row * k + k0));
  }
  __device__ __forceinline__ int64_t group_of(int64_t, int64_t) const { return 0; }
  __device__ __forceinline__ void dequant(const uint4& c, int, int64_t, half2 out[4]) const {
    const half2* h = reinterpret_cast<const half2*>(&c);
#pragma unroll
    for (int i = 0; i < 4; ++i) out[i] = h[i];
  }
  __device__ __forceinline__ void dequant8(int64_t row, int64_t k0, half2 out[4]) const {
    const uint4 c = codes(row, k0);
    dequant(c, 0, 0, out);
  }

  struct Scale {};
  struct Row {
    const uint4* codes_;
    __device__ __forceinline__ uint4 codes(int s) const { return __ldg(codes_ + s); }
    __device__ __forceinline__ Scale scale(int) const { return Scale{}; }
    __device__ __forceinline__ void dequant(const uint4& c, int, const Scale&, half2 out[4]) const {
      const half2* h = reinterpret_cast<const half2*>(&c);
#pragma unroll
      for (int i = 0; i < 4; ++i) out[i] = h[i];
    }
  };
  __device__ __forceinline__ Row row_view(int64_t r) const { return Row{reinterpret_cast<const uint4*>(q + r * k)}; }
};

}  // namespace cuda
}  // namespace linly
