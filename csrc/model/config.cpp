#include "model/config.h"

namespace linly {

std::string ModelConfig::problem() const {
  auto pos = [](const char* name, int64_t v) -> std::string {
    return v > 0 ? "" : std::string(name) + " must be positive, got " + std::to_string(v);
  };
  for (const std::string& p : {pos("vocab_size", vocab), pos("hidden_size", dim), pos("num_layers", n_layers),
                               pos("num_heads", n_heads), pos("num_kv_heads", n_kv_heads),
                               pos("head_dim", head_dim), pos("intermediate_size", ffn_dim),
                               pos("max_context", max_context)})
    if (!p.empty()) return p;
  if (n_heads % n_kv_heads != 0)
    return "num_heads (" + std::to_string(n_heads) + ") must be a multiple of num_kv_heads (" +
           std::to_string(n_kv_heads) + ")";
  if (head_dim % 2 != 0) return "head_dim must be even for rotary embeddings, got " + std::to_string(head_dim);
  if (!(norm_eps > 0.0f)) return "rms_norm_eps must be positive";
  if (!(rope_theta > 0.0f)) return "rope_theta must be positive";
  if (rope.type != RopeScaling::Type::None && !(rope.factor > 0.0f)) return "rope_scaling factor must be positive";
  return "";
}

}  // namespace linly
