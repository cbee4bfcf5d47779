// AMX (TILE, INT8, BF16) kernels: the AVX-512 row with the rows of prompts moved onto
// the tile unit. Compiled with AVX-512 and AMX flags in this unit only and reached solely
// through kernels_amx() after CPUID, XGETBV and the kernel's permission for tile data
// (cpu_features.cpp) say it can run.
//
// Why only prompts: a decode row is one activation row, so a 16-row tile would be 15/16
// empty, and decode is bound by reading the weights anyway. A prompt reuses each weight
// for every row; the AVX-512 folded loop spends 16 vpdpbusd per row, block and panel
// (kernels_avx512.cpp), where one tile instruction does a 16 x 16 x 32 block product.
//
// Two kernels:
//   matmul_f32 (what the decoder's prompts take here, f32_prompts): x·Wᵀ as three bf16
//     tile products, no per-block work (the f32-prompts section below);
//   matmul with int8x2 prompt rows: TDPBSSD on codes and residuals, bit-identical to the
//     AVX-512 prompt kernel, for callers that ask for that product by name.
//
// The int8x2 tile kernel gives the AVX-512 kernel's bits, so a row's result does not
// depend on which of the two ran or on how a batch was cut into tiles:
//   - the integer sums are exact in both: here the weights enter as signed values with
//     the format's offset taken off while unpacking (q - 8, q - z, or q8_0's codes as they
//     are; q4_1 keeps unsigned codes and its minimum term), so T = 254·Σw·qs + Σw·r is the
//     same integer the AVX-512 loop forms with its offsets folded into the residual sum;
//   - the float part is the same expression in the same order: acc += (d·d2)·float(T),
//     then for q4_1 acc += m·(d·s + d2·s2), block after block.
// Rows past the last full 16-row tile, and everything that is not an int8x2 prompt, go
// to the AVX-512 kernels.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "kernels/kernel_table.h"
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

