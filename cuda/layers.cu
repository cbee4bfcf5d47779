// The decoder's other operations in fp16 on the GPU: RMSNorm, rotary embeddings, SwiGLU
// and single-position attention over an fp16 KV cache. Each mirrors the CPU decoder's
// arithmetic (csrc/model/llama.cpp): f32 statistics and accumulations, the same rotary
// cos/sin tables, the same rotate-half pairing.
#include "layers.cuh"

namespace linly {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// One block per row: y = x / rms(x) · w.
__global__ void rmsnorm_kernel(const half* __restrict__ x, const float* __restrict__ w, half* __restrict__ y,
                               int64_t d, float eps) {
  __shared__ float red[32];
  const half* xr = x + blockIdx.x * d;
  half* yr = y + blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float v = __half2float(xr[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, red) / (float)d + eps);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = __float2half_rn(__half2float(xr[i]) * inv * w[i]);
}

__global__ void swiglu_kernel(const half* __restrict__ gate, const half* __restrict__ up, half* __restrict__ out,
                              int64_t count) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float g = __half2float(gate[i]);
  out[i] = __float2half_rn(g / (1.0f + __expf(-g)) * __half2float(up[i]));
}

// v: [rows][heads][hd] in place; row r at position pos[r]; element i pairs with i + hd/2.
__global__ void rope_kernel(half* __restrict__ v, const int* __restrict__ pos, const float* __restrict__ cos_t,
                            const float* __restrict__ sin_t, int heads, int hd) {
  const int half_hd = hd / 2;
  const int64_t row = blockIdx.x;
  const float* c = cos_t + (int64_t)pos[row] * half_hd;
  const float* s = sin_t + (int64_t)pos[row] * half_hd;
  for (int j = threadIdx.x; j < heads * half_hd; j += blockDim.x) {
    const int h = j / half_hd, i = j % half_hd;
    half* p = v + (row * heads + h) * hd;
    const float a = __half2float(p[i]), b = __half2float(p[i + half_hd]);
    p[i] = __float2half_rn(a * c[i] - b * s[i]);
    p[i + half_hd] = __float2half_rn(b * c[i] + a * s[i]);
  }
}

// One block per query head: scores over the cache (a thread per position), softmax,
// then the weighted sum of values (a thread per output dimension). scores: dynamic smem.
__global__ void attention_decode_kernel(const half* __restrict__ q, const half* __restrict__ kc,
                                        const half* __restrict__ vc, half* __restrict__ out, int len, int heads,
                                        int kv_heads, int hd, float scale) {
  extern __shared__ float scores[];  // [len]
  __shared__ float red[32];
  const int h = blockIdx.x, kvh = h / (heads / kv_heads);
  const half* qh = q + (int64_t)h * hd;
  const int64_t stride = (int64_t)kv_heads * hd;  // cache row: [kv_heads][hd] per position
  float mx = -INFINITY;
  for (int t = threadIdx.x; t < len; t += blockDim.x) {
    const half* kt = kc + t * stride + (int64_t)kvh * hd;
    float s = 0.0f;
    for (int i = 0; i < hd; ++i) s += __half2float(qh[i]) * __half2float(kt[i]);
    s *= scale;
    scores[t] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_max(mx, red);
  float sum = 0.0f;
  for (int t = threadIdx.x; t < len; t += blockDim.x) {
    const float e = __expf(scores[t] - mx);
    scores[t] = e;
    sum += e;
  }
  const float inv = 1.0f / block_sum(sum, red);  // block_sum's barrier also publishes scores[]
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float acc = 0.0f;
    for (int t = 0; t < len; ++t) acc += scores[t] * __half2float(vc[t * stride + (int64_t)kvh * hd + i]);
    out[(int64_t)h * hd + i] = __float2half_rn(acc * inv);
  }
}


// ---- the decoder's fused steps (decoder.cu); positions and ids are read from device
// memory so that one captured decode graph serves every position.

// x[r] (f32 residual, [n][d]) = embedding row ids[r] of the fp16 table.
__global__ void embed_kernel(const half* __restrict__ table, const int* __restrict__ ids, float* __restrict__ x,
                             int64_t d) {
  const half* src = table + (int64_t)ids[blockIdx.x] * d;
  float* dst = x + blockIdx.x * d;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) dst[i] = __half2float(src[i]);
}

