// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c in this unit only;
// reached solely through kernels_avx2() after CPUID says the CPU has them.
// Every function here is in an anonymous namespace (see fp16.h on why).
#include <immintrin.h>

#include <math.h>  // C header: no inline C++ wrappers compiled with AVX2 flags to leak out (see fp16.h)

#include "kernels/avx2/dense_load_avx2.h"
#include "kernels/kernel_table.h"
#include "quant/fp16.h"
#include "quant/matmul_ref.h"
#include "quant/panel.h"
#include "quant/quantize.h"

namespace linly {
namespace {

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

inline float hsum_f32(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Twin of round_act_f16_ref: the range check on the magnitude bits, as the reference.
bool round_act_f16_avx2(const float* x, uint16_t* y, int64_t k) {
  const __m256i abs_bits = _mm256_set1_epi32(0x7fffffff);
  __m256i mx = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(x + i));
    mx = _mm256_max_epu32(mx, _mm256_and_si256(v, abs_bits));
    _mm_storeu_si128((__m128i*)(y + i), _mm256_cvtps_ph(_mm256_castsi256_ps(v), _MM_FROUND_TO_NEAREST_INT));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256((__m256i*)lanes, mx);
  uint32_t amax_bits = 0;
  for (uint32_t l : lanes) amax_bits = l > amax_bits ? l : amax_bits;
  if (amax_bits >= 0x477ff000u) return false;
  return round_act_f16_ref(x + i, y + i, k - i);  // the tail, under the same rule
}

// Twin of quantize_row_act_ref; must produce identical bytes (same ops, same rounding).
void quantize_act_avx2(const float* x, block_q8_act* y, int64_t k) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < k / QK; ++b, x += QK) {
    const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
    const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, abs_mask), _mm256_and_ps(v1, abs_mask)),
                              _mm256_max_ps(_mm256_and_ps(v2, abs_mask), _mm256_and_ps(v3, abs_mask)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f;
    const float d2 = d / 254.0f;
    const __m256 id = _mm256_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    const __m256 id2 = _mm256_set1_ps(d2 != 0.0f ? 1.0f / d2 : 0.0f);
    const __m256 vd = _mm256_set1_ps(d);
    const __m256i lim = _mm256_set1_epi32(127), nlim = _mm256_set1_epi32(-127);
    const __m256 v[4] = {v0, v1, v2, v3};
    __m256i q[4], r[4];
    for (int i = 0; i < 4; ++i) {
      q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id));  // MXCSR default: nearest-even
      // Residual, with the same separate multiply and subtract as the reference.
      const __m256 e = _mm256_sub_ps(v[i], _mm256_mul_ps(vd, _mm256_cvtepi32_ps(q[i])));
      r[i] = _mm256_max_epi32(nlim, _mm256_min_epi32(lim, _mm256_cvtps_epi32(_mm256_mul_ps(e, id2))));
    }
    y[b].d = d;
    y[b].d2 = d2;
    y[b].s = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    y[b].s2 = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3])));
    // packs work within 128-bit lanes; one dword permute restores element order.
    const __m256i s8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i*)y[b].qs, _mm256_permutevar8x32_epi32(s8, order));
    const __m256i r8 = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    _mm256_storeu_si256((__m256i*)y[b].r, _mm256_permutevar8x32_epi32(r8, order));
  }
}

inline void store_rows(float* y, __m256 v, int rows) {  // rows: how many of the 8 lanes exist
  if (rows >= 8) { _mm256_storeu_ps(y, v); return; }
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  for (int r = 0; r < rows; ++r) y[r] = t[r];
}
// A panel's sums so far (rows ≤ 0: none): zero at the first K-slice, the earlier slices'
// result after it (the FMA chain then runs through y exactly as in one register).
inline __m256 start_rows(const float* y, int rows, bool add) {
  if (!add || rows <= 0) return _mm256_setzero_ps();
  if (rows >= 8) return _mm256_loadu_ps(y);
  alignas(32) float t[8] = {};
  for (int r = 0; r < rows; ++r) t[r] = y[r];
  return _mm256_load_ps(t);
}

// One core's hardware prefetcher alone does not keep enough lines in flight to reach
// the memory bandwidth while the ALUs unpack nibbles; asking for the lines a few blocks
// ahead does. Reading past the panel's end only touches the next panel (or is dropped).
// Into L2, 2 KiB ahead (about one core's bandwidth × DRAM latency), for the panels and the
// dense rows alike. This table runs on CPUs without AVX-512; on the AVX2-only Zen 3, in
// test_bench_matmul.py at M = 1 over six shapes, two runs each, 2 KiB read 3-6 points of
// the measured bandwidth more than 8 KiB for q4_0, q4_1 and q8_0 at 1 and 2 threads
// (q4_1 2 threads 89-92 % against 86-88 %), and 1 and 4 KiB no better than 2 (session 19).
// Zen 4 under LINLY_ISA=avx2 had favoured 8 KiB over 4 KiB by 4 % (session 13).
// A group format's chunk is 1-4 KiB of codes and then their records, which the chunk's
// first block needs: 2 KiB ahead, each q4_g128 chunk began with a DRAM miss (GEMV on one
// thread: 57-63 % of the read bandwidth). Those formats read a chunk plus 2 KiB ahead:
// q4_g128 86-87 %, q4_g64 83-86 % (Zen 3, session 20; a separate prefetch of the next
// chunk's records instead reached 70-79 %).
constexpr int kPrefetchBytes = 2048;
template <int D = kPrefetchBytes>
inline void prefetch_ahead(const uint8_t* q, int block_bytes) {
  for (int o = 0; o < block_bytes; o += 64) _mm_prefetch((const char*)(q + D + o), _MM_HINT_T1);
}

