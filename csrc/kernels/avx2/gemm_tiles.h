// Prompt GEMM in f32 on dequantised weight tiles, shared by the AVX2 and AVX-512 units
// (each includes this into its own anonymous namespace, so each gets its own copy built
// with its own flags; the fill code is AVX2 + FMA + F16C, which every AVX-512 CPU has).
// y[m, n] = Σ_k x[m, k] · W[n, k] with W (an integer format in 16-row panels, or dense
// f32 / f16 / bf16 rows) turned 16 rows × kKc columns at a time into a transposed f32
// tile (tile[kk][r] = W[n0 + r, k0 + kk]) that stays in L1, multiplied by a register-
// blocked FMA micro-kernel supplied by the unit (gemm_tiles_avx2.cpp: 6 rows × 2 ymm;
// gemm_tiles_avx512.cpp: 12 rows × 1 zmm).
//
// Why this exists: a prompt multiplies every weight by hundreds of activation rows, so
// unpacking is paid once per tile and shared by all rows, and the arithmetic is then
// plain f32 FMA: exact. The decoder's int8x2 prompts took these tiles on AVX2 until the
// int16 tiles of gemm_i16_avx2.cpp (same structure, one vpmaddwd per two products) ran
// 1.4x faster; integer weights come here for activations='f32'. Its scalar twin is matmul_ref with f32
// activations (matmul_ref.cpp: dequantise the row, multiply in double). Dense rows come
// here too: the row kernels convert each weight vector once per activation row or two
// and ran at a half (AVX2) to a third (AVX-512) of this rate (benchmarks/NOTES.md).
#pragma once
#include <immintrin.h>

#include <vector>

#include "kernels/avx2/dense_load_avx2.h"
#include "kernels/kernel_table.h"
#include "quant/fp16.h"
#include "quant/matmul_ref.h"
#include "quant/panel.h"

namespace linly {
namespace {


constexpr int kKc = 256;  // tile columns: 256 × 16 floats = 16 KiB, half an L1d
constexpr int kGroup = 16;  // tiles sharing a pass over K (see gemm_tiles_avx2)
static_assert(kSliceBlocks % (kKc / QK) == 0, "a tile's blocks lie in one K-slice (panel.h)");
constexpr int kMr = 6;    // activation rows per packed block (pack_x); the AVX2 micro-kernel
                          // takes one block (12 ymm accumulators), the AVX-512 one two

// Blocks [b0, b0 + nblk) of one panel (panel.h) → tile[(b - b0)·32 + j][16]. Each 32-bit
// lane of a panel vector is one row's 4 code bytes, so a lane shift and mask yields one
// element of 8 rows at once: no transposition needed. Values are formed as the scalar
// dequantiser forms them (d · (q − 8), d · (q − z), d · q + m, d · q).
template <Format F>
void panel_to_tile(const uint8_t* panel, const PanelLayout& L, int64_t b0, int nblk, float* tile) {
  constexpr int G = q4_group_size(F);
  const __m256i low4 = _mm256_set1_epi32(0x0f);
  for (int bi = 0; bi < nblk; ++bi) {
    const int64_t b = b0 + bi;
    const uint8_t* rec = panel + L.record_offset(b);  // d[16], then m[16] or z[16]
    const uint8_t* codes = panel + L.qs_offset(b);
    float* t = tile + bi * QK * kPanelRows;
    for (int h = 0; h < 2; ++h) {  // rows 8h .. 8h + 7
      const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rec + h * 16)));
      if (F == Format::Q8_0) {
        const uint8_t* q = codes;
        for (int v = 0; v < 8; ++v) {
          const __m256i raw = _mm256_load_si256((const __m256i*)(q + v * 64 + h * 32));
          const __m256i e[4] = {_mm256_srai_epi32(_mm256_slli_epi32(raw, 24), 24),
                                _mm256_srai_epi32(_mm256_slli_epi32(raw, 16), 24),
                                _mm256_srai_epi32(_mm256_slli_epi32(raw, 8), 24), _mm256_srai_epi32(raw, 24)};
          for (int i = 0; i < 4; ++i) _mm256_store_ps(t + (4 * v + i) * 16 + 8 * h, _mm256_mul_ps(d, _mm256_cvtepi32_ps(e[i])));
        }
        continue;
      }
      __m256i zero_point = _mm256_set1_epi32(8);
      __m256 mn = _mm256_setzero_ps();
      if (G) zero_point = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(rec + 32 + h * 8)));
      if (F == Format::Q4_1) mn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rec + 32 + h * 16)));
      const uint8_t* q = codes;
      for (int v = 0; v < 4; ++v) {
        const __m256i raw = _mm256_load_si256((const __m256i*)(q + v * 64 + h * 32));
        for (int i = 0; i < 4; ++i) {
          __m256i lo = _mm256_and_si256(_mm256_srli_epi32(raw, 8 * i), low4);
          __m256i hi = _mm256_and_si256(_mm256_srli_epi32(raw, 8 * i + 4), low4);
          __m256 flo, fhi;
          if (F == Format::Q4_1) {
            flo = _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(lo)), mn);
            fhi = _mm256_add_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(hi)), mn);
          } else {
            flo = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, zero_point)));
            fhi = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, zero_point)));
          }
          _mm256_store_ps(t + (4 * v + i) * 16 + 8 * h, flo);
          _mm256_store_ps(t + (16 + 4 * v + i) * 16 + 8 * h, fhi);
        }
      }
    }
  }
}

