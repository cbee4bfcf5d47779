// AVX-512 (F, BW, VL, VNNI) kernels. Compiled with those flags in this unit only and
// reached solely through kernels_avx512() after CPUID and XGETBV say the CPU and OS
// support them. One panel (16 rows) is exactly one zmm of int32 lanes.
#include <immintrin.h>

#include <vector>

#include "kernels/kernel_table.h"
#include "quant/fp16.h"
#include "quant/matmul_ref.h"
#include "quant/panel.h"
#include "quant/quantize.h"

namespace linly {
namespace {

// Twin of quantize_row_act_ref; must produce identical bytes.
void quantize_act_avx512(const float* x, block_q8_act* y, int64_t k) {
  for (int64_t b = 0; b < k / QK; ++b, x += QK) {
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float d = amax / 127.0f;
    const float d2 = d / 254.0f;
    const __m512 id = _mm512_set1_ps(d != 0.0f ? 1.0f / d : 0.0f);
    const __m512 id2 = _mm512_set1_ps(d2 != 0.0f ? 1.0f / d2 : 0.0f);
    const __m512 vd = _mm512_set1_ps(d);
    const __m512i lim = _mm512_set1_epi32(127), nlim = _mm512_set1_epi32(-127);
    const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id));  // MXCSR default: nearest-even
    const __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
    // Residual, with the same separate multiply and subtract as the reference.
    const __m512 e0 = _mm512_sub_ps(v0, _mm512_mul_ps(vd, _mm512_cvtepi32_ps(i0)));
    const __m512 e1 = _mm512_sub_ps(v1, _mm512_mul_ps(vd, _mm512_cvtepi32_ps(i1)));
    const __m512i r0 = _mm512_max_epi32(nlim, _mm512_min_epi32(lim, _mm512_cvtps_epi32(_mm512_mul_ps(e0, id2))));
    const __m512i r1 = _mm512_max_epi32(nlim, _mm512_min_epi32(lim, _mm512_cvtps_epi32(_mm512_mul_ps(e1, id2))));
    y[b].d = d;
    y[b].d2 = d2;
    y[b].s = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    y[b].s2 = _mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1));
    _mm_storeu_si128((__m128i*)y[b].qs, _mm512_cvtepi32_epi8(i0));  // |q| ≤ 127: no truncation
    _mm_storeu_si128((__m128i*)(y[b].qs + 16), _mm512_cvtepi32_epi8(i1));
    _mm_storeu_si128((__m128i*)y[b].r, _mm512_cvtepi32_epi8(r0));
    _mm_storeu_si128((__m128i*)(y[b].r + 16), _mm512_cvtepi32_epi8(r1));
  }
}

// Twin of round_act_f16_ref: the range check on the magnitude bits, as the reference.
bool round_act_f16_avx512(const float* x, uint16_t* y, int64_t k) {
  const __m512i abs_bits = _mm512_set1_epi32(0x7fffffff);
  __m512i mx = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512i v = _mm512_loadu_si512(x + i);
    mx = _mm512_max_epu32(mx, _mm512_and_si512(v, abs_bits));
    _mm256_storeu_si256((__m256i*)(y + i), _mm512_cvtps_ph(_mm512_castsi512_ps(v), _MM_FROUND_TO_NEAREST_INT));
  }
  if (i < k) {
    const __mmask16 mask = (__mmask16)((1u << (k - i)) - 1u);
    const __m512i v = _mm512_maskz_loadu_epi32(mask, x + i);
    mx = _mm512_max_epu32(mx, _mm512_and_si512(v, abs_bits));
    _mm256_mask_storeu_epi16(y + i, mask, _mm512_cvtps_ph(_mm512_castsi512_ps(v), _MM_FROUND_TO_NEAREST_INT));
  }
  return _mm512_reduce_max_epu32(mx) < 0x477ff000u;
}

inline void store_rows(float* y, __m512 v, int rows) {
  _mm512_mask_storeu_ps(y, (__mmask16)((1u << rows) - 1u), v);
}
// A panel's sums so far: zero at the first K-slice, the earlier slices' result after it
// (the chain of FMAs then runs through y exactly as it would in one register).
inline __m512 start_rows(const float* y, int rows, bool add) {
  return add ? _mm512_maskz_loadu_ps((__mmask16)((1u << rows) - 1u), y) : _mm512_setzero_ps();
}