// GCC reassociates a block's integer sums into a tree over all its products and spills
// them to the stack (20+ ymm stores and reloads per block in the int8x2 q4 kernel, seen in
// perf annotate); an empty asm on the running sum pins it to a register, so each sum stays
// one dependency chain. Integer addition: the result is the same either way.
inline void pin(__m256i& v) { __asm__("" : "+x"(v)); }

// Precise mode's activation block is x ≈ d·q + d2·r with d2 = d/254 (to an ulp), so
// x ≈ d2·(254·q + r): one int32 per weight row holds 254·(codes·q) + codes·r exactly
// (|254·q + r| ≤ 32385), and a block costs one convert and one FMA instead of two of
// each. act_scale is the float value of one integer unit, act_sum the block's Σx in units,
// act_total that Σx as a float (the term of a min or zero point).
template <bool HI> inline float act_scale(const block_q8_act& a) { return HI ? a.d2 : a.d; }
template <bool HI> inline int32_t act_sum(const block_q8_act& a) { return HI ? 254 * a.s + a.s2 : a.s; }
template <bool HI> inline float act_total(const block_q8_act& a) { return act_scale<HI>(a) * (float)act_sum<HI>(a); }

// One 16-row panel of a 4-bit format against MT activation rows. The hot loop of
// decode: every weight byte of the model passes through here once per token.
// Each half (8 rows) is one ymm of 8 int32 lanes, one lane per weight row.
// Group formats subtract their zero points once per group, in float, from Σ scale·sum
// over the group's blocks: per block that leaves the codes' dot alone (the per-block
// integer zero term, a vpmulld and a subtract per row half, was a third of the q4_g128
// loop's samples in perf, which ran at 20.6 GB/s from L3 on Zen 3 against 21.6 for q4_0).
template <Format F, int MT, bool HI>
void q4_panel(const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
              float* const* ys, int rows, bool add) {
  constexpr int G = q4_group_size(F);
  constexpr int SUB = panel_group_blocks(F), CB = panel_chunk_blocks(F);  // panel.h
  constexpr int RB = panel_record_bytes(F), PER = panel_chunk_bytes(F) / CB;
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1), k254 = _mm256_set1_epi16(254);
  __m256 acc[2][MT];
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
    for (int m = 0; m < MT; ++m) acc[h][m] = start_rows(ys[m] + 8 * h, rows - 8 * h, add);

  for (int64_t c0 = 0; c0 < nb; c0 += CB) {  // chunks: CB blocks' codes, then their records
    const uint8_t* chunk = panel + c0 / CB * L.chunk_bytes;
    const int nbc = L.blocks_in_chunk(c0);  // a multiple of SUB: K is a multiple of G
    for (int g0 = 0; g0 < nbc; g0 += SUB) {  // groups sharing one scale record
      const uint8_t* rec = chunk + nbc * 256 + g0 / SUB * RB;
      const __m256 d[2] = {_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)rec)),
                           _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rec + 16)))};
      float zsum[MT] = {};  // G: Σ act_total over the group's blocks
      // Not unrolled: GCC then gathered the group's 20 prefetches into one burst at its
      // start, and q4_g128 read 71-78 % of the bandwidth against 78-88 % kept per block.
