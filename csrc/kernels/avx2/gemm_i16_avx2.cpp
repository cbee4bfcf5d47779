// Prompt rows of the precise mode (Activations::Int8x2Prompt) on AVX2: the int8x2 product
// as one int16 × int16 product per weight, on weight tiles unpacked once per prompt.
//
// Why int16: the int8x2 activation block is x ≈ d·q + d2·r with d2 = d/254 exactly
// (quantize_row_act_ref), so x ≈ d2·(254·q + r), and |254·q + r| ≤ 32385 fits int16.
// One vpmaddwd (16 products, pair-summed) then does what int8x2 does with two vpmaddubsw
// passes, and Zen 3 issues two vpmaddwd per cycle: measured in a standalone loop, this
// micro-kernel ran 1.4x the f32 FMA tile kernel (71 against 50 GMAC/s on one core,
// benchmarks/NOTES.md), which the prompts used before. The sums are the same integers as
// int8x2's (Σ w·(254q + r) = 254·Σ w·q + Σ w·r), so its scalar twin is matmul_ref with
// the residual; only the float rounding of the scale products differs.
//
// Layout. Weights: a 16-row panel (panel.h), K chunk by chunk (kKc columns), becomes
//   tile[kc/2][16 rows] int32, each an int16 pair (w[e], w[e+16]) of one 32-block, with
//   the code's offset already taken out (q − 8, q − z; q8_0 and q4_1 codes as they are),
//   dw[kc/32][16] f32 block scales, and mw[kc/32][16] f32 block mins (q4_1).
// Pairs are (e, e + 16) because a 4-bit code byte holds exactly those two elements.
// Activations, per thread, in blocks of six rows (two micro-kernel calls):
//   xp[ceil(m/6)][nb·16][6] int32: the same pairs of 254·q + r,
//   dx[ceil(m/6)][nb][6] f32: d2 (0 for the padding rows of the last six),
//   sx[ceil(m/6)][nb][6] f32: d2·Σ(254·q + r) over the block (q4_1's min term).
#include <immintrin.h>
#include <stdlib.h>

#include "kernels/kernel_table.h"
#include "quant/panel.h"

namespace linly {
namespace {

constexpr int kMr = 6;      // activation rows per packed block; the micro-kernel takes three
constexpr int kKc = 256;    // tile columns: 8 KiB of int16 pairs, a quarter of L1d
constexpr int kGroup = 16;  // tiles sharing a pass over K: y[:, 256 columns] stays in L2
static_assert(kSliceBlocks % (kKc / QK) == 0, "a tile's blocks lie in one K-slice (panel.h)");

// Grow-only per-thread memory. Plain malloc, not std::vector: a template instantiated in
// this unit is compiled with AVX2 flags, and the linker may hand that copy to portable code.
struct Scratch {
  void* p = nullptr;
  size_t n = 0;
  ~Scratch() { free(p); }
  void* get(size_t need) {
    if (need > n) {
      free(p);
      p = aligned_alloc(64, (need + 63) / 64 * 64);
      n = p ? need : 0;
    }
    return p;
  }
};

// Rows [0, m) of xq → the packed activations above.
void pack_x(const block_q8_act* xq, int64_t m, int64_t nb, int32_t* xp, float* dx, float* sx) {
  const int64_t groups = (m + kMr - 1) / kMr;
  for (int64_t g = 0; g < groups; ++g) {
    int32_t* xg = xp + g * nb * 16 * kMr;
    float* dg = dx + g * nb * kMr;
    float* sg = sx + g * nb * kMr;
    for (int r = 0; r < kMr; ++r) {
      const int64_t row = g * kMr + r;
      for (int64_t b = 0; b < nb; ++b) {
        if (row >= m) {
          for (int j = 0; j < 16; ++j) xg[(b * 16 + j) * kMr + r] = 0;
          dg[b * kMr + r] = sg[b * kMr + r] = 0.0f;
          continue;
        }
        const block_q8_act& a = xq[row * nb + b];
        // 254·q + r for all 32 elements at once, then the pairs (j, j + 16) into their
        // stride-kMr slots (a scalar loop here was a few per cent of a two-thread prompt:
        // every thread packs every row, once per matrix).
        const __m256i x = _mm256_add_epi16(
            _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)a.qs)), _mm256_set1_epi16(254)),
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)a.r)));  // elements 0..15
        const __m256i y = _mm256_add_epi16(
            _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(a.qs + 16))),
                               _mm256_set1_epi16(254)),
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(a.r + 16))));  // elements 16..31
        // unpack works per 128-bit half: lo holds pairs 0-3 and 8-11, hi pairs 4-7 and 12-15.
        alignas(32) int32_t pairs[16];
        const __m256i lo = _mm256_unpacklo_epi16(x, y), hi = _mm256_unpackhi_epi16(x, y);
        _mm256_store_si256((__m256i*)pairs, _mm256_permute2x128_si256(lo, hi, 0x20));       // pairs 0-7
        _mm256_store_si256((__m256i*)(pairs + 8), _mm256_permute2x128_si256(lo, hi, 0x31));  // pairs 8-15
        for (int j = 0; j < 16; ++j) xg[(b * 16 + j) * kMr + r] = pairs[j];
        dg[b * kMr + r] = a.d2;
        sg[b * kMr + r] = a.d2 * (float)(254 * a.s + a.s2);
      }
    }
  }
}

