// Device entry points of layers.cu (pointers in device memory, launched on `s`).
#pragma once
#include "api_impl.cuh"

namespace linly {
namespace cuda {

// The scores of one head live in shared memory: 44 KiB of floats under the default
// 48 KiB limit. Longer contexts need the split-K kernel (not built yet).
constexpr int kAttentionDecodeMaxLen = 11264;

void rmsnorm(const half* x, const float* w, half* y, int64_t rows, int64_t d, float eps, cudaStream_t s);
void swiglu(const half* gate, const half* up, half* out, int64_t count, cudaStream_t s);
void rope(half* v, const int* pos, const float* cos_t, const float* sin_t, int64_t rows, int heads, int hd,
          cudaStream_t s);
void attention_decode(const half* q, const half* kc, const half* vc, half* out, int len, int heads, int kv_heads,
                      int hd, float scale, cudaStream_t s);

// The decoder's fused steps (device pointers; ids and positions in device memory).
void embed(const half* table, const int* ids, float* x, int64_t rows, int64_t d, cudaStream_t s);
void add_rmsnorm(float* x, const half* delta, const float* w, half* y, int64_t rows, int64_t d, float eps,
                 cudaStream_t s);
void qkv_post(const half* qkv, const float* bq, const float* bk, const float* bv, const float* cos_t,
              const float* sin_t, const int* pos, half* q_out, half* kc, half* vc, int64_t rows, int heads,
              int kv_heads, int hd, cudaStream_t s);
void swiglu_rows(const half* gu, half* out, int64_t rows, int64_t ffn, cudaStream_t s);

// Attention of `rows` query rows over a layer's cache (attention.cu): row r sees cache
// positions 0..pos[r]. Split-K: each block scores one split of attention_split_len positions with
// its own softmax statistics, a second kernel merges the splits. The launch shape
// depends on max_context only, not on the positions, so a captured graph replays it.
// A decode step (one row) cuts the cache finely, so that even a short context gives
// heads × splits blocks to fill the GPU; prompt rows already give rows × heads blocks.
constexpr int kMaxSplitLen = 256;
constexpr int kMaxHeadDim = 256;
inline int attention_split_len(int64_t rows) { return rows == 1 ? 32 : kMaxSplitLen; }
inline int64_t attention_splits(int64_t max_context, int64_t rows) {
  const int len = attention_split_len(rows);
  return (max_context + len - 1) / len;
}
// partial: [rows][heads][splits][hd] f32 and stats [rows][heads][splits][2] f32 scratch.
void attention_rows(const half* q, const half* kc, const half* vc, const int* pos, float* partial, float* stats,
                    half* out, int64_t rows, int heads, int kv_heads, int hd, int64_t max_context, float scale,
                    cudaStream_t s);

}  // namespace cuda
}  // namespace linly