#pragma GCC unroll 1
      for (int j = 0; j < SUB; ++j) {
        const int bi = g0 + j;
        const int64_t b = c0 + bi;
        const uint8_t* q = chunk + bi * 256;
        prefetch_ahead<G ? panel_chunk_bytes(F) + kPrefetchBytes : kPrefetchBytes>(chunk + bi * PER, PER);
        // Both halves of each 64-byte line in one pass: the block is read line by line, in
        // order, and each activation broadcast feeds both halves.
        __m256i ps[2][MT], ps2[2][MT];  // ps2: the activation residual's dot (HI only)
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
          for (int m = 0; m < MT; ++m) ps[h][m] = ps2[h][m] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
#pragma GCC unroll 2
          for (int h = 0; h < 2; ++h) {
            const __m256i raw = _mm256_loadu_si256((const __m256i*)(q + v * 64 + h * 32));
            const __m256i lo = _mm256_and_si256(raw, low4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low4);
#pragma GCC unroll 4
            for (int m = 0; m < MT; ++m) {
              const int32_t* xw = (const int32_t*)xs[m][b].qs;
              // u8 code × s8 activation: |pair sum| ≤ 2·15·127, eight of them fit in int16.
              ps[h][m] = _mm256_add_epi16(ps[h][m], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xw[v])));
              ps[h][m] = _mm256_add_epi16(ps[h][m], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xw[4 + v])));
              pin(ps[h][m]);
              if (HI) {
                const int32_t* rw = (const int32_t*)xs[m][b].r;
                ps2[h][m] = _mm256_add_epi16(ps2[h][m], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(rw[v])));
                ps2[h][m] = _mm256_add_epi16(ps2[h][m], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(rw[4 + v])));
                pin(ps2[h][m]);
              }
            }
          }
        }
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
#pragma GCC unroll 4
          for (int m = 0; m < MT; ++m) {
            const block_q8_act& a = xs[m][b];
            // 254·|Σ ps| ≤ 254·2·30480 per lane: int32.
            __m256i isum = HI ? _mm256_add_epi32(_mm256_madd_epi16(ps[h][m], k254), _mm256_madd_epi16(ps2[h][m], ones))
                              : _mm256_madd_epi16(ps[h][m], ones);
            if (F == Format::Q4_0) isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(8 * act_sum<HI>(a)));
            acc[h][m] = _mm256_fmadd_ps(_mm256_mul_ps(d[h], _mm256_set1_ps(act_scale<HI>(a))),
                                        _mm256_cvtepi32_ps(isum), acc[h][m]);
            if (F == Format::Q4_1) {
              const __m256 mn = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(rec + 32 + h * 16)));
              acc[h][m] = _mm256_fmadd_ps(mn, _mm256_set1_ps(act_total<HI>(a)), acc[h][m]);
            }
          }
        }
        if (G)
#pragma GCC unroll 4
          for (int m = 0; m < MT; ++m) zsum[m] += act_total<HI>(xs[m][b]);
      }
      if (G) {
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m256 z = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(rec + 32 + h * 8))));
          const __m256 dz = _mm256_mul_ps(d[h], z);
#pragma GCC unroll 4
          for (int m = 0; m < MT; ++m) acc[h][m] = _mm256_fnmadd_ps(dz, _mm256_set1_ps(zsum[m]), acc[h][m]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int m = 0; m < MT; ++m) {
    store_rows(ys[m], acc[0][m], rows);
    if (rows > 8) store_rows(ys[m] + 8, acc[1][m], rows - 8);
  }
}

template <int MT, bool HI>
void q8_panel(const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
              float* const* ys, int rows, bool add) {
  const __m256i ones = _mm256_set1_epi16(1), k254 = _mm256_set1_epi16(254);
  __m256 acc[2][MT];
  for (int h = 0; h < 2; ++h)
    for (int m = 0; m < MT; ++m) acc[h][m] = start_rows(ys[m] + 8 * h, rows - 8 * h, add);
  constexpr int CB = panel_chunk_blocks(Format::Q8_0), PER = panel_chunk_bytes(Format::Q8_0) / CB;
  for (int64_t c0 = 0; c0 < nb; c0 += CB) {  // chunks: CB blocks' codes, then their d
    const uint8_t* chunk = panel + c0 / CB * L.chunk_bytes;
    const int nbc = L.blocks_in_chunk(c0);
    for (int bi = 0; bi < nbc; ++bi) {
      const int64_t b = c0 + bi;
      const uint8_t* q = chunk + bi * 512;
      const uint8_t* ahead = chunk + bi * PER + kPrefetchBytes;  // this block's share: 8.5 lines
      // Both halves of each 64-byte line in one pass (the block read line by line, in order).
      // Precise mode adds 254·(w·q) and w·r into one int32 (act_scale): ≤ 8·2·32258·255.
      __m256i is[2][MT];
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h)
#pragma GCC unroll 4
        for (int m = 0; m < MT; ++m) is[h][m] = _mm256_setzero_si256();
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) {
        // One prefetch per line consumed, not nine at the block's start: at two threads
        // 83-87 % of the bandwidth against 80-86 %, three alternating runs (Zen 3, session
        // 20; one thread unchanged, and the 4-bit panels' five per block showed no gain).
        _mm_prefetch((const char*)(ahead + v * 64), _MM_HINT_T1);
        if (v == 7) _mm_prefetch((const char*)(ahead + 512), _MM_HINT_T1);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m256i w = _mm256_loadu_si256((const __m256i*)(q + v * 64 + h * 32));
          const __m256i aw = _mm256_abs_epi8(w);
#pragma GCC unroll 4
          for (int m = 0; m < MT; ++m) {
            // Sign trick: |w| · (x·sign w) = w·x with an unsigned first operand for maddubs.
            const __m256i sx = _mm256_sign_epi8(_mm256_set1_epi32(((const int32_t*)xs[m][b].qs)[v]), w);
            is[h][m] = _mm256_add_epi32(is[h][m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), HI ? k254 : ones));
            if (HI) {
              const __m256i sr = _mm256_sign_epi8(_mm256_set1_epi32(((const int32_t*)xs[m][b].r)[v]), w);
              is[h][m] = _mm256_add_epi32(is[h][m], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sr), ones));
            }
            pin(is[h][m]);
          }
        }
      }
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(chunk + nbc * 512 + bi * 32 + h * 16)));
#pragma GCC unroll 4
        for (int m = 0; m < MT; ++m)
          acc[h][m] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(act_scale<HI>(xs[m][b]))),
                                      _mm256_cvtepi32_ps(is[h][m]), acc[h][m]);
      }
    }
  }
  for (int m = 0; m < MT; ++m) {
    store_rows(ys[m], acc[0][m], rows);
    if (rows > 8) store_rows(ys[m] + 8, acc[1][m], rows - 8);
  }
}