// Software prefetch 8 KiB ahead into L2, for the panel and the dense kernels alike: each
// thread reads its weights as one long stream. On Zen 4, alternating settings token by
// token in one process (benchmarks/NOTES.md, session 13), L2 8 KiB against the L1 4 KiB
// kept before decoded a 1.1B-shaped q4_0 model 1.20x / 1.38x faster (2 / 1 threads), q8_0
// 1.50x, SmolLM2 1.08-1.11x; 4 KiB, 12 and 16 KiB into L2, 8 KiB into L1 and none were
// behind or level. (Zen 5 had preferred L1 4 KiB to L2 by 2-4 %.) For dense f16 decode
// the same 8 KiB L2 prefetch was already the best of 0, 4, 16 KiB and L1.
#ifndef LINLY_AVX512_PREFETCH_BYTES
#define LINLY_AVX512_PREFETCH_BYTES 8192
#endif
constexpr int kPrefetchBytes = LINLY_AVX512_PREFETCH_BYTES;
// Since the panels are stored in K-slices (panel.h), the decode loops mostly leave a long
// stream to the hardware prefetchers: with the software prefetch one thread read 22.5 GB/s
// of 4096x4096 q4_0 from DRAM, without it 29.5 (the probe: 31; Zen 4). One thread,
// TinyLlama shapes, % of the read bandwidth with / without it (session 25):
//   int8:   q4_0 70-73 / 88-93, q8_0 and q4_1 likewise
//   int8x2: q4_0 81-96 / 82-85, q4_g128 87-90 / 79-87, q4_1 81-89 / 94-104, q8_0 67-71 / 89-100
// Small matrices want it in either mode: SmolLM2's (0.2-0.5 MB each, one short stream per
// thread between attention and norms) decoded 0.92x / 0.95x (one / two threads) without
// it, and the same with it for everything under 1 MiB.
constexpr int64_t kPrefetchBelowBytes = 1 << 20;
bool prefetch_large(Format f, bool precise) { return precise && f != Format::Q4_1 && f != Format::Q8_0; }
template <int Ahead = kPrefetchBytes, enum _mm_hint Hint = _MM_HINT_T1>
inline void prefetch_ahead(const uint8_t* q, int bytes) {
  if (Ahead == 0) return;
  for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char*)(q + Ahead + o), Hint);
}