// Byte i of each int32 lane moved to byte `to` of that lane, the other three bytes zero:
// a vpshufb control (it works within 128-bit halves, whose lanes start at bytes 0, 4, 8, 12).
inline __m256i byte_to(int i, int to) {
  const __m256i lane_base = _mm256_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12);
  const uint32_t others = ~(0xffu << (8 * to)) & 0x80808080u;  // 0x80: write zero
  return _mm256_add_epi32(_mm256_set1_epi32((int)(others | (uint32_t)i << (8 * to))),
                          _mm256_slli_epi32(lane_base, 8 * to));
}

// Blocks [b0, b0 + nblk) of one panel → tile, dw, mw (layout above). Each code byte is
// one tile entry (the pair (e, e + 16)), so a tile vector is two byte shuffles: the low
// nibbles (or a q8_0 code of the first half) into one int16, the high ones into the other.
template <Format F>
void panel_to_i16(const uint8_t* panel, const PanelLayout& L, int64_t b0, int nblk, int32_t* tile, float* dw,
                  float* mw) {
  constexpr int G = q4_group_size(F);
  const __m256i nib = _mm256_set1_epi8(0x0f);
  // 4-bit: nibbles to bytes 0 and 2, int16 values as they are. q8_0: codes to bytes 1
  // and 3, then an arithmetic shift by 8 sign-extends each int16.
  const int lo_at = F == Format::Q8_0 ? 1 : 0, hi_at = F == Format::Q8_0 ? 3 : 2;
  const __m256i sel_lo[4] = {byte_to(0, lo_at), byte_to(1, lo_at), byte_to(2, lo_at), byte_to(3, lo_at)};
  const __m256i sel_hi[4] = {byte_to(0, hi_at), byte_to(1, hi_at), byte_to(2, hi_at), byte_to(3, hi_at)};
  for (int bi = 0; bi < nblk; ++bi) {
    const int64_t b = b0 + bi;
    const uint8_t* rec = panel + L.record_offset(b);  // d[16], then m[16] or z[16]
    const uint8_t* codes = panel + L.qs_offset(b);
    int32_t* t = tile + bi * 16 * kPanelRows;
    for (int h = 0; h < 2; ++h) {  // rows 8h .. 8h + 7, one per lane
      _mm256_store_ps(dw + bi * 16 + 8 * h, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rec + h * 16))));
      if (F == Format::Q4_1)
        _mm256_store_ps(mw + bi * 16 + 8 * h, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rec + 32 + h * 16))));
      // The code's offset in both int16 halves of a lane: q − 8, q − z; none for q4_1, q8_0.
      __m256i z = _mm256_setzero_si256();
      if (F == Format::Q4_0) z = _mm256_set1_epi16(8);
      if (G) {
        const __m256i z32 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(rec + 32 + h * 8)));
        z = _mm256_or_si256(z32, _mm256_slli_epi32(z32, 16));
      }
      for (int v = 0; v < 4; ++v) {
        // Byte i of lane r holds pair 4v + i of row 8h + r: in q8_0, vector v the first
        // elements and vector v + 4 the second; in 4-bit, the low and high nibble.
        __m256i lo, hi;
        if (F == Format::Q8_0) {
          lo = _mm256_load_si256((const __m256i*)(codes + v * 64 + h * 32));
          hi = _mm256_load_si256((const __m256i*)(codes + (v + 4) * 64 + h * 32));
        } else {
          const __m256i raw = _mm256_load_si256((const __m256i*)(codes + v * 64 + h * 32));
          lo = _mm256_and_si256(raw, nib);
          hi = _mm256_and_si256(_mm256_srli_epi32(raw, 4), nib);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
          __m256i pair = _mm256_or_si256(_mm256_shuffle_epi8(lo, sel_lo[i]), _mm256_shuffle_epi8(hi, sel_hi[i]));
          if (F == Format::Q8_0) pair = _mm256_srai_epi16(pair, 8);
          else if (F != Format::Q4_1) pair = _mm256_sub_epi16(pair, z);
          _mm256_store_si256((__m256i*)(t + (4 * v + i) * 16 + 8 * h), pair);
        }
      }
    }
  }
}