// In-register transpose: v[j] lane r ← v[r] lane j.
inline void transpose8(__m256 v[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
  const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xee);
  v[0] = _mm256_permute2f128_ps(s0, s4, 0x20); v[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  v[1] = _mm256_permute2f128_ps(s1, s5, 0x20); v[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  v[2] = _mm256_permute2f128_ps(s2, s6, 0x20); v[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  v[3] = _mm256_permute2f128_ps(s3, s7, 0x20); v[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Dense rows w[0 .. rows) (rb bytes apart), columns [k0, k0 + kc) → tile[kk][16], rows
// past `rows` zero. Full 8 × 8 blocks go through transpose8 (48 vector operations per 64
// weights, against ~6 FMAs per weight at m = 128; a scalar transposition here cost a
// third of the time); a partial block, at K's end or the matrix's last rows, is scalar.
template <Format F>
void rows_to_tile(const uint8_t* w, int64_t rb, int rows, int64_t k0, int kc, float* tile) {
  const int kc8 = kc / 8 * 8;
  for (int h = 0; h < 2; ++h) {
    const int present = rows - 8 * h;  // rows of this half that exist
    const uint8_t* base = w + 8 * h * rb;
    int kk = 0;
    if (present >= 8) {
      for (; kk < kc8; kk += 8) {
        __m256 v[8];
        for (int r = 0; r < 8; ++r) v[r] = load8(F, base + r * rb, k0 + kk);
        transpose8(v);
        for (int j = 0; j < 8; ++j) _mm256_store_ps(tile + (kk + j) * 16 + 8 * h, v[j]);
      }
    }
    for (; kk < kc; ++kk)
      for (int r = 0; r < 8; ++r) tile[kk * 16 + 8 * h + r] = r < present ? load1(F, base + r * rb, k0 + kk) : 0.0f;
  }
}

// x [m, k] → xp[m / kMr][k][kMr], rows past m zero; the slice of a K chunk starting at
// k0 is then xp + (block · k + k0) · kMr, contiguous. Unpacked, the kMr rows a
// micro-kernel reads lie k·4 bytes apart, and for k a multiple of 1024 they all fall in
// one L1 set and evict each other (measured: 27 GFLOP/s unpacked against ~70 packed).
void pack_x(const float* x, int64_t m, int64_t k, float* xp) {
  for (int64_t m0 = 0; m0 < m; m0 += kMr) {
    float* dst = xp + (m0 / kMr) * k * kMr;
    for (int r = 0; r < kMr; ++r) {
      if (m0 + r >= m) {
        for (int64_t kk = 0; kk < k; ++kk) dst[kk * kMr + r] = 0.0f;
        continue;
      }
      const float* src = x + (m0 + r) * k;
      for (int64_t kk = 0; kk < k; ++kk) dst[kk * kMr + r] = src[kk];
    }
  }
}

// One tile's source: 16 weight rows from r0 (fewer at the matrix's end), columns [k0, k0 + kc).
struct TileSource {
  const MatmulArgs& a;
  PanelLayout L;  // panels only
  int64_t rb;     // dense rows only: bytes per row

  void fill(int64_t r0, int rows, int64_t k0, int kc, float* tile) const {
    if (!a.panels) {
      const uint8_t* w = a.w + r0 * rb;
      switch (a.fmt) {
        case Format::F16: rows_to_tile<Format::F16>(w, rb, rows, k0, kc, tile); break;
        case Format::BF16: rows_to_tile<Format::BF16>(w, rb, rows, k0, kc, tile); break;
        default: rows_to_tile<Format::F32>(w, rb, rows, k0, kc, tile); break;
      }
      return;
    }
    // A tile's blocks lie in one K-slice (kKc divides it): panel r0/16's piece of it.
    const PanelPiece c = L.piece_of(r0 / kPanelRows, k0 / QK);
    const uint8_t* panel = a.w + c.offset;
    const PanelLayout& Ls = c.L;
    const int64_t b0 = c.b;
    const int nblk = kc / QK;
    switch (a.fmt) {
      case Format::Q4_0: panel_to_tile<Format::Q4_0>(panel, Ls, b0, nblk, tile); break;
      case Format::Q4_1: panel_to_tile<Format::Q4_1>(panel, Ls, b0, nblk, tile); break;
      case Format::Q8_0: panel_to_tile<Format::Q8_0>(panel, Ls, b0, nblk, tile); break;
      case Format::Q4_G32: panel_to_tile<Format::Q4_G32>(panel, Ls, b0, nblk, tile); break;
      case Format::Q4_G64: panel_to_tile<Format::Q4_G64>(panel, Ls, b0, nblk, tile); break;
      case Format::Q4_G128: panel_to_tile<Format::Q4_G128>(panel, Ls, b0, nblk, tile); break;
      default: break;
    }
  }

  // Asks for the bytes the next tile will be made from while this one is being multiplied
  // (tens of thousands of cycles): the fill otherwise waits on DRAM, since one tile's
  // slice is too little for the hardware prefetcher to lock on to.
  void prefetch(int64_t r0, int rows, int64_t k0, int kc) const {
    if (!a.panels) {
      const int64_t elem = rb / a.k;
      for (int r = 0; r < rows; ++r) {
        const uint8_t* q = a.w + (r0 + r) * rb + k0 * elem;
        for (int64_t o = 0; o < kc * elem; o += 64) _mm_prefetch((const char*)(q + o), _MM_HINT_T0);
      }
      return;
    }
    // Blocks [b0, b1) of a piece with their records lie in [qs_offset(b0), record_offset(b1 - 1) + record).
    const PanelPiece c = L.piece_of(r0 / kPanelRows, k0 / QK);
    const uint8_t* panel = a.w + c.offset;
    const int64_t lo = c.L.qs_offset(c.b), hi = c.L.record_offset(c.b + kc / QK - 1) + c.L.record_bytes;
    for (int64_t o = lo; o < hi; o += 64) _mm_prefetch((const char*)(panel + o), _MM_HINT_T0);
  }
};

// The driver, shared by the ISA units: Micro::kRows activation rows per call of
// Micro::run(mr, xp, block_stride, tile, kc, y, ldy, cols, accumulate), where xp holds
// rows [0, 6) of the call and xp + block_stride the next six (pack_x's layout).
template <class Micro>
void gemm_tiles(const MatmulArgs& a, int64_t begin, int64_t end) {
  // [begin, end) counts panels for integer formats, rows for dense ones (kernel_table.h).
  // An integer format the table keeps as rows has no tile reader here; the reference is
  // correct for it.
  if (!a.panels && format_info(a.fmt).integer_path) { matmul_ref(a, begin, end); return; }
  const TileSource src{a, a.panels ? panel_layout(a.fmt, a.n, a.k) : PanelLayout{}, row_bytes(a.fmt, a.k)};
  const int64_t row0 = a.panels ? begin * kPanelRows : begin;
  const int64_t row1 = a.panels ? (end * kPanelRows < a.n ? end * kPanelRows : a.n) : end;
  const int64_t tiles = (row1 - row0 + kPanelRows - 1) / kPanelRows;
  auto tile_rows = [&](int64_t t) { return (int)(row1 - (row0 + t * kPanelRows) < kPanelRows ? row1 - (row0 + t * kPanelRows) : kPanelRows); };
  alignas(64) float tile[kKc * kPanelRows];
  thread_local std::vector<float> packed;  // [ceil(m / kMr)][k][kMr], grown only
  const size_t need = (size_t)((a.m + kMr - 1) / kMr * kMr * a.k);
  if (packed.size() < need) packed.resize(need);
  pack_x(a.x, a.m, a.k, packed.data());
  // Groups of kGroup tiles, K chunks inside a group: y[:, group] (m × 256 floats, 128
  // KiB at m = 128) stays in L2 across the chunks it accumulates over, and x's chunk is
  // read once per group. (K outside all tiles re-read y from L3 every chunk: 7 % of
  // prompt time in perf.)
  for (int64_t g0 = 0; g0 < tiles; g0 += kGroup) {
    const int64_t g1 = g0 + kGroup < tiles ? g0 + kGroup : tiles;
    for (int64_t k0 = 0; k0 < a.k; k0 += kKc) {
      const int kc = (int)(a.k - k0 < kKc ? a.k - k0 : kKc);
      for (int64_t t = g0; t < g1; ++t) {
        // The next tile in this order: the group's next one, or its first at the next chunk.
        const int64_t nt = t + 1 < g1 ? t + 1 : g0, nk = t + 1 < g1 ? k0 : k0 + kKc;
        if (nk < a.k) src.prefetch(row0 + nt * kPanelRows, tile_rows(nt), nk, (int)(a.k - nk < kKc ? a.k - nk : kKc));
        const int64_t r0 = row0 + t * kPanelRows;
        const int cols = tile_rows(t);
        src.fill(r0, cols, k0, kc, tile);
        for (int64_t m = 0; m < a.m; m += Micro::kRows) {
          const int mr = (int)(a.m - m < Micro::kRows ? a.m - m : Micro::kRows);
          Micro::run(mr, packed.data() + ((m / kMr) * a.k + k0) * kMr, a.k * kMr, tile, kc, a.y + m * a.n + r0, a.n,
                     cols, k0 > 0);
        }
      }
    }
  }
}

}  // namespace
}  // namespace linly