// Row j (elements 4j..4j+3 of each of the 16 weight rows, one byte per lane) of block
// codes `q` (panel.h) whose scale record is `rec`, as the integers the weights multiply:
// q - 8 (q4_0), q - z (q4_gG), q8_0's codes, q4_1's unsigned codes (its minimum is added
// apart). Both tile kernels unpack the panels through it.
template <Format F>
inline __m512i code_row(const uint8_t* q, const uint8_t* rec, int j) {
  if (F == Format::Q8_0) return _mm512_loadu_si512((const void*)(q + j * 64));
  __m512i off = _mm512_setzero_si512();
  if (F == Format::Q4_0) off = _mm512_set1_epi8(8);
  if (q4_group_size(F))
    off = _mm512_mullo_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(rec + 32))),
                             _mm512_set1_epi32(0x01010101));
  const __m512i raw = _mm512_loadu_si512((const void*)(q + (j & 3) * 64));
  return _mm512_sub_epi8(_mm512_and_si512(j < 4 ? raw : _mm512_srli_epi16(raw, 4), _mm512_set1_epi8(0x0f)), off);
}

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
void unpack_panel(const uint8_t* w, const PanelLayout& L, int64_t p, int64_t nb, PanelBlocks& out) {
  out.reserve(nb);
  for (int64_t b = 0; b < nb; ++b) {  // panel p's blocks, through its pieces of every K-slice
    const uint8_t* q = w + L.qs_at(p, b);
    const uint8_t* rec = w + L.record_at(p, b);
    _mm512_store_ps((float*)out.d.data() + b * 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)rec)));
    if (F == Format::Q4_1)
      _mm512_store_ps((float*)out.mn.data() + b * 16, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rec + 32))));
    for (int j = 0; j < 8; ++j) _mm512_store_si512((__m512i*)(out.codes.data() + b * 512) + j, code_row<F>(q, rec, j));
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
  const PanelLayout L = panel_layout(a.fmt, a.n, a.k);
  const int64_t nb = a.k / QK;
  const int64_t x_stride = nb * (int64_t)sizeof(block_q8_act);  // bytes from one row's block to the next row's
  gather_scales(a.xq, a.m, nb, F == Format::Q4_1, ps);
  configure_tiles();
  for (int64_t p = begin; p < end; ++p) {
    unpack_panel<F>(a.w, L, p, nb, pb);
    // GCC's tileloadd asm names no memory operand: keep the unpacked stores before it.
    __asm__ volatile("" ::: "memory");
    const int rows = panel_rows(a.n, p);
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

// ---- f32 prompts: three bf16 tile products (KernelTable::matmul_f32) -------------------
// x = xh + xl and w = wh + wl, each part a bf16 (xh = bf16(x), xl = bf16(x - xh)), and
// x·w ≈ xh·wh + xh·wl + xl·wh: TDPBF16PS multiplies bf16 pairs exactly and accumulates in
// f32, so one tile of sums runs over the whole of K with no per-block work on the vector
// units. The int8x2 tile kernel above must scale every 32-block's integer sums by their
// own d·d2 (tilestored, 16 loads, convert, multiply, FMA per 16 x 16 block), and that
// epilogue took two thirds of its time. Accuracy: w = d·(q - 8) or d·(q - z) has at most
// 15 significant bits, so wh + wl is w exactly; q8_0 (18 bits) and q4_1 (d·q + m) keep 16
// bits of w. Each product is within about 3·2^-18 of x·w, where int8x2 activations are
// within 2^-16 of the block's largest |x| (formats.h). Dense formats keep the f32 tiles.
//
// Tile registers here (a config of its own, loaded on entry):
//   tmm0-tmm3  16 x 16 f32 sums of up to four 16-row activation tiles against one panel
//   tmm4, tmm5  xh and xl of one activation tile for one 32-block: 16 rows x 32 bf16
//   tmm6, tmm7  the panel's wh and wl for that block: 16 k-pairs x 16 rows x 2 bf16
// Four sum tiles share each wh, wl load: per block 2 + 2·R tile loads for 3·R products,
// 0.83 KiB per TDPBF16PS at R = 4. Two sum tiles sharing them took 1 KiB per product, and
// a stand-alone loop reading its operands from L2 at that rate issued one product per 21
// cycles against 17 at 0.83 KiB and 15 with no loads at all.
constexpr TileConfig make_bf16_tile_config() {
  TileConfig c{};
  c.palette_id = 1;
  for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = kTileRows;
  return c;
}
alignas(64) constexpr TileConfig kBf16TileConfig = make_bf16_tile_config();

// (a, b) → wh and wl as k-pair vectors: 32-bit lane r of *hi holds bf16(a[r]) low and
// bf16(b[r]) high (the tile row layout of TDPBF16PS's second operand), *lo the same for
// what that rounding left, a - ah and b - bh (exact in f32). Rounded on the bit pattern
// (+0x8000, then the top 16 bits: to nearest, ties away from zero), so |wl| <= 2^-9·|w|
// like round-to-nearest-even's (truncation doubled the dropped xl·wl term), with integer
// adds and masks instead of vcvtne2ps2bf16 and a word permute.
inline void split_pairs(__m512 a, __m512 b, __m512i* hi, __m512i* lo) {
  const __m512i top = _mm512_set1_epi32((int)0xffff0000u), half = _mm512_set1_epi32(0x8000);
  const __m512i ah = _mm512_and_si512(_mm512_add_epi32(_mm512_castps_si512(a), half), top);
  const __m512i bh = _mm512_and_si512(_mm512_add_epi32(_mm512_castps_si512(b), half), top);
  *hi = _mm512_or_si512(_mm512_srli_epi32(ah, 16), bh);
  const __m512i ra = _mm512_add_epi32(_mm512_castps_si512(_mm512_sub_ps(a, _mm512_castsi512_ps(ah))), half);
  const __m512i rb = _mm512_add_epi32(_mm512_castps_si512(_mm512_sub_ps(b, _mm512_castsi512_ps(bh))), half);
  *lo = _mm512_ternarylogic_epi32(_mm512_srli_epi32(ra, 16), rb, top, 0xF8);  // A | (B & C)
}

// A panel's block b as the tile unit reads it: [2 (wh, wl)][16 k-pairs][16 rows][2] bf16
// (2 KiB) in `out`, k-pairs 2j and 2j+1 from elements 4j..4j+3 of the 16 rows.
// Where panel p's weights are: the panel layout of the integer formats (panel.h), or
// rows 16p.. of a row-major f16 matrix (fewer in its last panel).
struct PanelSource {
  const uint8_t* w;
  PanelLayout L;      // integer formats
  int64_t row_bytes;  // f16
  int64_t n;
  const uint8_t* f16_rows(int64_t p) const { return w + p * kPanelRows * row_bytes; }
  const uint8_t* codes(int64_t p, int64_t b) const { return w + L.qs_at(p, b); }
  const uint8_t* record(int64_t p, int64_t b) const { return w + L.record_at(p, b); }
  int rows(int64_t p) const { return (int)std::min<int64_t>(kPanelRows, n - p * kPanelRows); }
};

// dword c of r[i] -> dword i of r[c]: 16 x 16 32-bit transpose (interleave dwords, then
// qwords within 128-bit lanes, then gather the lanes).
inline void transpose16_epi32(__m512i r[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // b[4i + j], lane L: column 4L + j of rows 4i..4i+3
    b[4 * i] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512i c0 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0x44), c1 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0x44);
    const __m512i c2 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0xEE), c3 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0xEE);
    r[j] = _mm512_shuffle_i32x4(c0, c1, 0x88);
    r[4 + j] = _mm512_shuffle_i32x4(c0, c1, 0xDD);
    r[8 + j] = _mm512_shuffle_i32x4(c2, c3, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(c2, c3, 0xDD);
  }
}

