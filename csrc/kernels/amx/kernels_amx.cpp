// AMX (TILE + INT8) kernels: the AVX-512 row with the int8x2 prompt product moved onto
// the tile unit. Compiled with AVX-512 and AMX flags in this unit only and reached solely
// through kernels_amx() after CPUID, XGETBV and the kernel's permission for tile data
// (cpu_features.cpp) say it can run.
//
// Why only prompts: a decode row is one activation row, so a 16-row tile would be 15/16
// empty, and decode is bound by reading the weights anyway. A prompt reuses each weight
// for every row, and the AVX-512 folded loop spends 16 vpdpbusd per row, block and panel
// (kernels_avx512.cpp); here one TDPBSSD does a whole 16 x 16 x 32 block product, twice
// (codes and residuals), and the vector units are left with the per-block scaling.
//
// The result is bit-identical to the AVX-512 prompt kernel, so a sequence's logits do
// not depend on which of the two ran or on how a batch was cut into tiles:
//   - the integer sums are exact in both: here the weights enter as signed values with
//     the format's offset taken off while unpacking (q - 8, q - z, or q8_0's codes as they
//     are; q4_1 keeps unsigned codes and its minimum term), so T = 254·Σw·qs + Σw·r is the
//     same integer the AVX-512 loop forms with its offsets folded into the residual sum;
//   - the float part is the same expression in the same order: acc += (d·d2)·float(T),
//     then for q4_1 acc += m·(d·s + d2·s2), block after block.
// Rows past the last full 16-row tile, and everything that is not an int8x2 prompt, go
// to the AVX-512 kernels.
#include <immintrin.h>

#include <vector>

#include "kernels/kernel_table.h"
#include "quant/fp16.h"
#include "quant/panel.h"
#include "runtime/aligned_buffer.h"

namespace linly {
namespace {

constexpr int kTileRows = 16;  // activation rows per tile, and weight rows per panel

// LDTILECFG's 64-byte operand (palette 1).
struct TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of each tile
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Tile registers (literal numbers: GCC's tile intrinsics paste them into the asm).
//   tmm0, tmm1  16 x 16 int32 sums Σw·qs, Σw·r of even blocks
//   tmm2, tmm3  the same for odd blocks, so block b+1's dot products can start while
//               block b's sums are still being stored and scaled
//   tmm4, tmm5  16 activation rows x 32 int8: codes, residuals
//   tmm6        8 x 64 int8: one block of the panel's 16 weight rows
constexpr TileConfig make_tile_config() {
  TileConfig c{};
  c.palette_id = 1;
  for (int t : {0, 1, 2, 3}) c.colsb[t] = 64, c.rows[t] = kTileRows;
  for (int t : {4, 5}) c.colsb[t] = QK, c.rows[t] = kTileRows;
  c.colsb[6] = 64, c.rows[6] = QK / 4;  // row j: 4 consecutive k of each of the 16 weight rows
  return c;
}
// In static storage, not built on the stack: GCC 12's _tile_loadconfig tells the compiler
// it reads 8 bytes, so the stores of a stack copy's other 56 bytes were dropped as dead.
alignas(64) constexpr TileConfig kTileConfig = make_tile_config();

void configure_tiles() { _tile_loadconfig(&kTileConfig); }

// One panel's weights as the tile unit reads them, for all of K: per 32-block eight rows
// of 64 signed (unsigned for q4_1) bytes, the panel's qs[v][r][i] order (panel.h) with
// the nibbles split (rows 0-3 low nibbles, rows 4-7 high nibbles: elements 4v+i and
// 16+4v+i) and the offset taken off; plus each block's 16 scales (and q4_1's minima) as
// f32. Unpacked once per panel, read by every 16-row tile of the prompt.
struct PanelBlocks {
  AlignedBuffer codes;  // [nb][8][64] int8
  AlignedBuffer d, mn;  // [nb][16] f32
  void reserve(int64_t nb) {
    if (codes.size() >= nb * 512) return;
    codes = AlignedBuffer(nb * 512), d = AlignedBuffer(nb * 64), mn = AlignedBuffer(nb * 64);
  }
  const uint8_t* block(int64_t b) const { return codes.data() + b * 512; }
  const float* scales(int64_t b) const { return (const float*)d.data() + b * 16; }
  const float* minima(int64_t b) const { return (const float*)mn.data() + b * 16; }
};

template <Format F>
void unpack_panel(const uint8_t* panel, const PanelLayout& L, int64_t nb, PanelBlocks& out) {
  constexpr int G = q4_group_size(F);
  constexpr int SUB = panel_group_blocks(F), CB = panel_chunk_blocks(F);
  constexpr int RB = panel_record_bytes(F), BB = panel_block_bytes(F);
  out.reserve(nb);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (int64_t c0 = 0; c0 < nb; c0 += CB) {
    const uint8_t* chunk = panel + c0 / CB * L.chunk_bytes;
    const int nbc = L.blocks_in_chunk(c0);
    const uint8_t* records = chunk + nbc * BB;
    for (int bi = 0; bi < nbc; ++bi) {
      const int64_t b = c0 + bi;
      const uint8_t* q = chunk + bi * BB;
      const uint8_t* rec = records + bi / SUB * RB;
      __m512i* w = (__m512i*)(out.codes.data() + b * 512);
      _mm512_store_ps((float*)out.d.data() + b * 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)rec)));
      if (F == Format::Q8_0) {
        for (int v = 0; v < 8; ++v) _mm512_store_si512(w + v, _mm512_loadu_si512((const void*)(q + v * 64)));
        continue;
      }
      __m512i off = _mm512_setzero_si512();  // subtracted from every code of lane r's row
      if (F == Format::Q4_0) off = _mm512_set1_epi8(8);
      if (G) off = _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(rec + 32))),
                                      _mm512_set1_epi32(0x01010101));
      if (F == Format::Q4_1)
        _mm512_store_ps((float*)out.mn.data() + b * 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rec + 32))));
      for (int v = 0; v < 4; ++v) {
        const __m512i raw = _mm512_loadu_si512((const void*)(q + v * 64));
        _mm512_store_si512(w + v, _mm512_sub_epi8(_mm512_and_si512(raw, low4), off));
        _mm512_store_si512(w + 4 + v, _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(raw, 4), low4), off));
      }
    }
  }
}

