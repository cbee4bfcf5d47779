// The AVX2 micro-kernel for the prompt tile GEMM (gemm_tiles.h has the design).
#include "kernels/avx2/gemm_tiles.h"

namespace linly {
namespace {

// y[MR][cols] (+)= xp[kc][kMr] · tile[kc][16], xp the packed activations. The hot loop
// of prompt processing: per column of the tile, two tile loads feed 2·MR FMAs.
template <int MR>
void micro(const float* xp, const float* tile, int kc, float* y, int64_t ldy, int cols, bool accumulate) {
  // Every loop over r is unrolled so that c[][] lives in registers: one rolled loop in
  // the epilogue made GCC keep c on the stack and store all 12 vectors every iteration.
  __m256 c[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = _mm256_setzero_ps();
  for (int kk = 0; kk < kc; ++kk) {
    const __m256 b0 = _mm256_load_ps(tile + kk * 16), b1 = _mm256_load_ps(tile + kk * 16 + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(xp + kk * kMr + r);
      c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
      c[r][1] = _mm256_fmadd_ps(a, b1, c[r][1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* yr = y + r * ldy;
    if (cols == 16) {
      if (accumulate) {
        c[r][0] = _mm256_add_ps(c[r][0], _mm256_loadu_ps(yr));
        c[r][1] = _mm256_add_ps(c[r][1], _mm256_loadu_ps(yr + 8));
      }
      _mm256_storeu_ps(yr, c[r][0]);
      _mm256_storeu_ps(yr + 8, c[r][1]);
    } else {
      alignas(32) float t[16];
      _mm256_store_ps(t, c[r][0]);
      _mm256_store_ps(t + 8, c[r][1]);
      for (int j = 0; j < cols; ++j) yr[j] = accumulate ? yr[j] + t[j] : t[j];
    }
  }
}

struct MicroAvx2 {
  static constexpr int kRows = kMr;
  static void run(int mr, const float* xp, int64_t /*block_stride*/, const float* tile, int kc, float* y, int64_t ldy,
                  int cols, bool accumulate) {
    switch (mr) {
      case 6: micro<6>(xp, tile, kc, y, ldy, cols, accumulate); break;
      case 5: micro<5>(xp, tile, kc, y, ldy, cols, accumulate); break;
      case 4: micro<4>(xp, tile, kc, y, ldy, cols, accumulate); break;
      case 3: micro<3>(xp, tile, kc, y, ldy, cols, accumulate); break;
      case 2: micro<2>(xp, tile, kc, y, ldy, cols, accumulate); break;
      default: micro<1>(xp, tile, kc, y, ldy, cols, accumulate); break;
    }
  }
};

}  // namespace

void gemm_tiles_avx2(const MatmulArgs& a, int64_t begin, int64_t end) { gemm_tiles<MicroAvx2>(a, begin, end); }

}  // namespace linly
