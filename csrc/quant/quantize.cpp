#include "quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant/fp16.h"

namespace linly {

namespace {

// GGUF's reference rounding for Q4_0: d = max/-8 with the signed extreme, so the
// extreme lands exactly on code 0 and the symmetric code spends all 16 levels.
void quantize_q4_0(const float* x, block_q4_0* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += QK) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < QK; ++j) {
      if (std::fabs(x[j]) > amax) { amax = std::fabs(x[j]); max = x[j]; }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    for (int j = 0; j < QK / 2; ++j) {
      const int q0 = std::min(15, (int)(int8_t)(x[j] * id + 8.5f));
      const int q1 = std::min(15, (int)(int8_t)(x[j + QK / 2] * id + 8.5f));
      y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

void quantize_q4_1(const float* x, block_q4_1* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += QK) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < QK; ++j) { mn = std::min(mn, x[j]); mx = std::max(mx, x[j]); }
    const float d = (mx - mn) / 15.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = fp32_to_fp16(d);
    y[b].m = fp32_to_fp16(mn);
    for (int j = 0; j < QK / 2; ++j) {
      const int q0 = std::min(15, (int)(int8_t)((x[j] - mn) * id + 0.5f));
      const int q1 = std::min(15, (int)(int8_t)((x[j + QK / 2] - mn) * id + 0.5f));
      y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
  }
}

// Rounds to nearest, ties to even (as nearbyint in the default mode) for |v| < 2^22, in
// plain float adds the compiler vectorises at the baseline ISA: nearbyint there is a libm
// call per element, which made the scale search below 5x slower.
inline float round_nearest_small(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: the add drops v's fraction bits
  return (v + kMagic) - kMagic;
}

inline float q8_code(float v, float id) { return std::clamp(round_nearest_small(v * id), -127.0f, 127.0f); }

float block_amax(const float* x) {
  float amax = 0.0f;
  for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
  return amax;
}

// Writes one q8_0 block with step d16: codes rounded against the stored (f16) step.
void store_q8_0_block(const float* x, uint16_t d16, block_q8_0* y) {
  const float d = fp16_to_fp32(d16);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = d16;
  for (int j = 0; j < QK; ++j) y->qs[j] = (int8_t)q8_code(x[j], id);
}

// The scale is chosen by least squared error among the steps amax/k, k = 127 down to 80,
// each rounded to f16 first so the error measured is the error stored. Each candidate
// puts the block's largest value on a code exactly; a step a little above amax/127 often
// lines the 255 levels up with the other values better than the extreme one does. That
// cuts the error of weights that were themselves quantised (a Q4_1 GGUF re-quantised to
// q8_0: 16 levels per block) by 5x and that of plain f32 weights by a few per cent (the
// measurements are in benchmarks/NOTES.md). Never below amax/127, so no code clips and
// the worst error stays within half a (at most 127/80 times wider) step. The bytes stay
// plain Q8_0.
void quantize_q8_0(const float* x, block_q8_0* y, int64_t nb) {
  constexpr int kLargestCode = 127, kSmallestCode = 80;
  for (int64_t b = 0; b < nb; ++b, x += QK) {
    const float amax = block_amax(x);
    uint16_t best_d16 = fp32_to_fp16(amax / 127.0f);
    float best_err = INFINITY;
    for (int k = kLargestCode; k >= kSmallestCode; --k) {
      const uint16_t d16 = fp32_to_fp16(amax / (float)k);
      const float d = fp16_to_fp32(d16);
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      // hot: 48 candidates per block. Eight running sums, not one, so the compiler may
      // keep them in vector lanes (a single float sum has to stay in order).
      float acc[8] = {};
      for (int j = 0; j < QK; j += 8) {
        for (int l = 0; l < 8; ++l) {
          const float e = x[j + l] - q8_code(x[j + l], id) * d;
          acc[l] += e * e;
        }
      }
      const float err = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      if (err < best_err) { best_err = err; best_d16 = d16; }
      if (err == 0.0f) break;  // exact (a Q8_0 source's own step): nothing can beat it
    }
    store_q8_0_block(x, best_d16, &y[b]);
  }
}

// Range widened to include 0 (as GPTQ does) so that zero is exactly representable and a
// constant block is exact. Codes are computed against the stored (f16) scale so that
// the stored scale is the one the rounding bound holds for.
template <int G>
void quantize_q4_g(const float* x, block_q4_g<G>* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, x += G) {
    float mn = 0.0f, mx = 0.0f;
    for (int j = 0; j < G; ++j) { mn = std::min(mn, x[j]); mx = std::max(mx, x[j]); }
    const uint16_t d16 = fp32_to_fp16((mx - mn) / 15.0f);
    const float d = fp16_to_fp32(d16);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const int z = d != 0.0f ? std::clamp((int)std::nearbyint(-mn * id), 0, 15) : 0;
    y[b].d = d16;
    y[b].z = (uint8_t)z;
    y[b].reserved = 0;
    for (int c = 0; c < G / QK; ++c) {
      const float* xc = x + c * QK;
      for (int j = 0; j < QK / 2; ++j) {
        const int q0 = std::clamp((int)std::nearbyint(xc[j] * id) + z, 0, 15);
        const int q1 = std::clamp((int)std::nearbyint(xc[j + QK / 2] * id) + z, 0, 15);
        y[b].qs[c * QK / 2 + j] = (uint8_t)(q0 | (q1 << 4));
      }
    }
  }
}