template <Format F>
inline void unpack_block(const PanelSource& src, int64_t p, int64_t b, uint8_t* out) {
  __m512i* hi = (__m512i*)out;
  if constexpr (F == Format::F16) {
    // Row i's block is 16 dwords of f16 pairs (elements 2q, 2q+1): transposed, dword i
    // of vector q is row i's pair q, the tile row layout; f16's 11 significant bits
    // split exactly into wh + wl.
    const uint8_t* base = src.f16_rows(p) + b * QK * 2;
    const int rows = src.rows(p);
    __m512i r[16];
    for (int i = 0; i < 16; ++i)
      r[i] = i < rows ? _mm512_loadu_si512((const void*)(base + i * src.row_bytes)) : _mm512_setzero_si512();
    transpose16_epi32(r);
    for (int q = 0; q < 16; ++q) {
      const __m512 even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(r[q]));
      const __m512 odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(r[q], 16)));
      split_pairs(even, odd, hi + q, hi + 16 + q);
    }
    return;
  }
  const uint8_t* rec = src.record(p, b);
  const uint8_t* q = src.codes(p, b);
  const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)rec));
  // A nibble's value by table lookup (vpermps reads the low 4 bits of each index lane):
  // q - 8 for q4_0, q for q4_1 (then d·q + m) and q4_gG (then d·q - d·z, exact: d·z
  // has at most 15 significant bits, and the FMA rounds once).
  const __m512 lut = F == Format::Q4_0 ? _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8)
                                       : _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512 add = _mm512_setzero_ps();
  if constexpr (F == Format::Q4_1) add = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rec + 32)));
  if constexpr (q4_group_size(F) != 0)
    add = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), d),
                        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(rec + 32)))));
  for (int j = 0; j < 8; ++j) {
    __m512 f[4];  // element 4j+i of the 16 rows, as f32
    if constexpr (F == Format::Q8_0) {
      const __m512i w = _mm512_loadu_si512((const void*)(q + j * 64));
      for (int i = 0; i < 4; ++i)
        f[i] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(w, 24 - 8 * i), 24)));
    } else {
      const __m512i raw = _mm512_loadu_si512((const void*)(q + (j & 3) * 64));
      const int nibble = j < 4 ? 0 : 4;
      for (int i = 0; i < 4; ++i) {
        const __m512 c = _mm512_permutexvar_ps(_mm512_srli_epi32(raw, 8 * i + nibble), lut);
        f[i] = F == Format::Q4_0 ? _mm512_mul_ps(d, c) : _mm512_fmadd_ps(d, c, add);
      }
    }
    for (int h = 0; h < 2; ++h)  // k-pairs 2j and 2j+1
      split_pairs(f[2 * h], f[2 * h + 1], hi + 2 * j + h, hi + 16 + 2 * j + h);
  }
}