// One 16-row panel of a 4-bit format against MT activation rows; the decode hot loop.
// Chunks (panel.h) in address order: CB blocks' codes, then their groups' scale records.
template <Format F, int MT, bool HI, bool PF>
void q4_panel(const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
              float* const* ys, int rows, bool add) {
  constexpr int G = q4_group_size(F);
  constexpr int SUB = panel_group_blocks(F), CB = panel_chunk_blocks(F);
  constexpr int RB = panel_record_bytes(F);
  constexpr int PER = panel_chunk_bytes(F) / CB;  // stream bytes per block
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = start_rows(ys[m], rows, add);
  for (int64_t c0 = 0; c0 < nb; c0 += CB) {
    const uint8_t* chunk = panel + c0 / CB * L.chunk_bytes;
    const int nbc = L.blocks_in_chunk(c0);
    const uint8_t* records = chunk + nbc * 256;
    for (int bi = 0; bi < nbc; ++bi) {
      const int64_t b = c0 + bi;
      const uint8_t* q = chunk + bi * 256;
      if (PF) prefetch_ahead(chunk + bi * PER, PER);  // the block's share of the chunk's lines
      const uint8_t* rec = records + bi / SUB * RB;
      __m512i isum[MT], isum2[MT];
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) isum[m] = isum2[m] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const __m512i raw = _mm512_loadu_si512((const void*)(q + v * 64));
        const __m512i lo = _mm512_and_si512(raw, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
#pragma GCC unroll 4
        for (int m = 0; m < MT; ++m) {
          const int32_t* xw = (const int32_t*)xs[m][b].qs;
          isum[m] = _mm512_dpbusd_epi32(isum[m], lo, _mm512_set1_epi32(xw[v]));
          isum[m] = _mm512_dpbusd_epi32(isum[m], hi, _mm512_set1_epi32(xw[4 + v]));
          if (HI) {
            const int32_t* rw = (const int32_t*)xs[m][b].r;
            isum2[m] = _mm512_dpbusd_epi32(isum2[m], lo, _mm512_set1_epi32(rw[v]));
            isum2[m] = _mm512_dpbusd_epi32(isum2[m], hi, _mm512_set1_epi32(rw[4 + v]));
          }
        }
      }
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)rec));
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) {
        const block_q8_act& a = xs[m][b];
        __m512i is = isum[m], is2 = isum2[m];
        if (F == Format::Q4_0) {
          is = _mm512_sub_epi32(is, _mm512_set1_epi32(8 * a.s));
          if (HI) is2 = _mm512_sub_epi32(is2, _mm512_set1_epi32(8 * a.s2));
        }
        if (G) {
          const __m512i z = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(rec + 32)));
          is = _mm512_sub_epi32(is, _mm512_mullo_epi32(z, _mm512_set1_epi32(a.s)));
          if (HI) is2 = _mm512_sub_epi32(is2, _mm512_mullo_epi32(z, _mm512_set1_epi32(a.s2)));
        }
        acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(a.d)), _mm512_cvtepi32_ps(is), acc[m]);
        if (HI) acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(a.d2)), _mm512_cvtepi32_ps(is2), acc[m]);
        if (F == Format::Q4_1) {
          const __m512 mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rec + 32)));
          acc[m] = _mm512_fmadd_ps(mn, _mm512_set1_ps(a.d * (float)a.s), acc[m]);
          if (HI) acc[m] = _mm512_fmadd_ps(mn, _mm512_set1_ps(a.d2 * (float)a.s2), acc[m]);
        }
      }
    }
  }
  for (int m = 0; m < MT; ++m) store_rows(ys[m], acc[m], rows);
}

template <int MT, bool HI, bool PF>
void q8_panel(const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
              float* const* ys, int rows, bool add) {
  constexpr int CB = panel_chunk_blocks(Format::Q8_0);
  constexpr int PER = panel_chunk_bytes(Format::Q8_0) / CB;
  const __m512i bias = _mm512_set1_epi8((char)0x80);
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = start_rows(ys[m], rows, add);
  for (int64_t c0 = 0; c0 < nb; c0 += CB) {
    const uint8_t* chunk = panel + c0 / CB * L.chunk_bytes;
    const int nbc = L.blocks_in_chunk(c0);
    for (int bi = 0; bi < nbc; ++bi) {
      const int64_t b = c0 + bi;
      const uint8_t* q = chunk + bi * 512;
      if (PF) prefetch_ahead(chunk + bi * PER, PER);
      __m512i isum[MT], isum2[MT];
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m) isum[m] = isum2[m] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) {
        // vpdpbusd wants u8 × s8: w ^ 0x80 = w + 128 as unsigned; the extra 128·Σx is
        // removed exactly below with the block's activation sum.
        const __m512i w = _mm512_xor_si512(_mm512_loadu_si512((const void*)(q + v * 64)), bias);
        for (int m = 0; m < MT; ++m) {
          isum[m] = _mm512_dpbusd_epi32(isum[m], w, _mm512_set1_epi32(((const int32_t*)xs[m][b].qs)[v]));
          if (HI) isum2[m] = _mm512_dpbusd_epi32(isum2[m], w, _mm512_set1_epi32(((const int32_t*)xs[m][b].r)[v]));
        }
      }
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(chunk + nbc * 512 + bi * 32)));
      for (int m = 0; m < MT; ++m) {
        const __m512i is = _mm512_sub_epi32(isum[m], _mm512_set1_epi32(128 * xs[m][b].s));
        acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xs[m][b].d)), _mm512_cvtepi32_ps(is), acc[m]);
        if (HI) {
          const __m512i is2 = _mm512_sub_epi32(isum2[m], _mm512_set1_epi32(128 * xs[m][b].s2));
          acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(xs[m][b].d2)), _mm512_cvtepi32_ps(is2), acc[m]);
        }
      }
    }
  }
  for (int m = 0; m < MT; ++m) store_rows(ys[m], acc[m], rows);
}

