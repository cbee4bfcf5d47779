// Attention over one head and the KV cache: the scalar reference kernels (the portable
// path and the twins the SIMD versions are tested against).
#pragma once
#include <cstdint>

#include "quant/formats.h"

namespace linly {

// scores[j] = scale · (q · k_j), k_j = k + j·stride, for j < len; head size hd.
void attn_scores_f32_ref(const float* q, const float* k, int64_t stride, int64_t len, int64_t hd, float scale,
                         float* scores);
void attn_scores_f16_ref(const float* q, const uint16_t* k, int64_t stride, int64_t len, int64_t hd, float scale,
                         float* scores);
// x[0..len) <- softmax(x)
void softmax_ref(float* x, int64_t len);
// out[i] = Σ_j p[j] · v_j[i], v_j = v + j·stride
void attn_mix_f32_ref(const float* p, const float* v, int64_t stride, int64_t len, int64_t hd, float* out);
void attn_mix_f16_ref(const float* p, const uint16_t* v, int64_t stride, int64_t len, int64_t hd, float* out);
// Grouped-query attention: the scores of G query heads that share one K head. q [G][hd]
// contiguous, scores G rows of ld ≥ len floats; the same as G calls of
// attn_scores_f16_ref (which is what the reference does).
void attn_scores_f16_group_ref(const float* q, int64_t G, const uint16_t* k, int64_t stride, int64_t len,
                               int64_t hd, float scale, float* scores, int64_t ld);
// q8_0 cache (int8 KV): rows of hd/32 blocks, `stride` counted in blocks; hd % 32 == 0.
void attn_scores_q8_ref(const float* q, const block_q8_0* k, int64_t stride, int64_t len, int64_t hd, float scale,
                        float* scores);
void attn_mix_q8_ref(const float* p, const block_q8_0* v, int64_t stride, int64_t len, int64_t hd, float* out);

}  // namespace linly