template <int MT, bool HI>
void panel_tile_hi(Format f, const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
                   float* const* ys, int rows, bool add) {
  switch (f) {
    case Format::Q4_0: q4_panel<Format::Q4_0, MT, HI>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_1: q4_panel<Format::Q4_1, MT, HI>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_G32: q4_panel<Format::Q4_G32, MT, HI>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_G64: q4_panel<Format::Q4_G64, MT, HI>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_G128: q4_panel<Format::Q4_G128, MT, HI>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q8_0: q8_panel<MT, HI>(panel, L, nb, xs, ys, rows, add); break;
    default: break;
  }
}

template <int MT>
void panel_tile(bool precise, Format f, const uint8_t* panel, const PanelLayout& L, int64_t nb,
                const block_q8_act* const* xs, float* const* ys, int rows, bool add) {
  if (precise) panel_tile_hi<MT, true>(f, panel, L, nb, xs, ys, rows, add);
  else panel_tile_hi<MT, false>(f, panel, L, nb, xs, ys, rows, add);
}

// Decode (one activation row): one weight row at a time, so a thread's rows are read as
// one sequential stream, prefetched kPrefetchBytes ahead. Four rows side
// by side are four streams of one row each, and the prefetchers follow short streams
// poorly (on Zen 5 under AVX2: 22.5 GB/s of f16 from DRAM on one core against ~40 for
// one stream; benchmarks/NOTES.md has the AVX-512 twin of this measurement).
inline __m256 load_x8(const float* x, int64_t i) { return _mm256_loadu_ps(x + i); }
inline __m256 load_x8(const uint16_t* x, int64_t i) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(x + i))); }
inline float load_x1(const float* x, int64_t i) { return x[i]; }
inline float load_x1(const uint16_t* x, int64_t i) { return fp16_to_fp32(x[i]); }

// x: the f32 activation row, or its f16 rounding (takes_f16_input).
template <Format F, typename X>
void dense_rows_decode(const MatmulArgs& a, const X* x, int64_t n0, int64_t n1) {
  constexpr int64_t wbytes = F == Format::F32 ? 4 : 2;
  const int64_t rb = row_bytes(F, a.k), k32 = a.k / 32 * 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = a.w + n * rb;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t i = 0;
    for (; i < k32; i += 32) {
      prefetch_ahead(w + i * wbytes, 32 * wbytes);
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) acc[u] = _mm256_fmadd_ps(load8(F, w, i + 8 * u), load_x8(x, i + 8 * u), acc[u]);
    }
    for (; i + 8 <= a.k; i += 8) acc[0] = _mm256_fmadd_ps(load8(F, w, i), load_x8(x, i), acc[0]);
    float s = hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < a.k; ++i) s += load1(F, w, i) * load_x1(x, i);
    a.y[n] = s;
  }
}