inline void pin(__m256i& v) { __asm__("" : "+x"(v)); }  // as in kernels_avx2.cpp: one chain per sum

// y[MR][cols] (+)= MR ≤ 3 packed rows (of a six-row block: x steps by kMr) × the tile
// over nblk blocks. The hot loop of a prompt: per pair column, two tile loads and MR
// broadcasts feed 2·MR vpmaddwd. Three rows, not six, so that the f32 sums (2·MR) stay
// in registers beside the int32 ones (2·MR), the two weight vectors and the broadcast.
template <int MR, bool MIN>
void micro(const int32_t* xp, const float* dx, const float* sx, const int32_t* tile, const float* dw,
           const float* mw, int nblk, float* y, int64_t ldy, int cols, bool accumulate) {
  const bool whole = cols == 16;
  __m256 c[MR][2];
#pragma GCC unroll 3
  for (int r = 0; r < MR; ++r) {
    const bool from_y = accumulate && whole;
    c[r][0] = from_y ? _mm256_loadu_ps(y + r * ldy) : _mm256_setzero_ps();
    c[r][1] = from_y ? _mm256_loadu_ps(y + r * ldy + 8) : _mm256_setzero_ps();
  }
  for (int bi = 0; bi < nblk; ++bi) {
    __m256i s[MR][2];
#pragma GCC unroll 3
    for (int r = 0; r < MR; ++r) s[r][0] = s[r][1] = _mm256_setzero_si256();
    const int32_t* t = tile + bi * 16 * 16;
    const int32_t* x = xp + bi * 16 * kMr;
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      const __m256i w0 = _mm256_load_si256((const __m256i*)(t + j * 16));
      const __m256i w1 = _mm256_load_si256((const __m256i*)(t + j * 16 + 8));
#pragma GCC unroll 3
      for (int r = 0; r < MR; ++r) {
        const __m256i a = _mm256_set1_epi32(x[j * kMr + r]);
        // |pair sum| ≤ 2·127·32385 and 16 of them: far inside int32.
        s[r][0] = _mm256_add_epi32(s[r][0], _mm256_madd_epi16(w0, a));
        pin(s[r][0]);
        s[r][1] = _mm256_add_epi32(s[r][1], _mm256_madd_epi16(w1, a));
        pin(s[r][1]);
      }
    }
    const __m256 d0 = _mm256_load_ps(dw + bi * 16), d1 = _mm256_load_ps(dw + bi * 16 + 8);
#pragma GCC unroll 3
    for (int r = 0; r < MR; ++r) {
      const __m256 xs = _mm256_broadcast_ss(dx + bi * kMr + r);
      c[r][0] = _mm256_fmadd_ps(_mm256_mul_ps(d0, xs), _mm256_cvtepi32_ps(s[r][0]), c[r][0]);
      c[r][1] = _mm256_fmadd_ps(_mm256_mul_ps(d1, xs), _mm256_cvtepi32_ps(s[r][1]), c[r][1]);
      if (MIN) {
        const __m256 sm = _mm256_broadcast_ss(sx + bi * kMr + r);
        c[r][0] = _mm256_fmadd_ps(_mm256_load_ps(mw + bi * 16), sm, c[r][0]);
        c[r][1] = _mm256_fmadd_ps(_mm256_load_ps(mw + bi * 16 + 8), sm, c[r][1]);
      }
    }
  }
