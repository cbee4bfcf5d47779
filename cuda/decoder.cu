// The fp16 decoder on the GPU (decoder.h): owns the device weights, the KV cache, the
// step buffers and the captured decode graph. One linear step (step()) serves prefill
// chunks and decode; the host only stages ids and positions and collects logits.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "decoder.h"
#include "gpu/layout.h"
#include "layers.cuh"

namespace linly {
namespace cuda {

namespace {

bool is_w4(const std::string& f) {
  return f == "q4_0" || f == "q4_1" || f == "q4_g32" || f == "q4_g64" || f == "q4_g128";
}
bool is_w8(const std::string& f) { return f == "q8_0"; }

// (resize + memcpy rather than insert: GCC 13 warns falsely about insert's inlined copy)
template <class T>
void append(std::vector<T>& dst, const std::vector<T>& src) {
  const size_t at = dst.size();
  dst.resize(at + src.size());
  if (!src.empty()) std::memcpy(dst.data() + at, src.data(), src.size() * sizeof(T));
}

// A matrix in device memory, in the layout its format maps to.
struct DeviceMatrix {
  enum class Kind { W4, W8, W16 } kind = Kind::W16;
  DeviceW4 w4;
  DeviceW8 w8;
  DeviceW16 w16;
  int64_t n = 0, k = 0;

  int64_t bytes() const { return kind == Kind::W4 ? bytes_of(w4) : kind == Kind::W8 ? bytes_of(w8) : bytes_of(w16); }
  // y[r][0..n) at row pitch ldy = x[r] · Wᵀ for r < m: the GEMV up to 8 rows, else the GEMM.
  template <class OutT>
  void run(const half* x, OutT* y, int64_t m, int64_t ldy, cudaStream_t s) const {
    const int mi = (int)m;
    const bool gemv = m <= 8;
    if (kind == Kind::W4) {
      if (gemv) gemv_w4(w4, x, y, mi, ldy, s); else gemm_w4(w4, x, y, mi, ldy, s);
    } else if (kind == Kind::W8) {
      if (gemv) gemv_w8(w8, x, y, mi, ldy, s); else gemm_w8(w8, x, y, mi, ldy, s);
    } else {
      if (gemv) gemv_w16(w16, x, y, mi, ldy, s); else gemm_w16(w16, x, y, mi, ldy, s);
    }
  }
};

// Host matrices of one format stacked along n ([Q; K; V], [gate; up]) into one device
// matrix, so that one launch reads them all.
DeviceMatrix upload(const std::vector<const HostMatrix*>& parts) {
  const std::string& fmt = parts[0]->fmt;
  DeviceMatrix d;
  d.k = parts[0]->k;
  for (const HostMatrix* p : parts) d.n += p->n;
  if (is_w4(fmt)) {
    gpu::W4Weights all;
    for (const HostMatrix* p : parts) {
      gpu::W4Weights w = gpu::repack_w4(p->data, p->nbytes, fmt.c_str(), p->n, p->k);
      if (all.qweight.empty()) {
        all = std::move(w);
        continue;
      }
      append(all.qweight, w.qweight); append(all.scales, w.scales); append(all.mins, w.mins);
      append(all.zeros, w.zeros);
      all.n += w.n;
    }
    d.kind = DeviceMatrix::Kind::W4;
    d.w4 = upload_w4(all);
  } else if (is_w8(fmt)) {
    gpu::W8Weights all;
    for (const HostMatrix* p : parts) {
      gpu::W8Weights w = gpu::repack_w8(p->data, p->nbytes, fmt.c_str(), p->n, p->k);
      if (all.qweight.empty()) {
        all = std::move(w);
        continue;
      }
      append(all.qweight, w.qweight); append(all.scales, w.scales);
      all.n += w.n;
    }
    d.kind = DeviceMatrix::Kind::W8;
    d.w8 = upload_w8(all);
  } else if (fmt == "f16") {
    if (d.k % 32)  // the GEMM walks K in tiles of 32 (the integer formats are blocked so anyway)
      throw std::invalid_argument("the GPU takes f16 matrices with K a multiple of 32, got K=" + std::to_string(d.k));
    d.kind = DeviceMatrix::Kind::W16;
    d.w16.q = DeviceArray<uint16_t>(d.n * d.k);
    d.w16.n = d.n; d.w16.k = d.k;
    int64_t row = 0;
    for (const HostMatrix* p : parts) {
      if (p->nbytes != p->n * p->k * 2)
        throw std::invalid_argument("an f16 matrix [" + std::to_string(p->n) + ", " + std::to_string(p->k) +
                                    "] needs " + std::to_string(p->n * p->k * 2) + " bytes, got " +
                                    std::to_string(p->nbytes));
      LINLY_CUDA_CHECK(cudaMemcpy(d.w16.q.ptr + row * d.k, p->data, (size_t)p->nbytes, cudaMemcpyHostToDevice));
      row += p->n;
    }
  } else {
    throw std::invalid_argument("no GPU layout for weight format '" + fmt +
                                "' (the GPU takes q4_0, q4_1, q4_g32/64/128, q8_0 and f16)");
  }
  return d;
}

// Matrices that read one input and write side by side into one output row: a single
// device matrix when their formats agree, else one per format run.
struct Stacked {
  std::vector<DeviceMatrix> parts;
  std::vector<int64_t> cols;  // first output column of each part
  int64_t n = 0;

