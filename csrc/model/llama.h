// The LLaMA-family decoder: embedding → n_layers × (RMSNorm, GQA attention with rotary
// embeddings over a KV cache, RMSNorm, SwiGLU MLP) → RMSNorm → LM head.
// One call runs a whole prefill or decode step; Python never loops over layers.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/packed_matrix.h"
#include "model/config.h"
#include "runtime/aligned_buffer.h"

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

// The rotary cos/sin tables [max_context][head_dim/2] (rope scaling applied), shared
// with the GPU decoder so that both rotate by the same numbers.
void rope_tables(const ModelConfig& cfg, std::vector<float>& cos_t, std::vector<float>& sin_t);

// Q8_0: int8 with an f16 scale per 32 values of a head (needs head_dim % 32 == 0):
// 8.5 bits per value, 47 % less cache memory and traffic than f16.
enum class KvCacheType { F32, F16, Q8_0 };

// One sequence's share of a batched step: `n` consecutive ids that continue the
// sequence held in KV-cache slot `slot`.
struct Segment {
  int64_t slot;
  int64_t n;
};

class LlamaModel {
 public:
  // Shapes must already be validated against cfg (the bindings do it, with messages).
  // precise: integer matmuls keep near-f32 accuracy: decode-sized steps use the
  // activations' int8 residual (formats.h), prompt-sized segments (segment_is_prompt) the
  // same product through many-row kernels, or f32-grade tiles where the ISA runs those
  // faster. Otherwise plain int8 activations, as llama.cpp.
  // kernels: the table the attention runs on (the matrices carry their own).
  // n_slots: independent sequences, each with its own KV cache of max_context tokens.
  LlamaModel(const ModelConfig& cfg, ModelWeights weights, KvCacheType kv, bool precise, const KernelTable& kernels,
             int64_t n_slots = 1);

  // Feeds ids[0..n) at positions [position(0), position(0)+n) of slot 0 and appends their
  // keys and values to the cache. Writes logits [n, vocab] when all_logits, else the
  // last token's [vocab]. Caller guarantees position(0)+n <= max_context and ids < vocab.
  void forward(const int32_t* ids, int64_t n, bool all_logits, float* logits);

  // One step over several sequences at once (continuous batching): segment i's ids
  // follow segment i-1's in `ids`; every matrix is read once for all rows. Writes the
  // last row's logits of each segment, [n_segs, vocab]. Caller guarantees distinct
  // slots, ids < vocab and position(slot)+n <= max_context for each segment.
  void forward_batch(const int32_t* ids, const Segment* segs, int64_t n_segs, bool all_logits, float* logits);

  int64_t slots() const { return (int64_t)pos_.size(); }
  int64_t position(int64_t slot = 0) const { return pos_[slot]; }
  // Forget everything after the first n cached tokens of a slot (prompt caching reuses the rest).
  void truncate(int64_t n, int64_t slot = 0) { pos_[slot] = n < pos_[slot] ? n : pos_[slot]; }
  const ModelConfig& config() const { return cfg_; }
  int64_t kv_cache_bytes() const;

 private:
  void attention(int64_t layer, int64_t n);  // q_, cache -> att_
  void prefetch_history(size_t off, int64_t len) const;  // K and V of positions [0, len) at off, into L2
  // Segments of at least this many rows count as prompts. Chosen, not tuned: well above
  // the batched decode steps (one row per sequence), well below a prompt chunk.
  // A prompt's rows go through matmul_f32 where the table says that is faster: for
  // integer formats in the precise mode where f32_prompts, in the fast mode where
  // bf16_prompts (as Activations::Bf16Prompt: x rounded to bf16, still closer to x than
  // the int8 blocks of the fast mode's other rows), for dense ones where dense_prompts;
  // otherwise precise integer rows take Activations::Int8x2Prompt.
  static constexpr int64_t kPromptRows = 16;
  static_assert(kPromptRows > 1, "a single head row must stay off the prompt path (forward_grouped)");
  static bool segment_is_prompt(const Segment& s) { return s.n >= kPromptRows; }
  // forward_batch with the prompt segments first (their rows lead every matrix).
  void forward_grouped(const int32_t* ids, const Segment* segs, int64_t n_segs, bool all_logits, float* logits);
  // y = x · Wᵀ for n rows, the first n_prompt of them prompt rows (segment_is_prompt).
  void matmul_rows(const PackedMatrix& w, const float* x, int64_t n, int64_t n_prompt, float* y) const;
  // How many of the n_prompt leading rows take w's f32 prompt kernel (the rest take
  // prompt_activations(), all decode rows row_activations()).
  int64_t prompt_rows_in_f32(const PackedMatrix& w, int64_t n_prompt) const;
  Activations row_activations() const { return precise_ ? Activations::Int8x2 : Activations::Int8; }
  // What the prompt rows that do not take the f32 kernel take.
  Activations prompt_activations() const { return precise_ ? Activations::Int8x2Prompt : Activations::Int8; }
  // What the prompt rows that take the f32 kernel take.
  Activations f32_prompt_activations() const { return precise_ ? Activations::F32 : Activations::Bf16Prompt; }
  // matmul_rows for matrices that read the same x (at most kMaxSharedInput): one pool job
  // per row split.
  void matmul_rows_shared(std::initializer_list<const PackedMatrix*> ws, std::initializer_list<float*> ys,
                          const float* x, int64_t n, int64_t n_prompt) const;
  // Element offset of (slot, layer, KV head, position) in the K or V cache. Each head's
  // positions are contiguous, so decode attention reads one sequential stream per head.
  size_t kv_offset(int64_t slot, int64_t layer, int64_t kv_head, int64_t p) const {
    return (size_t)((((slot * cfg_.n_layers + layer) * cfg_.n_kv_heads + kv_head) * cfg_.max_context + p) *
                    cfg_.head_dim);
  }

  ModelConfig cfg_;
  ModelWeights w_;
  KvCacheType kv_type_;
  bool precise_;
  const KernelTable* kt_;
  std::vector<int64_t> pos_;  // [slots] tokens cached per slot
  int64_t q_dim_, kv_dim_;
  std::vector<float> rope_cos_, rope_sin_;  // [max_context, head_dim/2]
  AlignedArray<float> k_f32_, v_f32_;        // [slots, layers, kv_heads, max_context, head_dim] when F32
  AlignedArray<uint16_t> k_f16_, v_f16_;     // same shape when F16
  AlignedArray<block_q8_0> k_q8_, v_q8_;     // [slots, layers, kv_heads, max_context, head_dim / 32] when Q8_0
  // Step buffers, grown to the largest n seen (no allocation per decode step):
  std::vector<int64_t> row_slot_, row_pos_;  // [n] which sequence and position each row is
  std::vector<float> x_;     // [n, dim] residual stream
  std::vector<float> h_;     // [n, dim] normed input of a sublayer
  std::vector<float> q_;     // [n, H·hd]
  std::vector<float> k_, v_; // [n, KV·hd]
  std::vector<float> att_;   // [n, H·hd]
  std::vector<float> o_;     // [n, dim]
  std::vector<float> gate_, up_;  // [n, ffn]
};

}  // namespace linly