// Dense rows, four at a time so each activation load feeds four FMAs.
template <Format F>
void dense_rows(const MatmulArgs& a, int64_t n0, int64_t n1) {
  if (a.m == 1) {
    if (a.xh) dense_rows_decode<F>(a, a.xh, n0, n1);
    else dense_rows_decode<F>(a, a.x, n0, n1);
    return;
  }
  const int64_t rb = row_bytes(F, a.k), k8 = a.k / 8 * 8;
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* w = a.w + n * rb;
    int64_t m = 0;
    // Prefill: two activation rows per pass, so each converted weight vector feeds two
    // FMAs and eight independent accumulators hide the FMA latency.
    for (; m + 2 <= a.m; m += 2) {
      const float* x0 = a.x + m * a.k;
      const float* x1 = x0 + a.k;
      __m256 c[2][4];
      for (int r = 0; r < 4; ++r) c[0][r] = c[1][r] = _mm256_setzero_ps();
      for (int64_t i = 0; i < k8; i += 8) {
        const __m256 xv0 = _mm256_loadu_ps(x0 + i), xv1 = _mm256_loadu_ps(x1 + i);
        for (int r = 0; r < 4; ++r) {
          const __m256 wv = load8(F, w + r * rb, i);
          c[0][r] = _mm256_fmadd_ps(wv, xv0, c[0][r]);
          c[1][r] = _mm256_fmadd_ps(wv, xv1, c[1][r]);
        }
      }
      for (int t = 0; t < 2; ++t) {
        const float* x = t ? x1 : x0;
        for (int r = 0; r < 4; ++r) {
          float s = hsum_f32(c[t][r]);
          for (int64_t i = k8; i < a.k; ++i) s += load1(F, w + r * rb, i) * x[i];
          a.y[(m + t) * a.n + n + r] = s;
        }
      }
    }
    for (; m < a.m; ++m) {
      const float* x = a.x + m * a.k;
      __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
      for (int64_t i = 0; i < k8; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        acc0 = _mm256_fmadd_ps(load8(F, w, i), xv, acc0);
        acc1 = _mm256_fmadd_ps(load8(F, w + rb, i), xv, acc1);
        acc2 = _mm256_fmadd_ps(load8(F, w + 2 * rb, i), xv, acc2);
        acc3 = _mm256_fmadd_ps(load8(F, w + 3 * rb, i), xv, acc3);
      }
      float s[4] = {hsum_f32(acc0), hsum_f32(acc1), hsum_f32(acc2), hsum_f32(acc3)};
      for (int64_t i = k8; i < a.k; ++i)
        for (int r = 0; r < 4; ++r) s[r] += load1(F, w + r * rb, i) * x[i];
      for (int r = 0; r < 4; ++r) a.y[m * a.n + n + r] = s[r];
    }
  }
  for (; n < n1; ++n) {
    const uint8_t* w = a.w + n * rb;
    for (int64_t m = 0; m < a.m; ++m) {
      const float* x = a.x + m * a.k;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t i = 0; i < k8; i += 8) acc = _mm256_fmadd_ps(load8(F, w, i), _mm256_loadu_ps(x + i), acc);
      float s = hsum_f32(acc);
      for (int64_t i = k8; i < a.k; ++i) s += load1(F, w, i) * x[i];
      a.y[m * a.n + n] = s;
    }
  }
}

void matmul_avx2(const MatmulArgs& a, int64_t begin, int64_t end) {
  switch (a.fmt) {
    case Format::F32: dense_rows<Format::F32>(a, begin, end); return;
    case Format::F16: dense_rows<Format::F16>(a, begin, end); return;
    case Format::BF16: dense_rows<Format::BF16>(a, begin, end); return;
    default: break;
  }
  if (!a.panels) { matmul_ref(a, begin, end); return; }
  if (a.prompt && a.precise && gemm_i16_avx2(a, begin, end)) return;
  const PanelLayout L = panel_layout(a.fmt, a.n, a.k);
  const int64_t nb = a.k / QK;
  constexpr int MT = 2;
  // Two activation rows per pass pay only for q8_0. GCC keeps the 4-bit 2-row kernel's
  // activation broadcasts alive across its two half-panels and spills 41 (int8) to 98
  // (int8x2) ymm stores per block; measured under LINLY_ISA=avx2 on Zen 5 (one thread,
  // 2048x2048), one row at a time is faster for q4 at every batch size (M = 2: 92 against
  // 114 us; M = 128 int8: 190-195 against 148-152 GOPS) and slower for q8_0 (M = 128: 139
  // against 150). Not yet measured on an AVX2-only CPU (benchmarks/NOTES.md).
  const bool pair_rows = a.fmt == Format::Q8_0;
  // Slice by slice (panel.h): the thread's pieces of a slice are one stream from DRAM,
  // and the slice's activation blocks stay in L1 from one piece to the next.
  for (int64_t s = 0; s < L.slices(); ++s) {
    const PanelLayout Ls = L.piece(s);
    const int64_t b0 = s * kSliceBlocks;
    const bool add = s > 0;
    for (int64_t p = begin; p < end; ++p) {
      const uint8_t* piece = a.w + L.piece_offset(p, s);
      const int rows = panel_rows(a.n, p);
      int64_t m = 0;
      if (pair_rows)
        for (; m + MT <= a.m; m += MT) {
          const block_q8_act* xs[MT] = {a.xq + m * nb + b0, a.xq + (m + 1) * nb + b0};
          float* ys[MT] = {a.y + m * a.n + p * kPanelRows, a.y + (m + 1) * a.n + p * kPanelRows};
          if (a.precise) q8_panel<MT, true>(piece, Ls, Ls.nb, xs, ys, rows, add);
          else q8_panel<MT, false>(piece, Ls, Ls.nb, xs, ys, rows, add);
        }
      for (; m < a.m; ++m) {
        const block_q8_act* xs[1] = {a.xq + m * nb + b0};
        float* ys[1] = {a.y + m * a.n + p * kPanelRows};
        panel_tile<1>(a.precise, a.fmt, piece, Ls, Ls.nb, xs, ys, rows, add);
      }
    }
  }
}

