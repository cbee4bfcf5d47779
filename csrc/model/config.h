// Hyper-parameters of a LLaMA-family decoder (LLaMA 1/2/3, Qwen2, Linly, SmolLM2).
#pragma once
#include <cstdint>
#include <string>

namespace linly {

struct RopeScaling {
  enum class Type { None, Linear, Llama3 } type = Type::None;
  float factor = 1.0f;            // linear: positions are divided by it; llama3: long-wavelength divisor
  float low_freq_factor = 1.0f;   // llama3 only
  float high_freq_factor = 4.0f;  // llama3 only
  int64_t original_max_position = 8192;  // llama3 only
};

struct ModelConfig {
  int64_t vocab = 0, dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn_dim = 0;
  int64_t max_context = 0;  // KV cache capacity, in tokens
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope;
  bool qkv_bias = false;  // Qwen2: q/k/v projections carry biases

  // Empty when consistent; otherwise what is wrong, for the user.
  std::string problem() const;
};

}  // namespace linly