// ---- int8x2 prompts (MatmulArgs::prompt) -------------------------------------------
// The panel loops above convert two integer sums per activation row and block (codes and
// residual) and apply two scales. With d2 = d/254 (formats.h) both fold into one integer
// T = 254·Σw·qs + Σw·r, so a row and block cost one convert, one multiply and one FMA;
// q4_0/q8_0 offsets and group zero points enter as the residual sum's starting value.
// Why it pays: on Zen 4 vpdpbusd shares its two pipes with vmulps/vfmadd (a loop of 8
// dpbusd + 1 FMA + 1 multiply ran at 0.80 of the dpbusd-only rate, 3.66 G/s; vpmulld,
// vcvtdq2ps, vpaddd and broadcast loads cost it nothing), and each row and block needs
// 16 dpbusd. Four FP multiplies became two: M = 128, one thread, 1.07-1.21x the panel
// loops (182-187 GOPS, ~79 % of the dpbusd peak); prefill of the 1.1B-shaped q4_0 model
// 1.13x / 1.08x (1 / 2 threads). Sixteen rows per pass instead of eight: 0.95x. One row
// (decode) through this loop read 0.91-0.98x the bandwidth of q4_panel / q8_panel at one
// thread, so decode rows keep those; prompt rows come here by Activations::Int8x2Prompt.
struct PromptAct {
  int32_t c;   // where the residual sum starts: -S times the format's offset (8 for q4_0,
               // 128 for q8_0), or -S, to be times the group's zero points; 0 for q4_1
  float d2;    // the block's residual scale: T's unit
  float dsum;  // d·s + d2·s2 ≈ Σx, for q4_1's minimum
  int32_t unused;
};
static_assert(sizeof(PromptAct) == 16, "one header per activation block");

int32_t prompt_offset(Format f) { return f == Format::Q4_0 ? -8 : f == Format::Q8_0 ? -128 : q4_group_size(f) ? -1 : 0; }

// Per thread and call: m rows x nb blocks of headers (cheap next to the m x n x k work).
const PromptAct* prompt_headers(Format f, const block_q8_act* xq, int64_t count) {
  thread_local std::vector<PromptAct> headers;
  if (headers.size() < (size_t)count) headers.resize((size_t)count);
  const int32_t off = prompt_offset(f);
  for (int64_t i = 0; i < count; ++i) {
    const block_q8_act& a = xq[i];
    headers[(size_t)i] = PromptAct{off * (254 * a.s + a.s2), a.d2, a.d * (float)a.s + a.d2 * (float)a.s2, 0};
  }
  return headers.data();
}

// 254·x as one vpmulld (off the dpbusd pipes). GCC would rewrite a constant multiplier
// into three dependent shifts and subtracts on the chain to the FMA; the empty asm hides
// the constant.
inline __m512i times254(__m512i x) {
  __m512i k = _mm512_set1_epi32(254);
  __asm__("" : "+v"(k));
  return _mm512_mullo_epi32(x, k);
}

template <Format F, int MT>
void q4_panel_x2(const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
                 const PromptAct* const* hs, float* const* ys, int rows, bool add) {
  constexpr int G = q4_group_size(F);
  constexpr int SUB = panel_group_blocks(F), CB = panel_chunk_blocks(F);
  constexpr int RB = panel_record_bytes(F);
  constexpr int PER = panel_chunk_bytes(F) / CB;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = start_rows(ys[m], rows, add);
  for (int64_t c0 = 0; c0 < nb; c0 += CB) {
    const uint8_t* chunk = panel + c0 / CB * L.chunk_bytes;
    const int nbc = L.blocks_in_chunk(c0);
    const uint8_t* records = chunk + nbc * 256;
    for (int bi = 0; bi < nbc; ++bi) {
      const int64_t b = c0 + bi;
      const uint8_t* q = chunk + bi * 256;
      prefetch_ahead(chunk + bi * PER, PER);
      const uint8_t* rec = records + bi / SUB * RB;
      __m512i lo[4], hi[4];  // the block's codes, unpacked once for MT rows
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) {
        const __m512i raw = _mm512_loadu_si512((const void*)(q + v * 64));
        lo[v] = _mm512_and_si512(raw, low4);
        hi[v] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low4);
      }
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)rec));
      __m512i z = _mm512_setzero_si512();
      if (G) z = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(rec + 32)));
      __m512 mn = _mm512_setzero_ps();
      if (F == Format::Q4_1) mn = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(rec + 32)));
      // Rows in groups of R, vectors outer: 2R independent dpbusd chains in flight (measured
      // level with one row at a time, whose two 8-deep chains the out-of-order window
      // already overlapped; kept for the shorter dependence per row).
      constexpr int R = MT < 4 ? MT : 4;
