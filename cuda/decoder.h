// The fp16 LLaMA-family decoder on the GPU, seen from the host: plain C++ (no CUDA
// types), so that the bindings compile with g++ whether or not the CUDA part was built.
//
// The same step as the CPU decoder (csrc/model/llama.cpp): embedding → layers × (RMSNorm,
// Q|K|V product, biases + rotary + cache write, split-K attention, O product, RMSNorm,
// gate|up product, SwiGLU, down product) → RMSNorm → LM head, with fp16 activations, an
// f32 residual stream, f32 accumulation in every product and an fp16 KV cache. A decode
// step (one token) is captured once in a CUDA graph and replayed.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"

namespace linly {
namespace cuda {

// One weight matrix [n, k] from the host: on-disk rows of q4_0 / q4_1 / q4_g32|64|128 /
// q8_0 (formats.h), or fp16 bits [n][k] with fmt "f16". Borrowed until upload.
struct HostMatrix {
  std::string fmt;
  const uint8_t* data = nullptr;
  int64_t nbytes = 0;
  int64_t n = 0, k = 0;
};

struct HostLayer {
  HostMatrix wq, wk, wv, wo, w_gate, w_up, w_down;  // the names of LayerWeights (llama.h)
  const float* attn_norm = nullptr;  // [dim]
  const float* ffn_norm = nullptr;   // [dim]
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr;  // Qwen2 biases or null
};

struct HostModel {
  ModelConfig cfg;
  const uint16_t* embed_f16 = nullptr;  // [vocab][dim] fp16 bits
  const float* final_norm = nullptr;    // [dim]
  HostMatrix output;                    // [vocab, dim]
  std::vector<HostLayer> layers;
  const float* rope_cos = nullptr;  // [max_context][head_dim/2], the CPU decoder's tables
  const float* rope_sin = nullptr;
};

class Decoder {
 public:
  // Uploads everything (weights repacked into the GPU layouts, Q|K|V and gate|up fused
  // where their formats agree) and allocates the cache and the step buffers.
  static std::unique_ptr<Decoder> create(const HostModel& model);
  virtual ~Decoder() = default;
  // Feeds ids[0..n) at positions [position(), position()+n); writes logits [n][vocab]
  // when all_logits, else the last token's [vocab]. Throws std::invalid_argument when
  // the ids would run past the context or an id is outside the vocabulary.
  virtual void forward(const int32_t* ids, int64_t n, bool all_logits, float* logits) = 0;
  virtual int64_t position() const = 0;
  virtual void truncate(int64_t n) = 0;
  virtual int64_t weight_bytes() const = 0;    // device bytes of the matrices and the embedding
  virtual int64_t kv_cache_bytes() const = 0;
  // The decode graph (on by default; LINLY_CUDA_GRAPH=0 turns it off at creation).
  virtual void set_use_graph(bool on) = 0;
  virtual bool use_graph() const = 0;
};

}  // namespace cuda
}  // namespace linly
