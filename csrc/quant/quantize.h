// Making packed weights: f32 rows -> each format, and back. Scalar and exact; these
// run once at conversion time, so clarity beats speed here (the caller threads them).
#pragma once
#include <cstdint>

#include "quant/formats.h"

namespace linly {

// x: [k] f32 -> y: row_bytes(f, k) bytes in the on-disk layout. k % block_elems == 0.
void quantize_row(Format f, const float* x, void* y, int64_t k);
// x: row_bytes(f, k) bytes -> y: [k] f32.
void dequantize_row(Format f, const void* x, float* y, int64_t k);

// q8_0 with llama.cpp's scale, d = amax/127, no search: for the q8_0 KV cache, written
// once per token inside the decode step, where quantize_row's scale search (48 candidate
// steps per block) would cost more time than its smaller error is worth. k % 32 == 0.
void quantize_row_q8_0_amax(const float* x, block_q8_0* y, int64_t k);

// Activations for the integer kernels: per block of 32, d = amax/127, q = rint(x/d)
// (round-to-nearest-even, as cvtps2dq does), s = Σq. Every ISA's version must produce
// exactly these bytes; tests check that.
void quantize_row_act_ref(const float* x, block_q8_act* y, int64_t k);

// f16 weights at one activation row (decode) multiply x rounded to f16, as llama.cpp
// does: half the activation bytes, so the input of an 11008-long row (22 KiB instead of
// 44) stays in L1 beside the weight stream (benchmarks/NOTES.md, session 13).
// (Not inline: the ISA units include this header, fp16.h says why that matters.)
bool takes_f16_input(Format weights, int64_t m);

// y = x rounded to f16 (nearest even), or false, leaving y unspecified, when some |x|
// would round past the f16 range (>= 65520), NaN or Inf: the caller then keeps x in f32,
// so a large activation is never turned into Inf. Every ISA's twin gives these bits.
bool round_act_f16_ref(const float* x, uint16_t* y, int64_t k);

}  // namespace linly