uint64_t read_checksum_avx2(const uint8_t* p, int64_t bytes) {
  // Eight independent accumulators keep eight loads in flight per iteration.
  __m256i s[8];
  for (int i = 0; i < 8; ++i) s[i] = _mm256_setzero_si256();
  for (int64_t o = 0; o < bytes; o += 256) {
    for (int i = 0; i < 8; ++i) s[i] = _mm256_add_epi64(s[i], _mm256_load_si256((const __m256i*)(p + o + 32 * i)));
  }
  __m256i t = s[0];
  for (int i = 1; i < 8; ++i) t = _mm256_xor_si256(t, s[i]);
  alignas(32) uint64_t l[4];
  _mm256_store_si256((__m256i*)l, t);
  return l[0] ^ l[1] ^ l[2] ^ l[3];
}

// exp(x) for the softmax: x = n·ln2 + r, |r| ≤ ln2/2, exp(r) by its Taylor series to r⁶
// (relative error < 2e-7), 2ⁿ built in the exponent bits. Inputs are clamped to the
// range where 2ⁿ stays a normal float.
inline __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 split in two for accuracy
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

template <bool F16>
inline __m256 load_kv8(const void* base, int64_t i) {
  if (F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)base + i)));
  return _mm256_loadu_ps((const float*)base + i);
}

template <bool F16>
inline float load_kv1(const void* base, int64_t i) {
  return F16 ? fp16_to_fp32(((const uint16_t*)base)[i]) : ((const float*)base)[i];
}

// Decode attention is a dot product per cached position: the K cache streams through here
// once per token and layer, which makes it the hot loop at long contexts.
// Sums of four vectors at once: lane-wise adds then one shuffle tree, instead of four
// separate horizontal sums.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // per 128-bit half: [a b c d] partial sums
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

template <bool F16>
void attn_scores(const float* q, const void* k, int64_t stride, int64_t len, int64_t hd, float scale, float* scores) {
  const int64_t h8 = hd / 8 * 8;
  int64_t j = 0;
  if (h8 == hd) {
    // Four keys per pass: four independent FMA chains hide the FMA latency, and q's
    // loads are shared.
    auto row = [&](int64_t r) -> const void* {
      return F16 ? (const void*)((const uint16_t*)k + r * stride) : (const void*)((const float*)k + r * stride);
    };
    // Eight keys per pass where there are eight: eight FMA chains (four leave the FMA
    // latency exposed) and eight cache rows in flight. Every key's sum is formed in the
    // same order either way. (A decode profile puts most of this loop's time on the K
    // loads: the cache comes from DRAM, the weights having streamed through L3 since.)
    for (; j + 8 <= len; j += 8) {
      __m256 a[8];
      const void* kr[8];
      for (int r = 0; r < 8; ++r) a[r] = _mm256_setzero_ps(), kr[r] = row(j + r);
      for (int64_t i = 0; i < hd; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) a[r] = _mm256_fmadd_ps(qv, load_kv8<F16>(kr[r], i), a[r]);
      }
      _mm_storeu_ps(scores + j, _mm_mul_ps(hsum4(a[0], a[1], a[2], a[3]), _mm_set1_ps(scale)));
      _mm_storeu_ps(scores + j + 4, _mm_mul_ps(hsum4(a[4], a[5], a[6], a[7]), _mm_set1_ps(scale)));
    }
    for (; j + 4 <= len; j += 4) {
      const void *k0 = row(j), *k1 = row(j + 1), *k2 = row(j + 2), *k3 = row(j + 3);
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = 0; i < hd; i += 8) {
        const __m256 qv = _mm256_loadu_ps(q + i);
        a0 = _mm256_fmadd_ps(qv, load_kv8<F16>(k0, i), a0);
        a1 = _mm256_fmadd_ps(qv, load_kv8<F16>(k1, i), a1);
        a2 = _mm256_fmadd_ps(qv, load_kv8<F16>(k2, i), a2);
        a3 = _mm256_fmadd_ps(qv, load_kv8<F16>(k3, i), a3);
      }
      _mm_storeu_ps(scores + j, _mm_mul_ps(hsum4(a0, a1, a2, a3), _mm_set1_ps(scale)));
    }
  }
  for (; j < len; ++j) {
    const void* kj = F16 ? (const void*)((const uint16_t*)k + j * stride) : (const void*)((const float*)k + j * stride);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= h8; i += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_kv8<F16>(kj, i), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load_kv8<F16>(kj, i + 8), a1);
    }
    for (; i < h8; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load_kv8<F16>(kj, i), a0);
    float s = hsum_f32(_mm256_add_ps(a0, a1));
    for (; i < hd; ++i) s += q[i] * load_kv1<F16>(kj, i);
    scores[j] = s * scale;
  }
}