// The rows of activation tiles [t0, t1) of x [m, k] as [t1 - t0][k/32][2 (xh, xl)][16
// rows][32] bf16 at `out`; rows past m are zero.
void split_activations(const float* x, int64_t m, int64_t k, int64_t t0, int64_t t1, uint8_t* out) {
  const int64_t nb = k / QK;
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t b = 0; b < nb; ++b)  // block by block: the stores fill 2 KiB in order
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t row = t * kTileRows + r;
        uint8_t* dst = out + (((t - t0) * nb + b) * 2 * kTileRows + r) * 64;
        if (row >= m) {
          _mm512_store_si512(dst, _mm512_setzero_si512());
          _mm512_store_si512(dst + kTileRows * 64, _mm512_setzero_si512());
          continue;
        }
        const __m512 x0 = _mm512_loadu_ps(x + row * k + b * QK), x1 = _mm512_loadu_ps(x + row * k + b * QK + 16);
        const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);  // k order, as the tile row wants
        const __m512 h0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
        const __m512 h1 =
            _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
        _mm512_store_si512(dst, h);
        _mm512_store_si512(dst + kTileRows * 64,
                           (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0)));
      }
}

// The table's prompt-input step (KernelTable::prepare_prompt_input): all of K, so that
// MatmulArgs::xs holds tile t's block b at (t·nb + b)·2 KiB.
int64_t prompt_input_tiles_amx(int64_t m) { return (m + kTileRows - 1) / kTileRows; }
int64_t prompt_input_bytes_amx(int64_t m, int64_t k) { return prompt_input_tiles_amx(m) * (k / QK) * 2048; }
void prepare_prompt_input_amx(const float* x, int64_t m, int64_t k, int64_t t0, int64_t t1, uint8_t* out) {
  split_activations(x, m, k, t0, t1, out + t0 * (k / QK) * 2048);
}

// 16 x 16 sums from `sums` (a tile stored with stride 64) into the y rows and columns
// that exist, and back (the rest zero) for the next K range.
void store_partial(const float* sums, float* y, int64_t ldy, int64_t rows_m, int cols) {
  const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
  for (int64_t r = 0; r < rows_m; ++r) _mm512_mask_storeu_ps(y + r * ldy, mask, _mm512_load_ps(sums + 16 * r));
}
void load_partial(float* sums, const float* y, int64_t ldy, int64_t rows_m, int cols) {
  const __mmask16 mask = (__mmask16)((1u << cols) - 1u);
  for (int64_t r = 0; r < kTileRows; ++r)
    _mm512_store_ps(sums + 16 * r, r < rows_m ? _mm512_maskz_loadu_ps(mask, y + r * ldy) : _mm512_setzero_ps());
}