// Per call and thread: each activation block's residual scale d2 and, for q4_1, its
// d·s + d2·s2 (≈ Σx), as [nb][m] so a tile's 16 rows are adjacent.
struct PromptScales {
  std::vector<float> d2, dsum;
};

void gather_scales(const block_q8_act* xq, int64_t m, int64_t nb, bool with_sum, PromptScales& out) {
  if (out.d2.size() < (size_t)(m * nb)) out.d2.resize((size_t)(m * nb)), out.dsum.resize((size_t)(m * nb));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t b = 0; b < nb; ++b) {
      const block_q8_act& a = xq[i * nb + b];
      out.d2[(size_t)(b * m + i)] = a.d2;
      if (with_sum) out.dsum[(size_t)(b * m + i)] = a.d * (float)a.s + a.d2 * (float)a.s2;  // as prompt_headers
    }
}

inline __m512i times254(__m512i x) {  // one vpmulld, as in kernels_avx512.cpp
  __m512i k = _mm512_set1_epi32(254);
  __asm__("" : "+v"(k));
  return _mm512_mullo_epi32(x, k);
}

// Both dot products of one block into sum tiles S1/S2 and out to sums ([2][16][16]).
#define LINLY_TILE_SUMS(S1, S2, SIGNED_B, sums)                \
  do {                                                         \
    _tile_zero(S1);                                            \
    _tile_zero(S2);                                            \
    if (SIGNED_B) {                                            \
      _tile_dpbssd(S1, 4, 6);                                  \
      _tile_dpbssd(S2, 5, 6);                                  \
    } else {                                                   \
      _tile_dpbsud(S1, 4, 6);                                  \
      _tile_dpbsud(S2, 5, 6);                                  \
    }                                                          \
    _tile_stored(S1, sums, 64);                                \
    _tile_stored(S2, (sums) + 256, 64);                        \
  } while (0)

// Block b of one 16-row tile: the sums, then acc[r] += (d·d2[r])·float(254·S1[r] + S2[r])
// (+ m·dsum[r] for q4_1).
template <Format F, bool Odd>
inline void tile_block(const block_q8_act* x0, int64_t x_stride, const PanelBlocks& pb, int64_t b,
                       const float* d2, const float* dsum, int32_t* sums, __m512* acc) {
  _tile_loadd(4, x0[b].qs, x_stride);
  _tile_loadd(5, x0[b].r, x_stride);
  _tile_loadd(6, pb.block(b), 64);
  constexpr bool kSignedB = F != Format::Q4_1;  // q4_1 keeps its unsigned codes
  if (Odd) LINLY_TILE_SUMS(2, 3, kSignedB, sums);
  else LINLY_TILE_SUMS(0, 1, kSignedB, sums);
  const __m512 d = _mm512_load_ps(pb.scales(b));
  const __m512 mn = F == Format::Q4_1 ? _mm512_load_ps(pb.minima(b)) : _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int r = 0; r < kTileRows; ++r) {
    const __m512i t = _mm512_add_epi32(times254(_mm512_load_si512(sums + 16 * r)), _mm512_load_si512(sums + 256 + 16 * r));
    acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(d2[r])), _mm512_cvtepi32_ps(t), acc[r]);
    if (F == Format::Q4_1) acc[r] = _mm512_fmadd_ps(mn, _mm512_set1_ps(dsum[r]), acc[r]);
  }
}

