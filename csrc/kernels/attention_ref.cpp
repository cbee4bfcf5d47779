#include "kernels/attention_ref.h"

#include <algorithm>
#include <cmath>

#include "quant/fp16.h"

namespace linly {

void attn_scores_f32_ref(const float* q, const float* k, int64_t stride, int64_t len, int64_t hd, float scale,
                         float* scores) {
  for (int64_t j = 0; j < len; ++j) {
    const float* kj = k + j * stride;
    double s = 0.0;
    for (int64_t i = 0; i < hd; ++i) s += (double)q[i] * kj[i];
    scores[j] = (float)s * scale;
  }
}

void attn_scores_f16_ref(const float* q, const uint16_t* k, int64_t stride, int64_t len, int64_t hd, float scale,
                         float* scores) {
  for (int64_t j = 0; j < len; ++j) {
    const uint16_t* kj = k + j * stride;
    double s = 0.0;
    for (int64_t i = 0; i < hd; ++i) s += (double)q[i] * fp16_to_fp32(kj[i]);
    scores[j] = (float)s * scale;
  }
}

void softmax_ref(float* x, int64_t len) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < len; ++j) mx = std::max(mx, x[j]);
  double sum = 0.0;
  for (int64_t j = 0; j < len; ++j) {
    x[j] = std::exp(x[j] - mx);
    sum += x[j];
  }
  const float inv = (float)(1.0 / sum);
  for (int64_t j = 0; j < len; ++j) x[j] *= inv;
}

void attn_mix_f32_ref(const float* p, const float* v, int64_t stride, int64_t len, int64_t hd, float* out) {
  std::fill(out, out + hd, 0.0f);
  for (int64_t j = 0; j < len; ++j)
    for (int64_t i = 0; i < hd; ++i) out[i] += p[j] * v[j * stride + i];
}

void attn_mix_f16_ref(const float* p, const uint16_t* v, int64_t stride, int64_t len, int64_t hd, float* out) {
  std::fill(out, out + hd, 0.0f);
  for (int64_t j = 0; j < len; ++j)
    for (int64_t i = 0; i < hd; ++i) out[i] += p[j] * fp16_to_fp32(v[j * stride + i]);
}

void attn_scores_f16_group_ref(const float* q, int64_t G, const uint16_t* k, int64_t stride, int64_t len,
                               int64_t hd, float scale, float* scores, int64_t ld) {
  for (int64_t g = 0; g < G; ++g) attn_scores_f16_ref(q + g * hd, k, stride, len, hd, scale, scores + g * ld);
}

void attn_scores_q8_ref(const float* q, const block_q8_0* k, int64_t stride, int64_t len, int64_t hd, float scale,
                        float* scores) {
  for (int64_t j = 0; j < len; ++j) {
    const block_q8_0* kj = k + j * stride;
    double s = 0.0;
    for (int64_t b = 0; b < hd / QK; ++b) {
      double part = 0.0;
      for (int i = 0; i < QK; ++i) part += (double)q[b * QK + i] * kj[b].qs[i];
      s += part * fp16_to_fp32(kj[b].d);
    }
    scores[j] = (float)s * scale;
  }
}

void attn_mix_q8_ref(const float* p, const block_q8_0* v, int64_t stride, int64_t len, int64_t hd, float* out) {
  std::fill(out, out + hd, 0.0f);
  for (int64_t j = 0; j < len; ++j)
    for (int64_t b = 0; b < hd / QK; ++b) {
      const float w = p[j] * fp16_to_fp32(v[j * stride + b].d);
      for (int i = 0; i < QK; ++i) out[b * QK + i] += w * (float)v[j * stride + b].qs[i];
    }
}

}  // namespace linly