// Activation bytes (xh and xl) per K range: the range's split activations are read once
// per panel, so they should stay in L2 (2 MiB per core on the machines with AMX so far);
// a 128-row prompt against K = 5632 in one range (2.8 MiB) ran at 0.55x the speed per
// element of K = 2048 (1 MiB).
constexpr int64_t kActivationRangeBytes = 1 << 20;
// At most this many blocks per K range, so the two unpacked panels (2 KiB per block each)
// stay within 512 KiB of L2 when the prompt is short.
constexpr int64_t kMaxRangeBlocks = 128;
// Activation tiles that share one load of each block's weight tiles (tmm0-tmm3).
constexpr int64_t kGroupTiles = 4;

// One 16-row tile's sums over the current K range: started from zero on the first range,
// from y on later ones (an f32 store and load are exact, so the sums' sequence of
// roundings does not depend on where K was cut).
#define LINLY_TILE_START(C, y, ldy, rows, cols, first, scratch)                   \
  do {                                                                              \
    if (first) {                                                                    \
      _tile_zero(C);                                                                \
    } else if ((rows) == kTileRows && (cols) == kPanelRows) {                       \
      _tile_loadd(C, y, (ldy) * (int64_t)sizeof(float));                            \
    } else {                                                                        \
      load_partial(scratch, y, ldy, rows, cols);                                    \
      _tile_loadd(C, scratch, 64);                                                  \
    }                                                                               \
  } while (0)
#define LINLY_TILE_FINISH(C, y, ldy, rows, cols, scratch)                         \
  do {                                                                              \
    if ((rows) == kTileRows && (cols) == kPanelRows) {                              \
      _tile_stored(C, y, (ldy) * (int64_t)sizeof(float));                           \
    } else {                                                                        \
      _tile_stored(C, scratch, 64);                                                 \
      store_partial(scratch, y, ldy, rows, cols);                                   \
    }                                                                               \
  } while (0)

// The next panel's unpacking, spread over this panel's tile loop: one block after the
// tile instructions of every `every`-th block step (one step per group of activation
// tiles, so a panel's blocks are all unpacked by its last group). On the one AMX machine
// measured, the vector work and the tile unit barely overlap (a stand-alone loop of both
// took the sum of their times), but spread like this the kernel still ran 8.4 ms against
// 9.3 with each panel unpacked whole after the previous one (5632 x 2048, M = 128).
struct NextPanel {
  int64_t p;  // -1 on the last panel
  uint8_t* out;
  int64_t a0, blocks, every, done, step;  // a block after every `every`-th step
};

template <Format F>
inline void unpack_step(const PanelSource& src, NextPanel& nx) {
  if (nx.p < 0 || ++nx.step % nx.every != 0 || nx.done == nx.blocks) return;
  unpack_block<F>(src, nx.p, nx.a0 + nx.done, nx.out + nx.done * 2048);
  ++nx.done;
}

// One activation tile (xh, xl at xt, xt + 1 KiB) times the block's wh, wl (tmm6, tmm7)
// into sum tile C.
#define LINLY_ROW_TILE(C, xt)          \
  do {                                 \
    _tile_loadd(4, xt, 64);            \
    _tile_loadd(5, (xt) + 1024, 64);   \
    _tile_dpbf16ps(C, 4, 6);           \
    _tile_dpbf16ps(C, 4, 7);           \
    _tile_dpbf16ps(C, 5, 6);           \
  } while (0)

// The same with x rounded to bf16 (Activations::Bf16Prompt): xh times wh and wl.
#define LINLY_ROW_TILE_XH(C, xt)       \
  do {                                 \
    _tile_loadd(4, xt, 64);            \
    _tile_dpbf16ps(C, 4, 6);           \
    _tile_dpbf16ps(C, 4, 7);           \
  } while (0)

// Whichever of the two a kernel instance takes (SplitX in scope).
#define LINLY_ROW(C, xt)                                 \
  do {                                                   \
    if constexpr (SplitX) LINLY_ROW_TILE(C, xt);         \
    else LINLY_ROW_TILE_XH(C, xt);                       \
  } while (0)