  explicit Stacked(const std::vector<const HostMatrix*>& ms) {
    size_t i = 0;
    while (i < ms.size()) {
      size_t j = i + 1;
      while (j < ms.size() && ms[j]->fmt == ms[i]->fmt) ++j;
      cols.push_back(n);
      parts.push_back(upload(std::vector<const HostMatrix*>(ms.begin() + (long)i, ms.begin() + (long)j)));
      n += parts.back().n;
      i = j;
    }
  }
  template <class OutT>
  void run(const half* x, OutT* y, int64_t m, cudaStream_t s) const {
    for (size_t i = 0; i < parts.size(); ++i) parts[i].run(x, y + cols[i], m, n, s);
  }
  int64_t bytes() const {
    int64_t b = 0;
    for (const auto& p : parts) b += p.bytes();
    return b;
  }
};

DeviceArray<float> upload_vec(const float* p, int64_t n) { return p ? DeviceArray<float>(p, n) : DeviceArray<float>(); }

struct Layer {
  Stacked qkv, gate_up, wo, down;
  DeviceArray<float> attn_norm, ffn_norm, bq, bk, bv;
};

half* H(DeviceArray<uint16_t>& a) { return reinterpret_cast<half*>(a.ptr); }

// Pinned host memory (cudaMallocHost): asynchronous copies need it.
template <class T>
struct PinnedArray {
  T* ptr = nullptr;
  explicit PinnedArray(int64_t n) { LINLY_CUDA_CHECK(cudaMallocHost(&ptr, sizeof(T) * (size_t)std::max<int64_t>(n, 1))); }
  ~PinnedArray() { if (ptr) cudaFreeHost(ptr); }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
};

class DecoderImpl final : public Decoder {
 public:
  // Prompt rows per step: bounds the step buffers (attention scratch, logits) while
  // giving the GEMM enough rows to use the tensor cores.
  static constexpr int64_t kChunk = 256;

  explicit DecoderImpl(const HostModel& m)
      : c_(m.cfg),
        q_dim_(c_.n_heads * c_.head_dim),
        kv_dim_(c_.n_kv_heads * c_.head_dim),
        // attention scratch rows × splits: the larger of a prompt chunk's and a decode row's
        splits_(std::max(kChunk * attention_splits(c_.max_context, kChunk), attention_splits(c_.max_context, 1))),
        ids_h_(kChunk),
        pos_h_(kChunk),
        logits_h_(c_.vocab) {
    if (c_.dim % 8 || q_dim_ % 8 || c_.ffn_dim % 8)
      throw std::invalid_argument("the GPU decoder needs the hidden size, heads × head_dim and the FFN size to be "
                                  "multiples of 8 (16-byte vector loads)");
    if (c_.head_dim > kMaxHeadDim || c_.head_dim % 2)
      throw std::invalid_argument("the GPU decoder needs an even head_dim of at most " + std::to_string(kMaxHeadDim));
    const char* env = std::getenv("LINLY_CUDA_GRAPH");
    use_graph_ = !(env && std::string(env) == "0");
    LINLY_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));

    embed_ = DeviceArray<uint16_t>(m.embed_f16, c_.vocab * c_.dim);
    final_norm_ = DeviceArray<float>(m.final_norm, c_.dim);
    output_ = Stacked({&m.output});
    for (const HostLayer& hl : m.layers) {
      layers_.push_back(Layer{Stacked({&hl.wq, &hl.wk, &hl.wv}), Stacked({&hl.w_gate, &hl.w_up}), Stacked({&hl.wo}),
                              Stacked({&hl.w_down}), upload_vec(hl.attn_norm, c_.dim), upload_vec(hl.ffn_norm, c_.dim),
                              upload_vec(hl.bq, q_dim_), upload_vec(hl.bk, kv_dim_), upload_vec(hl.bv, kv_dim_)});
    }
    const int64_t half_hd = c_.head_dim / 2;
    rope_cos_ = DeviceArray<float>(m.rope_cos, c_.max_context * half_hd);
    rope_sin_ = DeviceArray<float>(m.rope_sin, c_.max_context * half_hd);
    const int64_t cache = c_.n_layers * c_.max_context * kv_dim_;
    k_cache_ = DeviceArray<uint16_t>(cache);
    v_cache_ = DeviceArray<uint16_t>(cache);