// x += delta (when given: the sublayer's fp16 output), then y = rmsnorm(x) · w in fp16.
// The residual stays f32, as in the CPU decoder: a 7B model's residual stream grows past
// where fp16 spacing would blur small sublayer outputs.
__global__ void add_rmsnorm_kernel(float* __restrict__ x, const half* __restrict__ delta, const float* __restrict__ w,
                                   half* __restrict__ y, int64_t d, float eps) {
  __shared__ float red[32];
  float* xr = x + blockIdx.x * d;
  const half* dr = delta ? delta + blockIdx.x * d : nullptr;
  half* yr = y + blockIdx.x * d;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    float v = xr[i];
    if (dr) {
      v += __half2float(dr[i]);
      xr[i] = v;
    }
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss, red) / (float)d + eps);
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) yr[i] = __float2half_rn(w[i] * (xr[i] * inv));
}

// One row of the fused Q|K|V product ([n][qd + 2·kvd]) → biases (Qwen2), rotary at the
// row's position on Q and K, Q to q_out [n][heads][hd], K and V into the layer's cache
// rows [max_context][kv_heads][hd] at that position.
__global__ void qkv_post_kernel(const half* __restrict__ qkv, const float* __restrict__ bq,
                                const float* __restrict__ bk, const float* __restrict__ bv,
                                const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                const int* __restrict__ pos, half* __restrict__ q_out, half* __restrict__ kc,
                                half* __restrict__ vc, int heads, int kv_heads, int hd) {
  const int r = blockIdx.x, p = pos[r], half_hd = hd / 2;
  const int64_t qd = (int64_t)heads * hd, kvd = (int64_t)kv_heads * hd;
  const half* row = qkv + r * (qd + 2 * kvd);
  const float* c = cos_t + (int64_t)p * half_hd;
  const float* s = sin_t + (int64_t)p * half_hd;
  for (int j = threadIdx.x; j < (heads + kv_heads) * half_hd; j += blockDim.x) {
    const int head = j / half_hd, i = j % half_hd;
    const bool is_q = head < heads;
    const int h = is_q ? head : head - heads;
    const int64_t off = (int64_t)h * hd;
    const half* src = is_q ? row + off : row + qd + off;
    const float* b = is_q ? bq : bk;
    float a0 = __half2float(src[i]), a1 = __half2float(src[i + half_hd]);
    if (b) {
      a0 += b[off + i];
      a1 += b[off + i + half_hd];
    }
    half* dst = is_q ? q_out + (int64_t)r * qd + off : kc + (int64_t)p * kvd + off;
    dst[i] = __float2half_rn(a0 * c[i] - a1 * s[i]);
    dst[i + half_hd] = __float2half_rn(a1 * c[i] + a0 * s[i]);
  }
  for (int64_t j = threadIdx.x; j < kvd; j += blockDim.x) {
    float v = __half2float(row[qd + kvd + j]);
    if (bv) v += bv[j];
    vc[(int64_t)p * kvd + j] = __float2half_rn(v);
  }
}

// gu: [n][2·ffn] (gate | up, the fused product) → out [n][ffn] = silu(gate) · up.
__global__ void swiglu_rows_kernel(const half* __restrict__ gu, half* __restrict__ out, int64_t n, int64_t ffn) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n * ffn) return;
  const int64_t r = i / ffn, j = i % ffn;
  const float g = __half2float(gu[r * 2 * ffn + j]);
  out[i] = __float2half_rn(g / (1.0f + __expf(-g)) * __half2float(gu[r * 2 * ffn + ffn + j]));
}

}  // namespace

void embed(const half* table, const int* ids, float* x, int64_t rows, int64_t d, cudaStream_t s) {
  embed_kernel<<<(unsigned)rows, kThreads, 0, s>>>(table, ids, x, d);
  LINLY_CUDA_LAUNCHED("embed_kernel");
}

void add_rmsnorm(float* x, const half* delta, const float* w, half* y, int64_t rows, int64_t d, float eps,
                 cudaStream_t s) {
  add_rmsnorm_kernel<<<(unsigned)rows, kThreads, 0, s>>>(x, delta, w, y, d, eps);
  LINLY_CUDA_LAUNCHED("add_rmsnorm_kernel");
}

void qkv_post(const half* qkv, const float* bq, const float* bk, const float* bv, const float* cos_t,
              const float* sin_t, const int* pos, half* q_out, half* kc, half* vc, int64_t rows, int heads,
              int kv_heads, int hd, cudaStream_t s) {
  qkv_post_kernel<<<(unsigned)rows, kThreads, 0, s>>>(qkv, bq, bk, bv, cos_t, sin_t, pos, q_out, kc, vc, heads,
                                                      kv_heads, hd);
  LINLY_CUDA_LAUNCHED("qkv_post_kernel");
}

void swiglu_rows(const half* gu, half* out, int64_t rows, int64_t ffn, cudaStream_t s) {
  const int64_t count = rows * ffn;
  swiglu_rows_kernel<<<(unsigned)((count + kThreads - 1) / kThreads), kThreads, 0, s>>>(gu, out, rows, ffn);
  LINLY_CUDA_LAUNCHED("swiglu_rows_kernel");
}