// Activation tiles [t0, t0 + R) (R <= 4) against one panel over the current K range:
// the panel's wh, wl of each block are loaded once for all R tiles, which share them.
// w: the panel's unpacked blocks of the range; x: the range's split activations.
template <Format F, int R, bool SplitX>
void tile_group(const MatmulArgs& a, const PanelSource& src, const uint8_t* w, const uint8_t* x, int64_t x_stride,
                int64_t kn, int64_t t0, int64_t p, int cols, bool first, NextPanel& nx) {
  alignas(64) float scratch[R][256];
  float* y[R];
  int64_t rows[R];
  for (int r = 0; r < R; ++r) {
    y[r] = a.y + (t0 + r) * kTileRows * a.n + p * kPanelRows;
    rows[r] = std::min<int64_t>(kTileRows, a.m - (t0 + r) * kTileRows);
  }
  const uint8_t* xt = x + t0 * x_stride;  // tile t0 + r, block j: xt + r·x_stride + j·2 KiB
  LINLY_TILE_START(0, y[0], a.n, rows[0], cols, first, scratch[0]);
  if constexpr (R > 1) LINLY_TILE_START(1, y[1], a.n, rows[1], cols, first, scratch[1]);
  if constexpr (R > 2) LINLY_TILE_START(2, y[2], a.n, rows[2], cols, first, scratch[2]);
  if constexpr (R > 3) LINLY_TILE_START(3, y[3], a.n, rows[3], cols, first, scratch[3]);
  for (int64_t j = 0; j < kn; ++j) {  // the hot loop: three (two) TDPBF16PS per activation tile and block
    _tile_loadd(6, w + j * 2048, 64);
    _tile_loadd(7, w + j * 2048 + 1024, 64);
    LINLY_ROW(0, xt + j * 2048);
    if constexpr (R > 1) LINLY_ROW(1, xt + x_stride + j * 2048);
    if constexpr (R > 2) LINLY_ROW(2, xt + 2 * x_stride + j * 2048);
    if constexpr (R > 3) LINLY_ROW(3, xt + 3 * x_stride + j * 2048);
    unpack_step<F>(src, nx);
  }
  LINLY_TILE_FINISH(0, y[0], a.n, rows[0], cols, scratch[0]);
  if constexpr (R > 1) LINLY_TILE_FINISH(1, y[1], a.n, rows[1], cols, scratch[1]);
  if constexpr (R > 2) LINLY_TILE_FINISH(2, y[2], a.n, rows[2], cols, scratch[2]);
  if constexpr (R > 3) LINLY_TILE_FINISH(3, y[3], a.n, rows[3], cols, scratch[3]);
}

template <Format F, bool SplitX>
void f32_prompt_tiles(const MatmulArgs& a, int64_t begin, int64_t end) {
  thread_local AlignedBuffer wbuf;
  const PanelSource src{a.w, F == Format::F16 ? PanelLayout{} : panel_layout(a.fmt, a.n, a.k), a.k * 2, a.n};
  const int64_t nb = a.k / QK;
  const int64_t tiles = (a.m + kTileRows - 1) / kTileRows, groups = (tiles + kGroupTiles - 1) / kGroupTiles;
  const int64_t range = std::min<int64_t>(kMaxRangeBlocks, std::max<int64_t>(4, kActivationRangeBytes / (tiles * 2048)));
  if (wbuf.size() < 2 * range * 2048) wbuf = AlignedBuffer(2 * range * 2048);
  _tile_loadconfig(&kBf16TileConfig);
  for (int64_t a0 = 0; a0 < nb; a0 += range) {
    const int64_t a1 = std::min(nb, a0 + range), kn = a1 - a0;
    // The range's activations, from the table's prompt-input step (its callers run it).
    const uint8_t* x = a.xs + a0 * 2048;
    const int64_t x_stride = nb * 2048;  // from one tile's blocks to the next tile's
    for (int64_t b = 0; b < kn; ++b) unpack_block<F>(src, begin, a0 + b, wbuf.data() + b * 2048);
    for (int64_t p = begin; p < end; ++p) {
      __asm__ volatile("" ::: "memory");  // tileloadd's asm names no memory operand
      const uint8_t* cur = wbuf.data() + ((p - begin) & 1) * range * 2048;
      NextPanel nx{p + 1 < end ? p + 1 : -1,
                   wbuf.data() + ((p - begin + 1) & 1) * range * 2048, a0, kn, groups, 0, 0};
      const int cols = panel_rows(a.n, p);
      for (int64_t t = 0; t < tiles; t += kGroupTiles) {
        switch (std::min<int64_t>(kGroupTiles, tiles - t)) {
          case 4: tile_group<F, 4, SplitX>(a, src, cur, x, x_stride, kn, t, p, cols, a0 == 0, nx); break;
          case 3: tile_group<F, 3, SplitX>(a, src, cur, x, x_stride, kn, t, p, cols, a0 == 0, nx); break;
          case 2: tile_group<F, 2, SplitX>(a, src, cur, x, x_stride, kn, t, p, cols, a0 == 0, nx); break;
          default: tile_group<F, 1, SplitX>(a, src, cur, x, x_stride, kn, t, p, cols, a0 == 0, nx); break;
        }
      }
    }
  }
  _tile_release();
}