// out[i0, i0 + 8·NV) of attn_mix, held in registers across all positions: no
// store-to-load round trip per position. A 64-wide head takes one pass of NV = 8 chains:
// each V row is read once (with 32-wide passes, twice) and eight FMA chains cover the FMA
// latency. In a SmolLM2 decode profile this loop went from 7-8 % to 5 % of the samples.
template <bool F16, int NV>
void attn_mix_pass(const float* p, const void* v, int64_t stride, int64_t len, int64_t i0, float* out) {
  __m256 acc[NV];
  for (int u = 0; u < NV; ++u) acc[u] = _mm256_setzero_ps();
  for (int64_t j = 0; j < len; ++j) {
    const void* vj = F16 ? (const void*)((const uint16_t*)v + j * stride) : (const void*)((const float*)v + j * stride);
    const __m256 pj = _mm256_set1_ps(p[j]);
#pragma GCC unroll 8
    for (int u = 0; u < NV; ++u) acc[u] = _mm256_fmadd_ps(pj, load_kv8<F16>(vj, i0 + 8 * u), acc[u]);
  }
  for (int u = 0; u < NV; ++u) _mm256_storeu_ps(out + i0 + 8 * u, acc[u]);
}

template <bool F16>
void attn_mix(const float* p, const void* v, int64_t stride, int64_t len, int64_t hd, float* out) {
  const int64_t h8 = hd / 8 * 8;
  for (int64_t i = 0; i < hd; ++i) out[i] = 0.0f;
  if (h8 == hd) {
    // Passes of 64 outputs, then 32, then 8 (head sizes are multiples of 32 in practice).
    int64_t i0 = 0;
    for (; i0 + 64 <= hd; i0 += 64) attn_mix_pass<F16, 8>(p, v, stride, len, i0, out);
    for (; i0 + 32 <= hd; i0 += 32) attn_mix_pass<F16, 4>(p, v, stride, len, i0, out);
    for (; i0 < hd; i0 += 8) attn_mix_pass<F16, 1>(p, v, stride, len, i0, out);
    return;
  }
  for (int64_t j = 0; j < len; ++j) {
    const void* vj = F16 ? (const void*)((const uint16_t*)v + j * stride) : (const void*)((const float*)v + j * stride);
    const __m256 pj = _mm256_set1_ps(p[j]);
    int64_t i = 0;
    for (; i < h8; i += 8) _mm256_storeu_ps(out + i, _mm256_fmadd_ps(pj, load_kv8<F16>(vj, i), _mm256_loadu_ps(out + i)));
    for (; i < hd; ++i) out[i] += p[j] * load_kv1<F16>(vj, i);
  }
}

// Grouped-query attention: the G query heads of one KV head read the same K and V rows.
// Each f16 row is converted once for up to three heads instead of once per head: four keys
// by three heads are twelve accumulators beside four converted rows, the sixteen ymm
// registers. Every (key, head) sum is formed exactly as attn_scores forms it (one FMA chain
// over the head, then hsum4), and the keys past the last multiple of four go through it.
template <int GH>
void attn_scores_f16_heads(const float* q, const uint16_t* k, int64_t stride, int64_t len, int64_t hd, float scale,
                           float* scores, int64_t ld) {
  int64_t j = 0;
  for (; j + 4 <= len; j += 4) {
    __m256 a[GH][4];
#pragma GCC unroll 3
    for (int g = 0; g < GH; ++g)
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) a[g][r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < hd; i += 8) {
      __m256 kv[4];
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) kv[r] = load_kv8<true>(k + (j + r) * stride, i);
#pragma GCC unroll 3
      for (int g = 0; g < GH; ++g) {
        const __m256 qv = _mm256_loadu_ps(q + g * hd + i);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) a[g][r] = _mm256_fmadd_ps(qv, kv[r], a[g][r]);
      }
    }
#pragma GCC unroll 3
    for (int g = 0; g < GH; ++g)
      _mm_storeu_ps(scores + g * ld + j, _mm_mul_ps(hsum4(a[g][0], a[g][1], a[g][2], a[g][3]), _mm_set1_ps(scale)));
  }
  for (; j < len; ++j)
    for (int g = 0; g < GH; ++g) attn_scores<true>(q + g * hd, k + j * stride, stride, 1, hd, scale, scores + g * ld + j);
}

}  // namespace

void attn_scores_f16_group_avx2(const float* q, int64_t G, const uint16_t* k, int64_t stride, int64_t len,
                                int64_t hd, float scale, float* scores, int64_t ld) {
  if (hd % 8 != 0) {
    for (int64_t g = 0; g < G; ++g) attn_scores<true>(q + g * hd, k, stride, len, hd, scale, scores + g * ld);
    return;
  }
  int64_t g = 0;
  for (; g + 3 <= G; g += 3) attn_scores_f16_heads<3>(q + g * hd, k, stride, len, hd, scale, scores + g * ld, ld);
  if (G - g == 2) attn_scores_f16_heads<2>(q + g * hd, k, stride, len, hd, scale, scores + g * ld, ld);
  if (G - g == 1) attn_scores_f16_heads<1>(q + g * hd, k, stride, len, hd, scale, scores + g * ld, ld);
}

