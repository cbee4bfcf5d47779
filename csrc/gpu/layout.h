// The GPU weight layouts: what the CUDA kernels read, made on the host from the engine's
// on-disk blocks (formats.h) at load. Plain C++ shared with the device code, so that the
// repacking and the element order are tested on any CPU (tests/test_cuda_layout.py).
//
// w4 (q4_0, q4_1, q4_g32/64/128): value = d·(q − z) + m, q ∈ [0,15]
//   qweight  uint32 [n][k/8]    eight nibbles per word, in the order w4_shift() gives:
//                               elements 2i and 2i+1 of a word sit at bits 4i and 16+4i,
//                               so (word >> 4i) & 0x000F000F | 0x64006400 is the half2
//                               (1024 + q[2i], 1024 + q[2i+1]) with no int→float convert
//   scales   fp16   [n][k/G]    d
//   mins     fp16   [n][k/G]    m (q4_1 only; otherwise empty and m = 0)
//   zeros    uint8  [n][k/G]    z (q4_g only; q4_0 has z = 8, q4_1 z = 0)
//   G = 32 for q4_0/q4_1, the group size for q4_g.
// w8 (q8_0, int8 per channel): value = d·q, q ∈ [−127,127]
//   qweight  int8   [n][k]      row-major, natural order
//   scales   fp16   [n][k/G]    G = 32 (q8_0) or G = k (per output channel)
// Bytes per weight: w4 q4_0 4.5 bits (as on disk), q4_g128 4.19, q4_1 5; w8 q8_0 8.5.
#pragma once
#include <stdexcept>
#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define LINLY_HD __host__ __device__ __forceinline__
#else
#define LINLY_HD inline
#endif

namespace linly {
namespace gpu {

// Bit position of element j (0..7) of a w4 word.
LINLY_HD int w4_shift(int j) { return (j & 1) * 16 + (j >> 1) * 4; }

enum class W4Kind : int { Q4_0 = 0, Q4_1 = 1, Q4_G = 2 };

struct W4Weights {
  int64_t n = 0, k = 0;
  int group = 32;
  W4Kind kind = W4Kind::Q4_0;
  std::vector<uint32_t> qweight;  // [n][k/8]
  std::vector<uint16_t> scales;   // [n][k/group] fp16 bits
  std::vector<uint16_t> mins;     // [n][k/group] fp16 bits, q4_1 only
  std::vector<uint8_t> zeros;     // [n][k/group], q4_g only
};

struct W8Weights {
  int64_t n = 0, k = 0;
  int group = 32;                // 32 (q8_0) or k (per channel)
  std::vector<int8_t> qweight;   // [n][k]
  std::vector<uint16_t> scales;  // [n][k/group] fp16 bits
};

// From `rows` (n rows of the on-disk blocks of `fmt`, each row_bytes(fmt, k) long; the
// panel16 layout must be unpacked first). Throws std::invalid_argument on a format that
// has no GPU layout or sizes that do not fit.
W4Weights repack_w4(const uint8_t* rows, int64_t n_rows_bytes, const char* fmt, int64_t n, int64_t k);
W8Weights repack_w8(const uint8_t* rows, int64_t n_rows_bytes, const char* fmt, int64_t n, int64_t k);
// int8 per output channel from f32 weights [n][k]: d = max|w|/127 per row, q = rint(w/d).
W8Weights quantize_w8_per_channel(const float* w, int64_t n, int64_t k);

// Scalar references: the f32 weights [n][k] each layout stands for (d, m in f32).
std::vector<float> dequantize_ref(const W4Weights& w);
std::vector<float> dequantize_ref(const W8Weights& w);

}  // namespace gpu
}  // namespace linly