#pragma GCC unroll 2
      for (int g = 0; g < MT; g += R) {
        __m512i s1[R], s2[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {  // the offsets enter as the residual sum's start: no subtract
          s1[r] = _mm512_setzero_si512();
          const __m512i c = _mm512_set1_epi32(hs[g + r][b].c);
          s2[r] = G ? _mm512_mullo_epi32(z, c) : F == Format::Q4_0 ? c : _mm512_setzero_si512();
        }
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v) {
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            const int32_t* xw = (const int32_t*)xs[g + r][b].qs;
            const int32_t* rw = (const int32_t*)xs[g + r][b].r;
            s1[r] = _mm512_dpbusd_epi32(s1[r], lo[v], _mm512_set1_epi32(xw[v]));
            s2[r] = _mm512_dpbusd_epi32(s2[r], lo[v], _mm512_set1_epi32(rw[v]));
            s1[r] = _mm512_dpbusd_epi32(s1[r], hi[v], _mm512_set1_epi32(xw[4 + v]));
            s2[r] = _mm512_dpbusd_epi32(s2[r], hi[v], _mm512_set1_epi32(rw[4 + v]));
          }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const PromptAct& h = hs[g + r][b];
          const __m512i t = _mm512_add_epi32(times254(s1[r]), s2[r]);
          acc[g + r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(h.d2)), _mm512_cvtepi32_ps(t), acc[g + r]);
          if (F == Format::Q4_1) acc[g + r] = _mm512_fmadd_ps(mn, _mm512_set1_ps(h.dsum), acc[g + r]);
        }
      }
    }
  }
  for (int m = 0; m < MT; ++m) store_rows(ys[m], acc[m], rows);
}

template <int MT>
void q8_panel_x2(const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
                 const PromptAct* const* hs, float* const* ys, int rows, bool add) {
  constexpr int CB = panel_chunk_blocks(Format::Q8_0);
  constexpr int PER = panel_chunk_bytes(Format::Q8_0) / CB;
  const __m512i bias = _mm512_set1_epi8((char)0x80);
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = start_rows(ys[m], rows, add);
  for (int64_t c0 = 0; c0 < nb; c0 += CB) {
    const uint8_t* chunk = panel + c0 / CB * L.chunk_bytes;
    const int nbc = L.blocks_in_chunk(c0);
    for (int bi = 0; bi < nbc; ++bi) {
      const int64_t b = c0 + bi;
      const uint8_t* q = chunk + bi * 512;
      prefetch_ahead(chunk + bi * PER, PER);
      __m512i w[8];  // w + 128 as unsigned (q8_panel); the 128·S comes off T
#pragma GCC unroll 8
      for (int v = 0; v < 8; ++v) w[v] = _mm512_xor_si512(_mm512_loadu_si512((const void*)(q + v * 64)), bias);
      const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(chunk + nbc * 512 + bi * 32)));
      constexpr int R = MT < 4 ? MT : 4;  // as q4_panel_x2
#pragma GCC unroll 2
      for (int g = 0; g < MT; g += R) {
        __m512i s1[R], s2[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          s1[r] = _mm512_setzero_si512();
          s2[r] = _mm512_set1_epi32(hs[g + r][b].c);  // -128·S: the bias comes off for free
        }
#pragma GCC unroll 8
        for (int v = 0; v < 8; ++v) {
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r) {
            s1[r] = _mm512_dpbusd_epi32(s1[r], w[v], _mm512_set1_epi32(((const int32_t*)xs[g + r][b].qs)[v]));
            s2[r] = _mm512_dpbusd_epi32(s2[r], w[v], _mm512_set1_epi32(((const int32_t*)xs[g + r][b].r)[v]));
          }
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const PromptAct& h = hs[g + r][b];
          const __m512i t = _mm512_add_epi32(times254(s1[r]), s2[r]);
          acc[g + r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(h.d2)), _mm512_cvtepi32_ps(t), acc[g + r]);
        }
      }
    }
  }
  for (int m = 0; m < MT; ++m) store_rows(ys[m], acc[m], rows);
}

