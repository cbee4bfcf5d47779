// One row of the dispatch table per ISA. Adding an ISA is adding a file and a row.
#pragma once
#include <cstdint>

#include "kernels/attention_ref.h"
#include "quant/formats.h"

namespace linly {

enum class Isa : int { Scalar = 0, Avx2, Avx512, Amx };

// y[m, n] = Σ_k x[m, k] · W[n, k]  for the rows (or panels) in [begin, end).
struct MatmulArgs {
  Format fmt;
  const uint8_t* w;         // [n, row_bytes] on-disk rows, or panels (panel.h) when `panels`
  bool panels;
  int64_t n, k, m;
  const float* x;           // [m, k] f32 (dense formats)
  const block_q8_act* xq;   // [m, k/32]  (integer formats; null in matmul_f32)
  float* y;                 // [m, n]
  bool precise = false;     // integer formats: also use the activation residual (formats.h)
  const uint16_t* xh = nullptr;  // [m, k] x rounded to f16, read instead of x when set
                                 // (dense f16 at decode: takes_f16_input, quantize.h)
  bool prompt = false;  // precise rows of a prompt: an ISA may take its many-row kernels
                        // (Activations::Int8x2Prompt; AVX2, AVX-512 and AMX do, scalar ignores it)
  const uint8_t* xs = nullptr;  // matmul_f32: x as the table's prepare_prompt_input laid it
                                // out for all of [m, k], when the caller ran that step
  bool x_bf16 = false;  // matmul_f32: x may be rounded to bf16 (Activations::Bf16Prompt)
};

struct KernelTable {
  Isa isa;
  const char* name;
  bool uses_panels;  // integer formats are repacked into 16-row panels for this ISA
  void (*quantize_act)(const float* x, block_q8_act* y, int64_t k);
  bool (*round_act_f16)(const float* x, uint16_t* y, int64_t k);  // twin of round_act_f16_ref
  // [begin, end) counts panels when args.panels, rows otherwise.
  void (*matmul)(const MatmulArgs& args, int64_t begin, int64_t end);
  // Reads `bytes` (multiple of 256, 64-byte aligned) with several independent
  // accumulators; returns a value that depends on every byte so nothing is elided.
  uint64_t (*read_checksum)(const uint8_t* p, int64_t bytes);
  // Attention over one head (attention_ref.h has the meaning; these are its twins).
  void (*attn_scores_f32)(const float* q, const float* k, int64_t stride, int64_t len, int64_t hd, float scale,
                          float* scores);
  void (*attn_scores_f16)(const float* q, const uint16_t* k, int64_t stride, int64_t len, int64_t hd, float scale,
                          float* scores);
  void (*softmax)(float* x, int64_t len);
  void (*attn_mix_f32)(const float* p, const float* v, int64_t stride, int64_t len, int64_t hd, float* out);
  void (*attn_mix_f16)(const float* p, const uint16_t* v, int64_t stride, int64_t len, int64_t hd, float* out);
  void (*attn_scores_q8)(const float* q, const block_q8_0* k, int64_t stride, int64_t len, int64_t hd, float scale,
                         float* scores);
  void (*attn_mix_q8)(const float* p, const block_q8_0* v, int64_t stride, int64_t len, int64_t hd, float* out);
  // y = x · Wᵀ with x in f32 (args.xq null) against the dequantised weights; same units
  // as matmul. Made for prompts: many rows share each dequantised tile.
  void (*matmul_f32)(const MatmulArgs& args, int64_t begin, int64_t end);
  // Whether matmul_f32 beats the integer kernels' int8x2 path on prompt-sized batches
  // here (measured per ISA; benchmarks/NOTES.md).
  bool f32_prompts;
  // Whether matmul_f32 beats matmul on prompt-sized batches for dense formats.
  bool dense_prompts;
  void (*swiglu)(float* gate, const float* up, int64_t n);  // twin of swiglu_ref (elementwise_ref.h)
  // Optional (null where matmul_f32 reads x as it is): a step that lays x [m, k] out once
  // per call for matmul_f32 on panels of integer formats (and f16: f16_prompt_input),
  // instead of every thread doing it for itself. prompt_input_bytes(m, k) bytes; prepare_prompt_input writes the part
  // of row tiles [t0, t1) of prompt_input_tiles(m), so callers can split it over threads,
  // and pass the result as MatmulArgs::xs (where this step exists, matmul_f32 on panels
  // of integer formats takes its fast path only with it). k is a multiple of 32.
  int64_t (*prompt_input_tiles)(int64_t m) = nullptr;
  // Whether matmul_f32 also reads the prompt input for row-major f16 weights with k a
  // multiple of 32; its callers then hand it row ranges in whole 16-row panels.
  bool f16_prompt_input = false;
  // Attention scores for the G query heads of one KV head over an f16 cache, reading each
  // K row once for them (attention_ref.h; the scalar twin unless an ISA has its own).
  void (*attn_scores_f16_group)(const float* q, int64_t G, const uint16_t* k, int64_t stride, int64_t len,
                                int64_t hd, float scale, float* scores, int64_t ld) = attn_scores_f16_group_ref;
  // Whether matmul_f32 with x rounded to bf16 (MatmulArgs::x_bf16) has a kernel of its own
  // that beats the int8 path on prompt-sized batches (the fast mode's prompts; AMX only).
  bool bf16_prompts = false;
  int64_t (*prompt_input_bytes)(int64_t m, int64_t k) = nullptr;
  void (*prepare_prompt_input)(const float* x, int64_t m, int64_t k, int64_t t0, int64_t t1, uint8_t* out) = nullptr;
};

const KernelTable& kernels_scalar();
#if defined(LINLY_X86)
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
#if defined(LINLY_AMX)
// The AVX-512 row with prompt rows on the AMX tile unit (kernels_amx.cpp).
const KernelTable& kernels_amx();
#endif
// AVX2 attention kernels, shared by the AVX-512 row (every AVX-512 CPU has AVX2).
void attn_scores_f32_avx2(const float* q, const float* k, int64_t stride, int64_t len, int64_t hd, float scale,
                          float* scores);
void attn_scores_f16_avx2(const float* q, const uint16_t* k, int64_t stride, int64_t len, int64_t hd, float scale,
                          float* scores);
void softmax_avx2(float* x, int64_t len);
void attn_mix_f32_avx2(const float* p, const float* v, int64_t stride, int64_t len, int64_t hd, float* out);
void attn_mix_f16_avx2(const float* p, const uint16_t* v, int64_t stride, int64_t len, int64_t hd, float* out);
void attn_scores_q8_avx2(const float* q, const block_q8_0* k, int64_t stride, int64_t len, int64_t hd, float scale,
                         float* scores);
void attn_mix_q8_avx2(const float* p, const block_q8_0* v, int64_t stride, int64_t len, int64_t hd, float* out);
void swiglu_avx2(float* gate, const float* up, int64_t n);
void attn_scores_f16_group_avx2(const float* q, int64_t G, const uint16_t* k, int64_t stride, int64_t len,
                                int64_t hd, float scale, float* scores, int64_t ld);
void gemm_tiles_avx2(const MatmulArgs& args, int64_t begin, int64_t end);    // gemm_tiles_avx2.cpp
// Precise prompt rows (args.prompt) as int16 products; false (nothing done) when its
// per-thread buffer could not be had. gemm_i16_avx2.cpp.
bool gemm_i16_avx2(const MatmulArgs& args, int64_t begin, int64_t end);
void gemm_tiles_avx512(const MatmulArgs& args, int64_t begin, int64_t end);  // gemm_tiles_avx512.cpp
#endif

}  // namespace linly