#pragma GCC unroll 3
  for (int r = 0; r < MR; ++r) {
    float* yr = y + r * ldy;
    if (whole) {
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

// Rows [0, mr) of a six-row block, three at a time.
template <bool MIN>
void micro_rows(int mr, const int32_t* xp, const float* dx, const float* sx, const int32_t* tile, const float* dw,
                const float* mw, int nblk, float* y, int64_t ldy, int cols, bool accumulate) {
  for (int r0 = 0; r0 < mr; r0 += 3) {
    const int n = mr - r0 < 3 ? mr - r0 : 3;
    const int32_t* x = xp + r0;
    const float *d = dx + r0, *s = sx + r0;
    float* yr = y + r0 * ldy;
    switch (n) {
      case 3: micro<3, MIN>(x, d, s, tile, dw, mw, nblk, yr, ldy, cols, accumulate); break;
      case 2: micro<2, MIN>(x, d, s, tile, dw, mw, nblk, yr, ldy, cols, accumulate); break;
      default: micro<1, MIN>(x, d, s, tile, dw, mw, nblk, yr, ldy, cols, accumulate); break;
    }
  }
}

void fill(Format f, const uint8_t* panel, const PanelLayout& L, int64_t b0, int nblk, int32_t* tile, float* dw,
          float* mw) {
  switch (f) {
    case Format::Q4_0: panel_to_i16<Format::Q4_0>(panel, L, b0, nblk, tile, dw, mw); break;
    case Format::Q4_1: panel_to_i16<Format::Q4_1>(panel, L, b0, nblk, tile, dw, mw); break;
    case Format::Q8_0: panel_to_i16<Format::Q8_0>(panel, L, b0, nblk, tile, dw, mw); break;
    case Format::Q4_G32: panel_to_i16<Format::Q4_G32>(panel, L, b0, nblk, tile, dw, mw); break;
    case Format::Q4_G64: panel_to_i16<Format::Q4_G64>(panel, L, b0, nblk, tile, dw, mw); break;
    case Format::Q4_G128: panel_to_i16<Format::Q4_G128>(panel, L, b0, nblk, tile, dw, mw); break;
    default: break;
  }
}

// The bytes of the panel's blocks [b0, b1) with their records, asked for while the tile
// before is multiplied (as gemm_tiles.h does: one tile is too short a stream for the
// hardware prefetcher).
void prefetch_blocks(const uint8_t* panel, const PanelLayout& L, int64_t b0, int64_t b1) {
  const int64_t lo = L.qs_offset(b0), hi = L.record_offset(b1 - 1) + L.record_bytes;
  for (int64_t o = lo; o < hi; o += 64) _mm_prefetch((const char*)(panel + o), _MM_HINT_T0);
}

}  // namespace

bool gemm_i16_avx2(const MatmulArgs& a, int64_t begin, int64_t end) {
  // [begin, end) counts panels. Tiles in groups of kGroup, K chunks inside a group.
  const PanelLayout L = panel_layout(a.fmt, a.n, a.k);
  const int64_t nb = a.k / QK, groups = (a.m + kMr - 1) / kMr;
  thread_local Scratch scratch;
  const size_t xp_bytes = (size_t)(groups * nb * 16 * kMr) * 4, d_bytes = (size_t)(groups * nb * kMr) * 4;
  uint8_t* mem = (uint8_t*)scratch.get(xp_bytes + 2 * d_bytes);
  if (!mem) return false;  // the caller's one-row kernels need no memory
  int32_t* xp = (int32_t*)mem;
  float* dx = (float*)(mem + xp_bytes);
  float* sx = (float*)(mem + xp_bytes + d_bytes);
  pack_x(a.xq, a.m, nb, xp, dx, sx);
  alignas(64) int32_t tile[kKc / 2 * kPanelRows];
  alignas(32) float dw[kKc / QK * kPanelRows], mw[kKc / QK * kPanelRows];
  const bool min_term = a.fmt == Format::Q4_1;
  for (int64_t g0 = begin; g0 < end; g0 += kGroup) {
    const int64_t g1 = g0 + kGroup < end ? g0 + kGroup : end;
    for (int64_t b0 = 0; b0 < nb; b0 += kKc / QK) {
      const int nblk = (int)(nb - b0 < kKc / QK ? nb - b0 : kKc / QK);
      for (int64_t p = g0; p < g1; ++p) {
        // The next tile in this order: the group's next panel, or its first at the next chunk.
        const int64_t np = p + 1 < g1 ? p + 1 : g0, nb0 = p + 1 < g1 ? b0 : b0 + kKc / QK;
        // A tile's blocks lie in one K-slice (kKc divides it): its panel's piece of it.
        if (nb0 < nb) {
          const PanelPiece next = L.piece_of(np, nb0);
          prefetch_blocks(a.w + next.offset, next.L, next.b, next.b + (nb0 + kKc / QK < nb ? kKc / QK : nb - nb0));
        }
        const int cols = panel_rows(a.n, p);
        const PanelPiece here = L.piece_of(p, b0);
        fill(a.fmt, a.w + here.offset, here.L, here.b, nblk, tile, dw, mw);
        for (int64_t g = 0; g < groups; ++g) {
          const int mr = (int)(a.m - g * kMr < kMr ? a.m - g * kMr : kMr);
          const int32_t* xg = xp + (g * nb + b0) * 16 * kMr;
          const float* dg = dx + (g * nb + b0) * kMr;
          const float* sg = sx + (g * nb + b0) * kMr;
          float* y = a.y + g * kMr * a.n + p * kPanelRows;
          if (min_term) micro_rows<true>(mr, xg, dg, sg, tile, dw, mw, nblk, y, a.n, cols, b0 > 0);
          else micro_rows<false>(mr, xg, dg, sg, tile, dw, mw, nblk, y, a.n, cols, b0 > 0);
        }
      }
    }
  }
  return true;
}

}  // namespace linly