    ids_ = DeviceArray<int>(kChunk);                          // [chunk]
    pos_ = DeviceArray<int>(kChunk);                          // [chunk]
    x_ = DeviceArray<float>(kChunk * c_.dim);                 // [chunk, dim] residual stream
    h_ = DeviceArray<uint16_t>(kChunk * c_.dim);              // [chunk, dim] normed sublayer input
    qkv_ = DeviceArray<uint16_t>(kChunk * (q_dim_ + 2 * kv_dim_));  // [chunk, qd + 2 kvd]
    q_ = DeviceArray<uint16_t>(kChunk * q_dim_);              // [chunk, heads, hd] rotated queries
    att_ = DeviceArray<uint16_t>(kChunk * q_dim_);            // [chunk, heads·hd] attention output
    o_ = DeviceArray<uint16_t>(kChunk * c_.dim);              // [chunk, dim] a sublayer's output
    gu_ = DeviceArray<uint16_t>(kChunk * 2 * c_.ffn_dim);     // [chunk, 2 ffn] gate | up
    act_ = DeviceArray<uint16_t>(kChunk * c_.ffn_dim);        // [chunk, ffn]
    partial_ = DeviceArray<float>(c_.n_heads * splits_ * c_.head_dim);  // [rows·splits, heads, hd]
    stats_ = DeviceArray<float>(c_.n_heads * splits_ * 2);              // [rows·splits, heads, 2]
    logits_ = DeviceArray<float>(kChunk * c_.vocab);          // [chunk, vocab]
    LINLY_CUDA_CHECK(cudaDeviceSynchronize());
  }

  ~DecoderImpl() override {
    if (graph_) cudaGraphExecDestroy(graph_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  void forward(const int32_t* ids, int64_t n, bool all_logits, float* logits) override {
    if (n <= 0) throw std::invalid_argument("no token ids given");
    if (position_ + n > c_.max_context)
      throw std::invalid_argument(std::to_string(n) + " tokens at position " + std::to_string(position_) +
                                  " exceed the context of " + std::to_string(c_.max_context) + " tokens");
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] < 0 || ids[i] >= c_.vocab)
        throw std::invalid_argument("token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                                    " is outside the vocabulary [0, " + std::to_string(c_.vocab) + ")");
    for (int64_t done = 0; done < n;) {
      const int64_t rows = std::min(kChunk, n - done);
      for (int64_t i = 0; i < rows; ++i) {
        ids_h_.ptr[i] = ids[done + i];
        pos_h_.ptr[i] = (int)(position_ + i);
      }
      LINLY_CUDA_CHECK(cudaMemcpyAsync(ids_.ptr, ids_h_.ptr, sizeof(int) * rows, cudaMemcpyHostToDevice, stream_));
      LINLY_CUDA_CHECK(cudaMemcpyAsync(pos_.ptr, pos_h_.ptr, sizeof(int) * rows, cudaMemcpyHostToDevice, stream_));
      const bool last = done + rows == n;
      const int64_t logit_rows = all_logits ? rows : last ? 1 : 0;
      if (rows == 1 && logit_rows == 1 && use_graph_) {
        replay_decode_graph();
      } else {
        step(rows, rows - logit_rows, logit_rows);
      }
      if (all_logits) {
        LINLY_CUDA_CHECK(cudaMemcpyAsync(logits + done * c_.vocab, logits_.ptr, sizeof(float) * rows * c_.vocab,
                                         cudaMemcpyDeviceToHost, stream_));
      } else if (last) {
        LINLY_CUDA_CHECK(cudaMemcpyAsync(logits_h_.ptr, logits_.ptr, sizeof(float) * c_.vocab,
                                         cudaMemcpyDeviceToHost, stream_));
      }
      LINLY_CUDA_CHECK(cudaStreamSynchronize(stream_));  // also: the staging buffers are free again
      position_ += rows;
      done += rows;
    }
    if (!all_logits) std::memcpy(logits, logits_h_.ptr, sizeof(float) * (size_t)c_.vocab);
  }

  int64_t position() const override { return position_; }
  void truncate(int64_t n) override { position_ = std::min(position_, std::max<int64_t>(n, 0)); }
  int64_t weight_bytes() const override {
    int64_t b = embed_.bytes() + output_.bytes();
    for (const Layer& l : layers_) b += l.qkv.bytes() + l.gate_up.bytes() + l.wo.bytes() + l.down.bytes();
    return b;
  }
  int64_t kv_cache_bytes() const override { return k_cache_.bytes() + v_cache_.bytes(); }
  void set_use_graph(bool on) override { use_graph_ = on; }
  bool use_graph() const override { return use_graph_; }

 private:
  // One forward pass over `rows` staged ids at the staged positions; the LM head runs on
  // rows [logit_row0, logit_row0 + logit_rows) (none for a prompt chunk that is not the
  // last). Every launch goes to stream_, so the whole step can be captured as a graph.
  void step(int64_t rows, int64_t logit_row0, int64_t logit_rows) {
    cudaStream_t s = stream_;
    const int64_t d = c_.dim, hd = c_.head_dim;
    const float scale = 1.0f / std::sqrt((float)hd);
    embed(H(embed_), ids_.ptr, x_.ptr, rows, d, s);
    const half* delta = nullptr;  // the previous sublayer's output, added to the residual
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      const Layer& L = layers_[(size_t)l];
      half* kc = H(k_cache_) + l * c_.max_context * kv_dim_;
      half* vc = H(v_cache_) + l * c_.max_context * kv_dim_;
      add_rmsnorm(x_.ptr, delta, L.attn_norm.ptr, H(h_), rows, d, c_.norm_eps, s);
      L.qkv.run(H(h_), H(qkv_), rows, s);
      qkv_post(H(qkv_), L.bq.ptr, L.bk.ptr, L.bv.ptr, rope_cos_.ptr, rope_sin_.ptr, pos_.ptr, H(q_), kc, vc, rows,
               (int)c_.n_heads, (int)c_.n_kv_heads, (int)hd, s);
      attention_rows(H(q_), kc, vc, pos_.ptr, partial_.ptr, stats_.ptr, H(att_), rows, (int)c_.n_heads,
                     (int)c_.n_kv_heads, (int)hd, c_.max_context, scale, s);
      L.wo.run(H(att_), H(o_), rows, s);
      add_rmsnorm(x_.ptr, H(o_), L.ffn_norm.ptr, H(h_), rows, d, c_.norm_eps, s);
      L.gate_up.run(H(h_), H(gu_), rows, s);
      swiglu_rows(H(gu_), H(act_), rows, c_.ffn_dim, s);
      L.down.run(H(act_), H(o_), rows, s);
      delta = H(o_);
    }
    add_rmsnorm(x_.ptr, delta, final_norm_.ptr, H(h_), rows, d, c_.norm_eps, s);
    if (logit_rows > 0) output_.run(H(h_) + logit_row0 * d, logits_.ptr, logit_rows, s);
  }