template <int MT>
void panel_tile_x2(Format f, const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
                   const PromptAct* const* hs, float* const* ys, int rows, bool add) {
  switch (f) {
    case Format::Q4_0: q4_panel_x2<Format::Q4_0, MT>(panel, L, nb, xs, hs, ys, rows, add); break;
    case Format::Q4_1: q4_panel_x2<Format::Q4_1, MT>(panel, L, nb, xs, hs, ys, rows, add); break;
    case Format::Q4_G32: q4_panel_x2<Format::Q4_G32, MT>(panel, L, nb, xs, hs, ys, rows, add); break;
    case Format::Q4_G64: q4_panel_x2<Format::Q4_G64, MT>(panel, L, nb, xs, hs, ys, rows, add); break;
    case Format::Q4_G128: q4_panel_x2<Format::Q4_G128, MT>(panel, L, nb, xs, hs, ys, rows, add); break;
    case Format::Q8_0: q8_panel_x2<MT>(panel, L, nb, xs, hs, ys, rows, add); break;
    default: break;
  }
}

// MT activation rows from row m0 of the batch against one panel's piece of slice s.
template <int MT>
void panel_rows_x2(const MatmulArgs& a, const uint8_t* piece, const PanelLayout& Ls, int64_t s,
                   const PromptAct* headers, int64_t m0, float* y0, int rows) {
  const int64_t nb = a.k / QK, b0 = s * kSliceBlocks;
  const block_q8_act* xs[MT];
  const PromptAct* hs[MT];
  float* ys[MT];
  for (int i = 0; i < MT; ++i) {
    xs[i] = a.xq + (m0 + i) * nb + b0;
    hs[i] = headers + (m0 + i) * nb + b0;
    ys[i] = y0 + (m0 + i) * a.n;
  }
  panel_tile_x2<MT>(a.fmt, piece, Ls, Ls.nb, xs, hs, ys, rows, s > 0);
}

// Slice by slice, the thread's panels' pieces in address order (panel.h): each piece
// (9-17 KiB) stays in L1 for all the rows, the slice's activations in L2.
void matmul_panels_x2(const MatmulArgs& a, int64_t begin, int64_t end) {
  const PanelLayout L = panel_layout(a.fmt, a.n, a.k);
  const PromptAct* headers = prompt_headers(a.fmt, a.xq, a.m * (a.k / QK));
  for (int64_t s = 0; s < L.slices(); ++s) {
    const PanelLayout Ls = L.piece(s);
    for (int64_t p = begin; p < end; ++p) {
      const uint8_t* piece = a.w + L.piece_offset(p, s);
      const int rows = panel_rows(a.n, p);
      float* y0 = a.y + p * kPanelRows;
      int64_t m = 0;
      for (; m + 8 <= a.m; m += 8) panel_rows_x2<8>(a, piece, Ls, s, headers, m, y0, rows);
      for (; m + 4 <= a.m; m += 4) panel_rows_x2<4>(a, piece, Ls, s, headers, m, y0, rows);
      for (; m < a.m; ++m) panel_rows_x2<1>(a, piece, Ls, s, headers, m, y0, rows);
    }
  }
}

template <int MT, bool HI, bool PF>
void panel_tile_hi(Format f, const uint8_t* panel, const PanelLayout& L, int64_t nb, const block_q8_act* const* xs,
                   float* const* ys, int rows, bool add) {
  switch (f) {
    case Format::Q4_0: q4_panel<Format::Q4_0, MT, HI, PF>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_1: q4_panel<Format::Q4_1, MT, HI, PF>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_G32: q4_panel<Format::Q4_G32, MT, HI, PF>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_G64: q4_panel<Format::Q4_G64, MT, HI, PF>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q4_G128: q4_panel<Format::Q4_G128, MT, HI, PF>(panel, L, nb, xs, ys, rows, add); break;
    case Format::Q8_0: q8_panel<MT, HI, PF>(panel, L, nb, xs, ys, rows, add); break;
    default: break;
  }
}