void attn_scores_f32_avx2(const float* q, const float* k, int64_t stride, int64_t len, int64_t hd, float scale,
                          float* scores) {
  attn_scores<false>(q, k, stride, len, hd, scale, scores);
}
void attn_scores_f16_avx2(const float* q, const uint16_t* k, int64_t stride, int64_t len, int64_t hd, float scale,
                          float* scores) {
  attn_scores<true>(q, k, stride, len, hd, scale, scores);
}
void attn_mix_f32_avx2(const float* p, const float* v, int64_t stride, int64_t len, int64_t hd, float* out) {
  attn_mix<false>(p, v, stride, len, hd, out);
}
void attn_mix_f16_avx2(const float* p, const uint16_t* v, int64_t stride, int64_t len, int64_t hd, float* out) {
  attn_mix<true>(p, v, stride, len, hd, out);
}

// Twin of swiglu_ref. The scalar loop (libm expf and a division per element) was 4 % of a
// SmolLM2 decode profile; exp_avx2's relative error (< 2e-7) is the only difference. Out of
// exp_avx2's range the clamp leaves g / (1 + e^87) ≈ 0 and g / (1 + e^-88) = g; NaN stays NaN.
void swiglu_avx2(float* gate, const float* up, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_avx2(_mm256_sub_ps(zero, g));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

// int8 KV cache: 32 int8 → four vectors of 8 floats, scaled once per block.
inline void load_q8_block(const block_q8_0& b, __m256 v[4]) {
  for (int u = 0; u < 4; ++u)
    v[u] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(b.qs + 8 * u))));
}

void attn_scores_q8_avx2(const float* q, const block_q8_0* k, int64_t stride, int64_t len, int64_t hd, float scale,
                         float* scores) {
  const int64_t nb = hd / QK;
  for (int64_t j = 0; j < len; ++j) {
    const block_q8_0* kj = k + j * stride;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      __m256 kv[4];
      load_q8_block(kj[b], kv);
      const float* qb = q + b * QK;
      __m256 s = _mm256_mul_ps(_mm256_loadu_ps(qb), kv[0]);
      s = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 8), kv[1], s);
      s = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 16), kv[2], s);
      s = _mm256_fmadd_ps(_mm256_loadu_ps(qb + 24), kv[3], s);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(kj[b].d)), s, acc);
    }
    scores[j] = hsum_f32(acc) * scale;
  }
}

void attn_mix_q8_avx2(const float* p, const block_q8_0* v, int64_t stride, int64_t len, int64_t hd, float* out) {
  const int64_t nb = hd / QK;
  for (int64_t b = 0; b < nb; ++b) {  // one block of outputs in registers across all positions
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t j = 0; j < len; ++j) {
      const block_q8_0& blk = v[j * stride + b];
      const __m256 w = _mm256_set1_ps(p[j] * fp16_to_fp32(blk.d));
      __m256 vv[4];
      load_q8_block(blk, vv);
      for (int u = 0; u < 4; ++u) acc[u] = _mm256_fmadd_ps(w, vv[u], acc[u]);
    }
    for (int u = 0; u < 4; ++u) _mm256_storeu_ps(out + b * QK + 8 * u, acc[u]);
  }
}

void softmax_avx2(float* x, int64_t len) {
  const int64_t l8 = len / 8 * 8;
  __m256 m = _mm256_set1_ps(-INFINITY);
  for (int64_t j = 0; j < l8; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float mx = _mm_cvtss_f32(m4);
  for (int64_t j = l8; j < len; ++j) mx = x[j] > mx ? x[j] : mx;
  const __m256 vmx = _mm256_set1_ps(mx);
  __m256 sum = _mm256_setzero_ps();
  for (int64_t j = 0; j < l8; j += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), vmx));
    _mm256_storeu_ps(x + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  float s = hsum_f32(sum);
  for (int64_t j = l8; j < len; ++j) {
    x[j] = expf(x[j] - mx);
    s += x[j];
  }
  const __m256 inv = _mm256_set1_ps(1.0f / s);
  for (int64_t j = 0; j < l8; j += 8) _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), inv));
  for (int64_t j = l8; j < len; ++j) x[j] *= 1.0f / s;
}

const KernelTable& kernels_avx2() {
  static const KernelTable t = [] {
    KernelTable k{Isa::Avx2, "avx2", true, quantize_act_avx2, round_act_f16_avx2, matmul_avx2, read_checksum_avx2,
                  attn_scores_f32_avx2, attn_scores_f16_avx2, softmax_avx2, attn_mix_f32_avx2,
                  attn_mix_f16_avx2, attn_scores_q8_avx2, attn_mix_q8_avx2, gemm_tiles_avx2,
                  /*f32_prompts=*/false, /*dense_prompts=*/true, swiglu_avx2};
    k.attn_scores_f16_group = attn_scores_f16_group_avx2;
    return k;
  }();
  return t;
}

}  // namespace linly