  // A decode step has the same launches at every position (positions and ids live in
  // device memory), so it is captured once and replayed: one launch instead of ~12 per
  // layer, which is most of a small model's step time.
  void replay_decode_graph() {
    if (!graph_) {
      LINLY_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        step(1, 0, 1);
      } catch (...) {
        cudaGraph_t broken = nullptr;
        cudaStreamEndCapture(stream_, &broken);
        if (broken) cudaGraphDestroy(broken);
        throw;
      }
      cudaGraph_t g = nullptr;
      LINLY_CUDA_CHECK(cudaStreamEndCapture(stream_, &g));
      const cudaError_t e = cudaGraphInstantiate(&graph_, g, 0);
      cudaGraphDestroy(g);
      LINLY_CUDA_CHECK(e);
    }
    LINLY_CUDA_CHECK(cudaGraphLaunch(graph_, stream_));
  }

  ModelConfig c_;
  int64_t q_dim_, kv_dim_;
  int64_t splits_;  // rows × attention splits the scratch holds
  int64_t position_ = 0;
  bool use_graph_ = true;
  cudaStream_t stream_ = nullptr;
  cudaGraphExec_t graph_ = nullptr;

  DeviceArray<uint16_t> embed_;  // [vocab, dim] fp16
  DeviceArray<float> final_norm_;
  Stacked output_{{}};
  std::vector<Layer> layers_;
  DeviceArray<float> rope_cos_, rope_sin_;     // [max_context, hd/2]
  DeviceArray<uint16_t> k_cache_, v_cache_;    // [layers, max_context, kv_heads, hd] fp16

  PinnedArray<int> ids_h_, pos_h_;  // [chunk] staging
  PinnedArray<float> logits_h_;     // [vocab]
  DeviceArray<int> ids_, pos_;
  DeviceArray<float> x_;
  DeviceArray<uint16_t> h_, qkv_, q_, att_, o_, gu_, act_;
  DeviceArray<float> partial_, stats_, logits_;
};

}  // namespace

std::unique_ptr<Decoder> Decoder::create(const HostModel& model) { return std::make_unique<DecoderImpl>(model); }

}  // namespace cuda
}  // namespace linly