// The prefetching loops and the plain ones are separate instantiations: a run-time flag
// inside the loop read 77 % of the bandwidth where the loop without the prefetch read 85 %
// (one thread, six shapes).
template <int MT>
void panel_tile(bool precise, bool prefetch, Format f, const uint8_t* panel, const PanelLayout& L, int64_t nb,
                const block_q8_act* const* xs, float* const* ys, int rows, bool add) {
  if (precise) {
    if (prefetch) panel_tile_hi<MT, true, true>(f, panel, L, nb, xs, ys, rows, add);
    else panel_tile_hi<MT, true, false>(f, panel, L, nb, xs, ys, rows, add);
  } else {
    if (prefetch) panel_tile_hi<MT, false, true>(f, panel, L, nb, xs, ys, rows, add);
    else panel_tile_hi<MT, false, false>(f, panel, L, nb, xs, ys, rows, add);
  }
}

inline __m512 load16(Format f, const uint8_t* w, int64_t i, __mmask16 mask) {
  switch (f) {
    case Format::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const uint16_t*)w + i));
    case Format::BF16:
      return _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t*)w + i)), 16));
    default: return _mm512_maskz_loadu_ps(mask, (const float*)w + i);
  }
}

// x[i .. i + 16) of an activation row as f32: f32 as it is, or f16 (takes_f16_input).
inline __m512 load_x16(const float* x, int64_t i) { return _mm512_loadu_ps(x + i); }
inline __m512 load_x16(const uint16_t* x, int64_t i) {
  return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(x + i)));
}
inline __m512 load_x16(const float* x, int64_t i, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, x + i); }
inline __m512 load_x16(const uint16_t* x, int64_t i, __mmask16 mask) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, x + i));
}

// Dense weights, one row at a time: a thread's rows are contiguous, so the whole range is
// one sequential stream, which is what the hardware prefetchers follow best (four rows
// side by side made four 4 KiB streams, each too short for them to lock on: 12 GB/s of
// f16 from DRAM where one stream reads 40). Each converted weight vector feeds MT
// activation rows; with MT = 1 (decode), four independent FMA chains hide the latency.
template <Format F, int MT, typename X = float>
void dense_row(const uint8_t* w, const X* x, int64_t k, float* y, int64_t ldy) {
  constexpr int U = MT == 1 ? 4 : 1;  // independent chains per activation row
  __m512 acc[MT][U];
  for (int m = 0; m < MT; ++m)
    for (int u = 0; u < U; ++u) acc[m][u] = _mm512_setzero_ps();
  int64_t i = 0;
  constexpr int64_t wbytes = F == Format::F32 ? 4 : 2;  // per weight
  for (; i + 16 * U <= k; i += 16 * U) {
    if (MT == 1) prefetch_ahead(w + i * wbytes, 16 * U * wbytes);
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const __m512 wv = load16(F, w, i + 16 * u, (__mmask16)0xffff);
#pragma GCC unroll 4
      for (int m = 0; m < MT; ++m)
        acc[m][u] = _mm512_fmadd_ps(wv, load_x16(x + m * k, i + 16 * u), acc[m][u]);
    }
  }
  for (; i < k; i += 16) {  // the K tail: masked, so no scalar epilogue
    const __mmask16 mask = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1u);
    const __m512 wv = load16(F, w, i, mask);
    for (int m = 0; m < MT; ++m) acc[m][0] = _mm512_fmadd_ps(wv, load_x16(x + m * k, i, mask), acc[m][0]);
  }
  for (int m = 0; m < MT; ++m) {
    __m512 s = acc[m][0];
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[m][u]);
    y[m * ldy] = _mm512_reduce_add_ps(s);
  }
}

