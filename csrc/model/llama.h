// The LLaMA-family decoder: embedding → n_layers × (RMSNorm, GQA attention with rotary
// embeddings over a KV cache, RMSNorm, SwiGLU MLP) → RMSNorm → LM head.
// One call runs a whole prefill or decode step; Python never loops over layers.
#pragma once
#include <cstdint>
#include <vector>

#include "core/packed_matrix.h"
#include "model/config.h"

namespace linly {

struct LayerWeights {
  const PackedMatrix *wq, *wk, *wv, *wo;     // [H·hd, dim], [KV·hd, dim] ×2, [dim, H·hd]
  const PackedMatrix *w_gate, *w_up, *w_down;  // [ffn, dim] ×2, [dim, ffn]
  const float *attn_norm, *ffn_norm;         // [dim]
  const float *bq, *bk, *bv;                 // Qwen2 biases [H·hd], [KV·hd] ×2; null for LLaMA
};

struct ModelWeights {
  const PackedMatrix* embed;   // [vocab, dim]
  const float* final_norm;     // [dim]
  const PackedMatrix* output;  // [vocab, dim]; the same object as `embed` when tied
  std::vector<LayerWeights> layers;
};

enum class KvCacheType { F32, F16 };

class LlamaModel {
 public:
  // Shapes must already be validated against cfg (the bindings do it, with messages).
  // precise: every integer matmul also uses the activations' int8 residual (formats.h).
  // kernels: the table the attention runs on (the matrices carry their own).
  LlamaModel(const ModelConfig& cfg, ModelWeights weights, KvCacheType kv, bool precise, const KernelTable& kernels);

  // Feeds ids[0..n) at positions [position(), position()+n) and appends their keys and
  // values to the cache. Writes logits [n, vocab] when all_logits, else the last
  // token's [vocab]. Caller guarantees position()+n <= max_context and ids < vocab.
  void forward(const int32_t* ids, int64_t n, bool all_logits, float* logits);

  int64_t position() const { return pos_; }
  // Forget everything after the first n cached tokens (prompt caching reuses the rest).
  void truncate(int64_t n) { pos_ = n < pos_ ? n : pos_; }
  const ModelConfig& config() const { return cfg_; }
  int64_t kv_cache_bytes() const;

 private:
  void attention(int64_t layer, int64_t n);  // q_, cache -> att_

  ModelConfig cfg_;
  ModelWeights w_;
  KvCacheType kv_type_;
  bool precise_;
  const KernelTable* kt_;
  int64_t pos_ = 0;
  int64_t q_dim_, kv_dim_;
  std::vector<float> rope_cos_, rope_sin_;  // [max_context, head_dim/2]
  std::vector<float> k_f32_, v_f32_;        // [layers, max_context, kv_dim] when F32
  std::vector<uint16_t> k_f16_, v_f16_;     // same shape when F16
  // Step buffers, grown to the largest n seen (no allocation per decode step):
  std::vector<float> x_;     // [n, dim] residual stream
  std::vector<float> h_;     // [n, dim] normed input of a sublayer
  std::vector<float> q_;     // [n, H·hd]
  std::vector<float> k_, v_; // [n, KV·hd]
  std::vector<float> att_;   // [n, H·hd]
  std::vector<float> o_;     // [n, dim]
  std::vector<float> gate_, up_;  // [n, ffn]
};

}  // namespace linly
