// Attention over the fp16 KV cache for decode and prefill rows, split along the cache.
//
// Why split: at batch 1 a decode step has only `heads` query rows, too few blocks to
// fill the GPU, and a block per head would walk the whole cache alone. Cutting the cache
// into splits of kSplitLen positions gives heads × splits blocks, each with its own
// running max and sum; the merge rescales them (the flash-decoding scheme). Every block
// reads its row's length from device memory, so the launch shape is fixed by the
// context size and one captured graph serves every position; splits past a row's end
// return at once.
#include "layers.cuh"

namespace linly {
namespace cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

// grid (heads, splits, rows). partial[(r·heads + h)·splits + s][hd], stats [..][2] = (max, sum).
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    attention_split_kernel(const half* __restrict__ q, const half* __restrict__ kc, const half* __restrict__ vc,
                           const int* __restrict__ pos, float* __restrict__ partial, float* __restrict__ stats,
                           int heads, int kv_heads, int hd, int splits, float scale) {
  __shared__ float qs[kMaxHeadDim];
  __shared__ float p[kSplitLen];
  __shared__ float red[32];
  const int h = blockIdx.x, s = blockIdx.y, r = blockIdx.z;
  const int len = pos[r] + 1;
  const int t0 = s * kSplitLen, t1 = min(t0 + kSplitLen, len);
  const int64_t slot = ((int64_t)r * heads + h) * splits + s;
  if (t0 >= len) {  // nothing of this row here: the merge skips it by its length
    return;
  }
  const int kvh = h / (heads / kv_heads);
  const int64_t stride = (int64_t)kv_heads * hd;  // one cache position: [kv_heads][hd]
  const half* kbase = kc + (int64_t)kvh * hd;
  const half* vbase = vc + (int64_t)kvh * hd;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) qs[i] = __half2float(q[((int64_t)r * heads + h) * hd + i]);
  __syncthreads();

  // scores: a warp per position, its lanes across the head dimension (coalesced reads)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int t = t0 + warp; t < t1; t += kWarpsPerBlock) {
    const half* kt = kbase + (int64_t)t * stride;
    float dot = 0.0f;
    for (int i = lane; i < hd; i += 32) dot += qs[i] * __half2float(kt[i]);
    dot = warp_sum(dot);
    if (lane == 0) p[t - t0] = dot * scale;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int t = threadIdx.x; t < t1 - t0; t += blockDim.x) mx = fmaxf(mx, p[t]);
  mx = block_max(mx, red);
  float sum = 0.0f;
  for (int t = threadIdx.x; t < t1 - t0; t += blockDim.x) {
    const float e = __expf(p[t] - mx);
    p[t] = e;
    sum += e;
  }
  sum = block_sum(sum, red);  // its barriers also publish p[]
  // weighted values: a thread per output dimension, consecutive threads on consecutive
  // elements of each cache row
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0.0f;
    for (int t = t0; t < t1; ++t) acc += p[t - t0] * __half2float(vbase[(int64_t)t * stride + i]);
    partial[slot * hd + i] = acc;
  }
  if (threadIdx.x == 0) {
    stats[2 * slot] = mx;
    stats[2 * slot + 1] = sum;
  }
}

// grid (heads, rows): merge the splits of one (row, head).
__global__ void attention_merge_kernel(const float* __restrict__ partial, const float* __restrict__ stats,
                                       const int* __restrict__ pos, half* __restrict__ out, int heads, int hd,
                                       int splits) {
  const int h = blockIdx.x, r = blockIdx.y;
  const int used = (pos[r] + kSplitLen) / kSplitLen;  // splits holding positions 0..pos[r]
  const int64_t base = ((int64_t)r * heads + h) * splits;
  float mx = -INFINITY;
  for (int s = 0; s < used; ++s) mx = fmaxf(mx, stats[2 * (base + s)]);
  float total = 0.0f;
  for (int s = 0; s < used; ++s) total += __expf(stats[2 * (base + s)] - mx) * stats[2 * (base + s) + 1];
  const float inv = 1.0f / total;
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < used; ++s) acc += __expf(stats[2 * (base + s)] - mx) * partial[(base + s) * hd + i];
    out[((int64_t)r * heads + h) * hd + i] = __float2half_rn(acc * inv);
  }
}

}  // namespace

void attention_rows(const half* q, const half* kc, const half* vc, const int* pos, float* partial, float* stats,
                    half* out, int64_t rows, int heads, int kv_heads, int hd, int64_t max_context, float scale,
                    cudaStream_t s) {
  if (hd > kMaxHeadDim) throw std::invalid_argument("the GPU attention takes head_dim up to 256");
  if (kv_heads <= 0 || heads % kv_heads) throw std::invalid_argument("heads must be a multiple of kv_heads");
  const int splits = (int)attention_splits(max_context);
  attention_split_kernel<<<dim3((unsigned)heads, (unsigned)splits, (unsigned)rows), kWarpsPerBlock * 32, 0, s>>>(
      q, kc, vc, pos, partial, stats, heads, kv_heads, hd, splits, scale);
  LINLY_CUDA_LAUNCHED("attention_split_kernel");
  attention_merge_kernel<<<dim3((unsigned)heads, (unsigned)rows), 128, 0, s>>>(partial, stats, pos, out, heads, hd,
                                                                               splits);
  LINLY_CUDA_LAUNCHED("attention_merge_kernel");
}

}  // namespace cuda
}  // namespace linly
