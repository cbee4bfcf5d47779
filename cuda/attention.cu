// Attention over the fp16 KV cache for decode and prefill rows, split along the cache.
//
// Why split: at batch 1 a decode step has only `heads` query rows, too few blocks to
// fill the GPU, and a block per head would walk the whole cache alone. Cutting the cache
// into splits (32 positions for a decode row, 256 for prompt rows) gives heads × splits blocks, each with its own
// running max and sum; the merge rescales them (the flash-decoding scheme). Every block
// reads its row's length from device memory, so the launch shape is fixed by the
// context size and one captured graph serves every position; splits past a row's end
// return at once.
#include "layers.cuh"

namespace linly {
namespace cuda {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kBatch = 8;  // cache rows whose loads are in flight together (per warp, per thread)

// grid (heads, splits, rows). partial[(r·heads + h)·splits + s][hd], stats [..][2] = (max, sum).
//
// Both passes keep kBatch independent cache loads in flight: written as plain loops, each
// load waited for its predecessor's multiply-add, and one block walking 256 positions
// took ~80 µs per layer on an H200 (half of a 7B model's decode step).
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    attention_split_kernel(const half* __restrict__ q, const half* __restrict__ kc, const half* __restrict__ vc,
                           const int* __restrict__ pos, float* __restrict__ partial, float* __restrict__ stats,
                           int heads, int kv_heads, int hd, int splits, int split_len, float scale) {
  __shared__ float2 qs[kMaxHeadDim / 2];
  __shared__ float p[kMaxSplitLen];
  __shared__ float red[32];
  const int h = blockIdx.x, s = blockIdx.y, r = blockIdx.z;
  const int len = pos[r] + 1;
  const int t0 = s * split_len, t1 = min(t0 + split_len, len);
  if (t0 >= len) return;  // nothing of this row here: the merge skips it by its length
  const int64_t slot = ((int64_t)r * heads + h) * splits + s;
  const int kvh = h / (heads / kv_heads), hd2 = hd / 2;
  const int64_t stride = (int64_t)kv_heads * hd;  // one cache position: [kv_heads][hd]
  const half* kbase = kc + (int64_t)kvh * hd;
  const half* vbase = vc + (int64_t)kvh * hd;
  const half2* qh = reinterpret_cast<const half2*>(q + ((int64_t)r * heads + h) * hd);
  for (int i = threadIdx.x; i < hd2; i += blockDim.x) qs[i] = __half22float2(qh[i]);
  __syncthreads();

  // scores: a warp per position, its lanes across the head dimension (half2, coalesced)
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int base = t0 + warp; base < t1; base += kWarpsPerBlock * kBatch) {
    float dot[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int t = base + kWarpsPerBlock * u;
      dot[u] = 0.0f;
      if (t < t1) {
        const half2* kt = reinterpret_cast<const half2*>(kbase + (int64_t)t * stride);
        for (int i = lane; i < hd2; i += 32) {
          const float2 kv = __half22float2(kt[i]);
          dot[u] += qs[i].x * kv.x + qs[i].y * kv.y;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const float d = warp_sum(dot[u]);
      const int t = base + kWarpsPerBlock * u;
      if (lane == 0 && t < t1) p[t - t0] = d * scale;
    }
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
  // elements of each cache row, kBatch rows in flight
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) acc[u] = 0.0f;
    int t = t0;
    for (; t + kBatch <= t1; t += kBatch) {
#pragma unroll
      for (int u = 0; u < kBatch; ++u) acc[u] += p[t + u - t0] * __half2float(vbase[(int64_t)(t + u) * stride + i]);
    }
    for (; t < t1; ++t) acc[0] += p[t - t0] * __half2float(vbase[(int64_t)t * stride + i]);
    float total = 0.0f;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) total += acc[u];
    partial[slot * hd + i] = total;
  }
  if (threadIdx.x == 0) {
    stats[2 * slot] = mx;
    stats[2 * slot + 1] = sum;
  }
}

// grid (heads, rows): merge the splits of one (row, head).
__global__ void attention_merge_kernel(const float* __restrict__ partial, const float* __restrict__ stats,
                                       const int* __restrict__ pos, half* __restrict__ out, int heads, int hd,
                                       int splits, int split_len) {
  const int h = blockIdx.x, r = blockIdx.y;
  const int used = (pos[r] + split_len) / split_len;  // splits holding positions 0..pos[r]
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
  if (hd > kMaxHeadDim || hd % 2) throw std::invalid_argument("the GPU attention takes an even head_dim up to 256");
  if (kv_heads <= 0 || heads % kv_heads) throw std::invalid_argument("heads must be a multiple of kv_heads");
  const int split_len = attention_split_len(rows);
  const int splits = (int)attention_splits(max_context, rows);
  attention_split_kernel<<<dim3((unsigned)heads, (unsigned)splits, (unsigned)rows), kWarpsPerBlock * 32, 0, s>>>(
      q, kc, vc, pos, partial, stats, heads, kv_heads, hd, splits, split_len, scale);
  LINLY_CUDA_LAUNCHED("attention_split_kernel");
  attention_merge_kernel<<<dim3((unsigned)heads, (unsigned)rows), 128, 0, s>>>(partial, stats, pos, out, heads, hd,
                                                                               splits, split_len);
  LINLY_CUDA_LAUNCHED("attention_merge_kernel");
}

}  // namespace cuda
}  // namespace linly