template <Format F>
void dense_rows(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const int64_t rb = row_bytes(F, a.k);
  if (a.xh) {  // decode of f16 weights (takes_f16_input)
    for (int64_t n = n0; n < n1; ++n) dense_row<F, 1>(a.w + n * rb, a.xh, a.k, a.y + n, a.n);
    return;
  }
  constexpr int MT = 4;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = a.w + n * rb;
    int64_t m = 0;
    for (; m + MT <= a.m; m += MT) dense_row<F, MT>(w, a.x + m * a.k, a.k, a.y + m * a.n + n, a.n);
    for (; m < a.m; ++m) dense_row<F, 1>(w, a.x + m * a.k, a.k, a.y + m * a.n + n, a.n);
  }
}

void matmul_avx512(const MatmulArgs& a, int64_t begin, int64_t end) {
  switch (a.fmt) {
    case Format::F32: dense_rows<Format::F32>(a, begin, end); return;
    case Format::F16: dense_rows<Format::F16>(a, begin, end); return;
    case Format::BF16: dense_rows<Format::BF16>(a, begin, end); return;
    default: break;
  }
  if (!a.panels) { matmul_ref(a, begin, end); return; }
  if (a.precise && a.prompt) { matmul_panels_x2(a, begin, end); return; }
  const PanelLayout L = panel_layout(a.fmt, a.n, a.k);
  const int64_t nb = a.k / QK;
  constexpr int MT = 4;  // 4 activation rows share each unpacked weight vector
  // Slice by slice (panel.h): the thread's pieces of a slice are one stream from DRAM,
  // and the slice's activation blocks stay in L1 from one piece to the next.
  const bool prefetch = L.panels * L.panel_bytes < kPrefetchBelowBytes || prefetch_large(a.fmt, a.precise);
  for (int64_t s = 0; s < L.slices(); ++s) {
    const PanelLayout Ls = L.piece(s);
    const int64_t b0 = s * kSliceBlocks;
    for (int64_t p = begin; p < end; ++p) {
      const uint8_t* piece = a.w + L.piece_offset(p, s);
      const int rows = panel_rows(a.n, p);
      float* y0 = a.y + p * kPanelRows;
      int64_t m = 0;
      for (; m + MT <= a.m; m += MT) {
        const block_q8_act* xs[MT] = {a.xq + m * nb + b0, a.xq + (m + 1) * nb + b0, a.xq + (m + 2) * nb + b0,
                                      a.xq + (m + 3) * nb + b0};
        float* ys[MT] = {y0 + m * a.n, y0 + (m + 1) * a.n, y0 + (m + 2) * a.n, y0 + (m + 3) * a.n};
        panel_tile<MT>(a.precise, prefetch, a.fmt, piece, Ls, Ls.nb, xs, ys, rows, s > 0);
      }
      for (; m < a.m; ++m) {
        const block_q8_act* xs[1] = {a.xq + m * nb + b0};
        float* ys[1] = {y0 + m * a.n};
        panel_tile<1>(a.precise, prefetch, a.fmt, piece, Ls, Ls.nb, xs, ys, rows, s > 0);
      }
    }
  }
}

uint64_t read_checksum_avx512(const uint8_t* p, int64_t bytes) {
  __m512i s[4];
  for (int i = 0; i < 4; ++i) s[i] = _mm512_setzero_si512();
  for (int64_t o = 0; o < bytes; o += 256) {
    for (int i = 0; i < 4; ++i) s[i] = _mm512_add_epi64(s[i], _mm512_load_si512((const void*)(p + o + 64 * i)));
  }
  const __m512i t = _mm512_xor_si512(_mm512_xor_si512(s[0], s[1]), _mm512_xor_si512(s[2], s[3]));
  return (uint64_t)_mm512_reduce_add_epi64(t);
}

}  // namespace

const KernelTable& kernels_avx512() {
  static const KernelTable t = [] {
    KernelTable k{Isa::Avx512, "avx512", true, quantize_act_avx512, round_act_f16_avx512, matmul_avx512,
                  read_checksum_avx512, attn_scores_f32_avx2, attn_scores_f16_avx2, softmax_avx2, attn_mix_f32_avx2,
                  attn_mix_f16_avx2, attn_scores_q8_avx2, attn_mix_q8_avx2, gemm_tiles_avx512, false, true, swiglu_avx2};
    k.attn_scores_f16_group = attn_scores_f16_group_avx2;  // the AVX2 attention kernels serve here too
    return k;
  }();
  return t;
}

}  // namespace linly