// Rows [0, tiles·16) of the prompt against panels [begin, end).
template <Format F>
void prompt_tiles(const MatmulArgs& a, int64_t begin, int64_t end, int64_t tiles) {
  thread_local PanelBlocks pb;
  thread_local PromptScales ps;
  alignas(64) int32_t sums[2][2][256];  // per parity: S1 then S2, 16 x 16 each
  const PanelLayout L = panel_layout(a.fmt, a.k);
  const int64_t nb = a.k / QK;
  const int64_t x_stride = nb * (int64_t)sizeof(block_q8_act);  // bytes from one row's block to the next row's
  gather_scales(a.xq, a.m, nb, F == Format::Q4_1, ps);
  configure_tiles();
  for (int64_t p = begin; p < end; ++p) {
    unpack_panel<F>(a.w + p * L.panel_bytes, L, nb, pb);
    // GCC's tileloadd asm names no memory operand: keep the unpacked stores before it.
    __asm__ volatile("" ::: "memory");
    const int rows = (int)(a.n - p * kPanelRows < kPanelRows ? a.n - p * kPanelRows : kPanelRows);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t m0 = t * kTileRows;
      const block_q8_act* x0 = a.xq + m0 * nb;
      __m512 acc[kTileRows];
      for (int r = 0; r < kTileRows; ++r) acc[r] = _mm512_setzero_ps();
      int64_t b = 0;
      for (; b + 2 <= nb; b += 2) {
        tile_block<F, false>(x0, x_stride, pb, b, &ps.d2[(size_t)(b * a.m + m0)],
                                  &ps.dsum[(size_t)(b * a.m + m0)], sums[0][0], acc);
        tile_block<F, true>(x0, x_stride, pb, b + 1, &ps.d2[(size_t)((b + 1) * a.m + m0)],
                                  &ps.dsum[(size_t)((b + 1) * a.m + m0)], sums[1][0], acc);
      }
      if (b < nb)
        tile_block<F, false>(x0, x_stride, pb, b, &ps.d2[(size_t)(b * a.m + m0)],
                                  &ps.dsum[(size_t)(b * a.m + m0)], sums[0][0], acc);
      const __mmask16 mask = (__mmask16)((1u << rows) - 1u);
      float* y = a.y + m0 * a.n + p * kPanelRows;
      for (int r = 0; r < kTileRows; ++r) _mm512_mask_storeu_ps(y + r * a.n, mask, acc[r]);
    }
  }
  _tile_release();  // leave no tile state for context switches to save
}

void matmul_amx(const MatmulArgs& a, int64_t begin, int64_t end) {
  const int64_t tiles = a.precise && a.prompt && a.panels ? a.m / kTileRows : 0;
  if (tiles == 0) { kernels_avx512().matmul(a, begin, end); return; }
  switch (a.fmt) {
    case Format::Q4_0: prompt_tiles<Format::Q4_0>(a, begin, end, tiles); break;
    case Format::Q4_1: prompt_tiles<Format::Q4_1>(a, begin, end, tiles); break;
    case Format::Q8_0: prompt_tiles<Format::Q8_0>(a, begin, end, tiles); break;
    case Format::Q4_G32: prompt_tiles<Format::Q4_G32>(a, begin, end, tiles); break;
    case Format::Q4_G64: prompt_tiles<Format::Q4_G64>(a, begin, end, tiles); break;
    case Format::Q4_G128: prompt_tiles<Format::Q4_G128>(a, begin, end, tiles); break;
    default: kernels_avx512().matmul(a, begin, end); return;
  }
  if (a.m == tiles * kTileRows) return;
  MatmulArgs rest = a;  // the last m % 16 rows: the AVX-512 prompt loop, same bits
  rest.m = a.m - tiles * kTileRows;
  rest.xq = a.xq + tiles * kTileRows * (a.k / QK);
  rest.y = a.y + tiles * kTileRows * a.n;
  kernels_avx512().matmul(rest, begin, end);
}

}  // namespace

const KernelTable& kernels_amx() {
  static const KernelTable t = [] {
    KernelTable k = kernels_avx512();
    k.isa = Isa::Amx;
    k.name = "amx";
    k.matmul = matmul_amx;
    return k;
  }();
  return t;
}

}  // namespace linly
