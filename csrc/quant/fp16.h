// Scalar half-precision conversions, bit-exact with the hardware (F16C) ones:
// round-to-nearest-even, subnormals kept, Inf/NaN preserved.
// Everything here is `static inline` on purpose: the ISA translation units include
// this header with -mavx2/-mavx512*, and internal linkage keeps the linker from
// picking an AVX-512 copy of a helper for the portable code.
#pragma once
#include <cstdint>
#include <cstring>

namespace linly {

static inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

static inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // Inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    // Subnormal half: value = man * 2^-24, exact in f32.
    float v = (float)man * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t fp32_to_fp16(float f) {
  const uint32_t x = f32_bits(f);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // Inf or NaN (keep NaN quiet and non-zero)
    return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? (0x200 | ((ax >> 13) & 0x3ff)) : 0));
  }
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // rounds to >= 65520: overflow to Inf
  if (ax < 0x38800000u) {
    // Result is subnormal (or zero) in half: scale into integer units of 2^-24 and
    // round to nearest even, which the FPU does for us in float arithmetic.
    const float v = bits_f32(ax) * 16777216.0f;  // exact: power-of-two scaling
    // v < 1024; adding 2^23 forces rounding at the integer position (RNE).
    const float r = v + 8388608.0f;
    const uint32_t m = f32_bits(r) - 0x4b000000u;
    return (uint16_t)(sign | m);
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits (RNE).
  uint32_t m = ax + ((uint32_t)(15 - 127) << 23);
  const uint32_t lsb = (m >> 13) & 1u;
  m += 0xfffu + lsb;
  return (uint16_t)(sign | (m >> 13));
}

static inline float bf16_to_fp32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static inline uint16_t fp32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return (uint16_t)(x >> 16);
}

}  // namespace linly
