#include "quant/matmul_ref.h"

#include "kernels/attention_ref.h"
#include "kernels/elementwise_ref.h"
#include "quant/fp16.h"
#include "quant/quantize.h"

#include <vector>

namespace linly {

namespace {

// Σ over one 32-block of (4-bit code) × (int8 activation); nibble order as on disk.
inline int32_t dot_q4_block(const uint8_t* qs, const int8_t* xq) {
  int32_t s = 0;
  for (int j = 0; j < QK / 2; ++j) s += (qs[j] & 0x0f) * xq[j] + (qs[j] >> 4) * xq[j + QK / 2];
  return s;
}

inline int32_t dot_q8_block(const int8_t* qs, const int8_t* xq) {
  int32_t s = 0;
  for (int j = 0; j < QK; ++j) s += qs[j] * xq[j];
  return s;
}

double dot_row(Format f, const uint8_t* w, const block_q8_act* xq, const float* x, int64_t k, bool hi) {
  double acc = 0.0;
  const int64_t nb = k / QK;
  switch (f) {
    case Format::F32:
      for (int64_t i = 0; i < k; ++i) acc += (double)((const float*)w)[i] * x[i];
      break;
    case Format::F16:
      for (int64_t i = 0; i < k; ++i) acc += (double)fp16_to_fp32(((const uint16_t*)w)[i]) * x[i];
      break;
    case Format::BF16:
      for (int64_t i = 0; i < k; ++i) acc += (double)bf16_to_fp32(((const uint16_t*)w)[i]) * x[i];
      break;
    case Format::Q4_0: {
      const block_q4_0* b = (const block_q4_0*)w;
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const int32_t isum = dot_q4_block(b[i].qs, xq[i].qs) - 8 * xq[i].s;  // codes are q-8
        acc += (double)(d * xq[i].d) * (double)isum;
        if (hi) acc += (double)(d * xq[i].d2) * (double)(dot_q4_block(b[i].qs, xq[i].r) - 8 * xq[i].s2);
      }
      break;
    }
    case Format::Q4_1: {
      const block_q4_1* b = (const block_q4_1*)w;
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(b[i].d), m = fp16_to_fp32(b[i].m);
        acc += (double)(d * xq[i].d) * (double)dot_q4_block(b[i].qs, xq[i].qs) +
               (double)(m * xq[i].d) * (double)xq[i].s;
        if (hi)
          acc += (double)(d * xq[i].d2) * (double)dot_q4_block(b[i].qs, xq[i].r) +
                 (double)(m * xq[i].d2) * (double)xq[i].s2;
      }
      break;
    }
    case Format::Q8_0: {
      const block_q8_0* b = (const block_q8_0*)w;
      for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        acc += (double)(d * xq[i].d) * (double)dot_q8_block(b[i].qs, xq[i].qs);
        if (hi) acc += (double)(d * xq[i].d2) * (double)dot_q8_block(b[i].qs, xq[i].r);
      }
      break;
    }
    case Format::Q4_G32: case Format::Q4_G64: case Format::Q4_G128: {
      const int G = q4_group_size(f);
      const int bytes = format_info(f).block_bytes;
      for (int64_t g = 0; g < k / G; ++g) {
        const uint8_t* blk = w + g * bytes;
        const float d = fp16_to_fp32(*(const uint16_t*)blk);
        const int z = blk[2];
        for (int c = 0; c < G / QK; ++c) {
          const block_q8_act& a = xq[g * (G / QK) + c];
          const int32_t isum = dot_q4_block(blk + 4 + c * QK / 2, a.qs) - z * a.s;
          acc += (double)(d * a.d) * (double)isum;
          if (hi) acc += (double)(d * a.d2) * (double)(dot_q4_block(blk + 4 + c * QK / 2, a.r) - z * a.s2);
        }
      }
      break;
    }
    case Format::kCount: break;
  }
  return acc;
}

void matmul_scalar(const MatmulArgs& a, int64_t n0, int64_t n1) { matmul_ref(a, n0, n1); }

uint64_t read_checksum_scalar(const uint8_t* p, int64_t bytes) {
  const uint64_t* q = (const uint64_t*)p;
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int64_t i = 0; i < bytes / 8; i += 4) { s0 += q[i]; s1 += q[i + 1]; s2 += q[i + 2]; s3 += q[i + 3]; }
  return s0 ^ s1 ^ s2 ^ s3;
}

}  // namespace

void matmul_ref(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const int64_t rb = row_bytes(a.fmt, a.k);
  const int64_t nb = a.k / QK;
  if (format_info(a.fmt).integer_path && !a.xq) {  // f32 activations: dequantise the row, multiply in double
    std::vector<float> w((size_t)a.k);
    for (int64_t n = n0; n < n1; ++n) {
      dequantize_row(a.fmt, a.w + n * rb, w.data(), a.k);
      for (int64_t m = 0; m < a.m; ++m) a.y[m * a.n + n] = (float)dot_row(Format::F32, (const uint8_t*)w.data(),
                                                                          nullptr, a.x + m * a.k, a.k, false);
    }
    return;
  }
  thread_local std::vector<float> widened;  // [m, k] the f16 input, exactly, when there is one
  const float* x = a.x;
  if (a.xh) {
    if (widened.size() < (size_t)(a.m * a.k)) widened.resize((size_t)(a.m * a.k));
    for (int64_t i = 0; i < a.m * a.k; ++i) widened[(size_t)i] = fp16_to_fp32(a.xh[i]);
    x = widened.data();
  }
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t m = 0; m < a.m; ++m) {
      a.y[m * a.n + n] = (float)dot_row(a.fmt, a.w + n * rb, a.xq ? a.xq + m * nb : nullptr,
                                        x ? x + m * a.k : nullptr, a.k, a.precise);
    }
  }
}

const KernelTable& kernels_scalar() {
  static const KernelTable t{Isa::Scalar, "scalar", false, quantize_row_act_ref, round_act_f16_ref, matmul_scalar,
                             read_checksum_scalar, attn_scores_f32_ref, attn_scores_f16_ref, softmax_ref,
                             attn_mix_f32_ref, attn_mix_f16_ref, attn_scores_q8_ref, attn_mix_q8_ref,
                             matmul_scalar, false, false, swiglu_ref};
  return t;
}

}  // namespace linly