template <int G>
void dequantize_q4_g(const block_q4_g<G>* x, float* y, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b) {
    const float d = fp16_to_fp32(x[b].d);
    const int z = x[b].z;
    for (int c = 0; c < G / QK; ++c) {
      for (int j = 0; j < QK / 2; ++j) {
        const uint8_t v = x[b].qs[c * QK / 2 + j];
        y[c * QK + j] = d * (float)((v & 0x0f) - z);
        y[c * QK + j + QK / 2] = d * (float)((v >> 4) - z);
      }
    }
    y += G;
  }
}

}  // namespace

// llama.cpp's rule, d = amax/127, for the KV cache.
void quantize_row_q8_0_amax(const float* x, block_q8_0* y, int64_t k) {
  for (int64_t b = 0; b < k / QK; ++b, x += QK) store_q8_0_block(x, fp32_to_fp16(block_amax(x) / 127.0f), &y[b]);
}

void quantize_row(Format f, const float* x, void* y, int64_t k) {
  const int64_t nb = k / format_info(f).block_elems;
  switch (f) {
    case Format::F32: std::copy(x, x + k, (float*)y); break;
    case Format::F16: for (int64_t i = 0; i < k; ++i) ((uint16_t*)y)[i] = fp32_to_fp16(x[i]); break;
    case Format::BF16: for (int64_t i = 0; i < k; ++i) ((uint16_t*)y)[i] = fp32_to_bf16(x[i]); break;
    case Format::Q4_0: quantize_q4_0(x, (block_q4_0*)y, nb); break;
    case Format::Q4_1: quantize_q4_1(x, (block_q4_1*)y, nb); break;
    case Format::Q8_0: quantize_q8_0(x, (block_q8_0*)y, nb); break;
    case Format::Q4_G32: quantize_q4_g<32>(x, (block_q4_g<32>*)y, nb); break;
    case Format::Q4_G64: quantize_q4_g<64>(x, (block_q4_g<64>*)y, nb); break;
    case Format::Q4_G128: quantize_q4_g<128>(x, (block_q4_g<128>*)y, nb); break;
    case Format::kCount: break;
  }
}

void dequantize_row(Format f, const void* x, float* y, int64_t k) {
  const int64_t nb = k / format_info(f).block_elems;
  switch (f) {
    case Format::F32: std::copy((const float*)x, (const float*)x + k, y); break;
    case Format::F16: for (int64_t i = 0; i < k; ++i) y[i] = fp16_to_fp32(((const uint16_t*)x)[i]); break;
    case Format::BF16: for (int64_t i = 0; i < k; ++i) y[i] = bf16_to_fp32(((const uint16_t*)x)[i]); break;
    case Format::Q4_0: {
      const block_q4_0* b = (const block_q4_0*)x;
      for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK / 2; ++j) {
          y[j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
          y[j + QK / 2] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
      }
      break;
    }
    case Format::Q4_1: {
      const block_q4_1* b = (const block_q4_1*)x;
      for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        for (int j = 0; j < QK / 2; ++j) {
          y[j] = d * (float)(b[i].qs[j] & 0x0f) + m;
          y[j + QK / 2] = d * (float)(b[i].qs[j] >> 4) + m;
        }
      }
      break;
    }
    case Format::Q8_0: {
      const block_q8_0* b = (const block_q8_0*)x;
      for (int64_t i = 0; i < nb; ++i, y += QK) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK; ++j) y[j] = d * (float)b[i].qs[j];
      }
      break;
    }
    case Format::Q4_G32: dequantize_q4_g<32>((const block_q4_g<32>*)x, y, nb); break;
    case Format::Q4_G64: dequantize_q4_g<64>((const block_q4_g<64>*)x, y, nb); break;
    case Format::Q4_G128: dequantize_q4_g<128>((const block_q4_g<128>*)x, y, nb); break;
    case Format::kCount: break;
  }
}

bool takes_f16_input(Format weights, int64_t m) { return weights == Format::F16 && m == 1; }

bool round_act_f16_ref(const float* x, uint16_t* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, 4);
    if ((bits & 0x7fffffffu) >= 0x477ff000u) return false;
    y[i] = fp32_to_fp16(x[i]);
  }
  return true;
}

void quantize_row_act_ref(const float* x, block_q8_act* y, int64_t k) {
  for (int64_t b = 0; b < k / QK; ++b, x += QK) {
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const float d2 = d / 254.0f;
    const float id2 = d2 != 0.0f ? 1.0f / d2 : 0.0f;
    int32_t s = 0, s2 = 0;
    for (int j = 0; j < QK; ++j) {
      const int q = (int)std::nearbyint(x[j] * id);
      const float e = x[j] - d * (float)q;  // |e| ≤ d/2, so |r| ≤ 127 (clamped for rounding slop)
      const int r = std::clamp((int)std::nearbyint(e * id2), -127, 127);
      y[b].qs[j] = (int8_t)q;
      y[b].r[j] = (int8_t)r;
      s += q;
      s2 += r;
    }
    y[b].d = d;
    y[b].d2 = d2;
    y[b].s = s;
    y[b].s2 = s2;
  }
}

}  // namespace linly
