// Loads of dense weight rows (f32, f16, bf16) as f32, for the AVX2 units only (they are
// compiled with -mavx2 -mfma -mf16c). Anonymous namespace and static inline for the
// reason fp16.h gives: no AVX2 body may be merged into a unit built for another ISA.
#pragma once
#include <immintrin.h>

#include "quant/formats.h"
#include "quant/fp16.h"

namespace linly {
namespace {

// w[i .. i + 8) of one row as f32.
static inline __m256 load8(Format f, const uint8_t* w, int64_t i) {
  switch (f) {
    case Format::F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)((const uint16_t*)w + i)));
    case Format::BF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)((const uint16_t*)w + i))), 16));
    default: return _mm256_loadu_ps((const float*)w + i);
  }
}

static inline float load1(Format f, const uint8_t* w, int64_t i) {
  switch (f) {
    case Format::F16: return fp16_to_fp32(((const uint16_t*)w)[i]);
    case Format::BF16: return bf16_to_fp32(((const uint16_t*)w)[i]);
    default: return ((const float*)w)[i];
  }
}

}  // namespace
}  // namespace linly
