// The AVX-512 micro-kernel for the prompt tile GEMM (gemm_tiles.h has the design and the
// driver; the tiles, 16 rows wide, are exactly one zmm per column).
#include "kernels/avx2/gemm_tiles.h"

namespace linly {
namespace {

// y[MR][cols] (+)= x[MR][kc] · tile[kc][16], rows 0..5 of x packed at xp and rows 6..11
// at xp + block_stride. The hot loop of prompt processing: per tile column one load
// feeds MR FMAs; 12 accumulators cover the FMA latency on two pipes (Zen 4/5: 4 cycles)
// and leave registers to spare.
template <int MR>
void micro(const float* xp, int64_t block_stride, const float* tile, int kc, float* y, int64_t ldy, int cols,
           bool accumulate) {
  __m512 c[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) c[r] = _mm512_setzero_ps();
  const float* xp1 = xp + block_stride;
  for (int kk = 0; kk < kc; ++kk) {
    const __m512 b = _mm512_load_ps(tile + kk * 16);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const float* a = r < kMr ? xp + kk * kMr + r : xp1 + kk * kMr + (r - kMr);
      c[r] = _mm512_fmadd_ps(_mm512_set1_ps(*a), b, c[r]);
    }
  }
  const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    float* yr = y + r * ldy;
    if (accumulate) c[r] = _mm512_add_ps(c[r], _mm512_maskz_loadu_ps(mask, yr));
    _mm512_mask_storeu_ps(yr, mask, c[r]);
  }
}

struct MicroAvx512 {
  static constexpr int kRows = 2 * kMr;
  static void run(int mr, const float* xp, int64_t block_stride, const float* tile, int kc, float* y, int64_t ldy,
                  int cols, bool accumulate) {
    switch (mr) {
      case 12: micro<12>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 11: micro<11>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 10: micro<10>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 9: micro<9>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 8: micro<8>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 7: micro<7>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 6: micro<6>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 5: micro<5>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 4: micro<4>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 3: micro<3>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      case 2: micro<2>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
      default: micro<1>(xp, block_stride, tile, kc, y, ldy, cols, accumulate); break;
    }
  }
};

}  // namespace

void gemm_tiles_avx512(const MatmulArgs& a, int64_t begin, int64_t end) { gemm_tiles<MicroAvx512>(a, begin, end); }

}  // namespace linly