namespace {
}  // namespace

void rmsnorm(const half* x, const float* w, half* y, int64_t rows, int64_t d, float eps, cudaStream_t s) {
  rmsnorm_kernel<<<(unsigned)rows, kThreads, 0, s>>>(x, w, y, d, eps);
  LINLY_CUDA_LAUNCHED("rmsnorm_kernel");
}

void swiglu(const half* gate, const half* up, half* out, int64_t count, cudaStream_t s) {
  swiglu_kernel<<<(unsigned)((count + kThreads - 1) / kThreads), kThreads, 0, s>>>(gate, up, out, count);
  LINLY_CUDA_LAUNCHED("swiglu_kernel");
}

void rope(half* v, const int* pos, const float* cos_t, const float* sin_t, int64_t rows, int heads, int hd,
          cudaStream_t s) {
  rope_kernel<<<(unsigned)rows, kThreads, 0, s>>>(v, pos, cos_t, sin_t, heads, hd);
  LINLY_CUDA_LAUNCHED("rope_kernel");
}

void attention_decode(const half* q, const half* kc, const half* vc, half* out, int len, int heads, int kv_heads,
                      int hd, float scale, cudaStream_t s) {
  if (len <= 0 || len > kAttentionDecodeMaxLen)
    throw std::invalid_argument("attention_decode: len must be 1.." + std::to_string(kAttentionDecodeMaxLen));
  if (kv_heads <= 0 || heads % kv_heads != 0) throw std::invalid_argument("heads must be a multiple of kv_heads");
  attention_decode_kernel<<<(unsigned)heads, kThreads, sizeof(float) * (size_t)len, s>>>(q, kc, vc, out, len, heads,
                                                                                         kv_heads, hd, scale);
  LINLY_CUDA_LAUNCHED("attention_decode_kernel");
}

// Host entry points for tests: copy in, run, copy out.
namespace {
template <class T>
DeviceArray<T> up(const T* p, int64_t n) { return DeviceArray<T>(p, n); }
template <class T>
void down(T* dst, const DeviceArray<T>& a) {
  LINLY_CUDA_CHECK(cudaDeviceSynchronize());
  LINLY_CUDA_CHECK(cudaMemcpy(dst, a.ptr, (size_t)a.bytes(), cudaMemcpyDeviceToHost));
}
half* H(DeviceArray<uint16_t>& a) { return reinterpret_cast<half*>(a.ptr); }
}  // namespace

int attention_decode_max_len() { return kAttentionDecodeMaxLen; }

void rmsnorm_host(const uint16_t* x, const float* w, uint16_t* y, int64_t rows, int64_t d, float eps) {
  auto dx = up(x, rows * d);
  auto dw = up(w, d);
  DeviceArray<uint16_t> dy(rows * d);
  rmsnorm(H(dx), dw.ptr, H(dy), rows, d, eps, nullptr);
  down(y, dy);
}

void swiglu_host(const uint16_t* gate, const uint16_t* up_, uint16_t* out, int64_t count) {
  auto dg = up(gate, count), du = up(up_, count);
  DeviceArray<uint16_t> dout(count);
  swiglu(H(dg), H(du), H(dout), count, nullptr);
  down(out, dout);
}

void rope_host(uint16_t* v, const int* pos, const float* cos_t, const float* sin_t, int64_t rows, int heads, int hd,
               int64_t table_rows) {
  for (int64_t r = 0; r < rows; ++r)
    if (pos[r] < 0 || pos[r] >= table_rows) throw std::invalid_argument("a position is outside the rotary tables");
  auto dv = up(v, rows * heads * hd);
  auto dp = up(pos, rows);
  auto dc = up(cos_t, table_rows * (hd / 2)), ds = up(sin_t, table_rows * (hd / 2));
  rope(H(dv), dp.ptr, dc.ptr, ds.ptr, rows, heads, hd, nullptr);
  down(v, dv);
}

void attention_decode_host(const uint16_t* q, const uint16_t* kc, const uint16_t* vc, uint16_t* out, int len,
                           int heads, int kv_heads, int hd, float scale) {
  auto dq = up(q, (int64_t)heads * hd);
  auto dk = up(kc, (int64_t)len * kv_heads * hd), dv = up(vc, (int64_t)len * kv_heads * hd);
  DeviceArray<uint16_t> dout((int64_t)heads * hd);
  attention_decode(H(dq), H(dk), H(dv), H(dout), len, heads, kv_heads, hd, scale, nullptr);
  down(out, dout);
}

}  // namespace cuda
}  // namespace linly