template <Format F>
void f32_prompt_formats(const MatmulArgs& a, int64_t begin, int64_t end) {
  if (a.x_bf16) f32_prompt_tiles<F, false>(a, begin, end);
  else f32_prompt_tiles<F, true>(a, begin, end);
}

// Panels of integer formats read args.xs (prepare_prompt_input), which PackedMatrix
// always sets for them on this table.
void matmul_f32_amx(const MatmulArgs& a, int64_t begin, int64_t end) {
  if (a.fmt == Format::F16 && a.xs && !a.panels) {
    // Rows of a dense f16 matrix, in whole 16-row panels (PackedMatrix hands out
    // panel-aligned ranges when the table has prepare_prompt_input).
    f32_prompt_formats<Format::F16>(a, begin / kPanelRows, (end + kPanelRows - 1) / kPanelRows);
    return;
  }
  if (!a.panels || !a.xs) { gemm_tiles_avx512(a, begin, end); return; }
  switch (a.fmt) {
    case Format::Q4_0: f32_prompt_formats<Format::Q4_0>(a, begin, end); return;
    case Format::Q4_1: f32_prompt_formats<Format::Q4_1>(a, begin, end); return;
    case Format::Q8_0: f32_prompt_formats<Format::Q8_0>(a, begin, end); return;
    case Format::Q4_G32: f32_prompt_formats<Format::Q4_G32>(a, begin, end); return;
    case Format::Q4_G64: f32_prompt_formats<Format::Q4_G64>(a, begin, end); return;
    case Format::Q4_G128: f32_prompt_formats<Format::Q4_G128>(a, begin, end); return;
    default: gemm_tiles_avx512(a, begin, end); return;
  }
}

}  // namespace

const KernelTable& kernels_amx() {
  static const KernelTable t = [] {
    KernelTable k = kernels_avx512();
    k.isa = Isa::Amx;
    k.name = "amx";
    k.matmul = matmul_amx;
    k.matmul_f32 = matmul_f32_amx;
    k.f32_prompts = true;  // the bf16x3 tiles beat the int8x2 tiles (test_bench_prompt.py)
    k.f16_prompt_input = true;  // f16 prompts on the tiles too (f16 = wh + wl exactly)
    k.bf16_prompts = true;  // two tile products: 1.8-2x the AVX-512 int8 prompt loop
    k.prompt_input_tiles = prompt_input_tiles_amx;
    k.prompt_input_bytes = prompt_input_bytes_amx;
    k.prepare_prompt_input = prepare_prompt_input_amx;
    return k;
  }();
  return t;
}

}  // namespace linly
