#include "model/llama.h"

#include <stdexcept>
#include <algorithm>
#include <cmath>

#include "quant/fp16.h"
#include "quant/quantize.h"
#include "runtime/thread_pool.h"

namespace linly {

namespace {

// HF's inverse frequencies, in f32 as transformers computes them, with rope scaling.
std::vector<float> inverse_frequencies(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i)
    inv[i] = 1.0f / std::pow(c.rope_theta, (float)(2 * i) / (float)c.head_dim);
  const RopeScaling& s = c.rope;
  if (s.type == RopeScaling::Type::Linear) {
    for (float& f : inv) f /= s.factor;
  } else if (s.type == RopeScaling::Type::Llama3) {
    const float old_ctx = (float)s.original_max_position;
    const float low_wavelen = old_ctx / s.low_freq_factor, high_wavelen = old_ctx / s.high_freq_factor;
    for (float& f : inv) {
      const float wavelen = 2.0f * (float)M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / s.factor;
      } else if (wavelen >= high_wavelen) {  // between the two: blend
        const float smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1.0f - smooth) * f / s.factor + smooth * f;
      }
    }
  }
  return inv;
}

void rms_norm(const float* x, const float* weight, float* out, int64_t dim, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < dim; ++i) ss += (double)x[i] * x[i];
  const float scale = 1.0f / std::sqrt((float)(ss / (double)dim) + eps);
  for (int64_t i = 0; i < dim; ++i) out[i] = weight[i] * (x[i] * scale);
}

// HF "rotate_half" convention: element i pairs with i + hd/2.
void apply_rope(float* v, int64_t n_heads, int64_t hd, const float* cos, const float* sin) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* p = v + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      const float a = p[i], b = p[i + half];
      p[i] = a * cos[i] - b * sin[i];
      p[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

template <class T>
void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

void rope_tables(const ModelConfig& cfg, std::vector<float>& cos_t, std::vector<float>& sin_t) {
  const int64_t half = cfg.head_dim / 2;
  const std::vector<float> inv = inverse_frequencies(cfg);
  cos_t.resize(cfg.max_context * half);
  sin_t.resize(cfg.max_context * half);
  for (int64_t p = 0; p < cfg.max_context; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = (float)p * inv[i];  // f32 product, as transformers forms it
      cos_t[p * half + i] = (float)std::cos((double)angle);
      sin_t[p * half + i] = (float)std::sin((double)angle);
    }
  }
}

LlamaModel::LlamaModel(const ModelConfig& cfg, ModelWeights weights, KvCacheType kv, bool precise,
                       const KernelTable& kernels, int64_t n_slots)
    : cfg_(cfg), w_(std::move(weights)), kv_type_(kv), precise_(precise), kt_(&kernels), pos_(n_slots, 0) {
  q_dim_ = cfg_.n_heads * cfg_.head_dim;
  kv_dim_ = cfg_.n_kv_heads * cfg_.head_dim;
  rope_tables(cfg_, rope_cos_, rope_sin_);
  const size_t cache = (size_t)(n_slots * cfg_.n_layers * cfg_.max_context * kv_dim_);
  if (kv_type_ == KvCacheType::F32) {
    k_f32_.assign(cache, 0.0f);
    v_f32_.assign(cache, 0.0f);
  } else if (kv_type_ == KvCacheType::Q8_0) {
    if (cfg_.head_dim % QK != 0)
      throw std::invalid_argument("the q8_0 KV cache needs head_dim to be a multiple of 32, got " +
                                  std::to_string(cfg_.head_dim) + "; use kv_cache='f16'");
    k_q8_.assign(cache / QK, block_q8_0{});
    v_q8_.assign(cache / QK, block_q8_0{});
  } else {
    k_f16_.assign(cache, 0);
    v_f16_.assign(cache, 0);
  }
}

int64_t LlamaModel::kv_cache_bytes() const {
  return (int64_t)(k_f32_.size() + v_f32_.size()) * 4 + (int64_t)(k_f16_.size() + v_f16_.size()) * 2 +
         (int64_t)(k_q8_.size() + v_q8_.size()) * (int64_t)sizeof(block_q8_0);
}

void LlamaModel::prefetch_history(size_t off, int64_t len) const {
  const char *k, *v;
  int64_t bytes;
  if (kv_type_ == KvCacheType::F32) {
    k = (const char*)(k_f32_.data() + off), v = (const char*)(v_f32_.data() + off), bytes = len * cfg_.head_dim * 4;
  } else if (kv_type_ == KvCacheType::Q8_0) {
    k = (const char*)(k_q8_.data() + off / QK), v = (const char*)(v_q8_.data() + off / QK);
    bytes = len * (cfg_.head_dim / QK) * (int64_t)sizeof(block_q8_0);
  } else {
    k = (const char*)(k_f16_.data() + off), v = (const char*)(v_f16_.data() + off), bytes = len * cfg_.head_dim * 2;
  }
  // K first, then V: the scores need all of K before the mix reads any V.
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(k + o, 0, 2);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(v + o, 0, 2);
}

void LlamaModel::attention(int64_t layer, int64_t n) {
  const int64_t hd = cfg_.head_dim, H = cfg_.n_heads, group = cfg_.n_heads / cfg_.n_kv_heads;
  const float scale = 1.0f / std::sqrt((float)hd);
  const KernelTable& kt = *kt_;
  // The f16 cache (the default) scores a KV head's `group` query heads together: they are
  // consecutive in q_ and att_, and attn_scores_f16_group reads each K row once for them.
  // Other caches take one query head per item (finer pieces for the threads, and no
  // shared-K kernel to gain from). The mix stays per head either way: sharing V measured
  // slower (benchmarks/NOTES.md, session 24).
  const int64_t per_item = kv_type_ == KvCacheType::F16 ? group : 1;
  // One (row, heads) pair per work item; each reads its own sequence's cache up to its
  // own position. Items run head-major so that each thread's contiguous chunk holds
  // every row: row-major chunks gave one thread a prompt's short early rows and the
  // other its long late ones (causal work grows with the row).
  global_pool()->parallel_for(n * (H / per_item), [&](int64_t b, int64_t e) {
    thread_local std::vector<float> scores;  // [per_item][len]
    grow(scores, (size_t)(per_item * cfg_.max_context));
    for (int64_t item = b; item < e; ++item) {
      const int64_t t = item % n, h0 = item / n * per_item, kvh = h0 / group;
      const int64_t len = row_pos_[t] + 1;  // causal: positions 0..row_pos
      const float* q = q_.data() + t * q_dim_ + h0 * hd;
      float* out = att_.data() + t * q_dim_ + h0 * hd;
      const size_t off = kv_offset(row_slot_[t], layer, kvh, 0);  // rows of hd, one per position
      // A decode row's history is one short stream of K and one of V per KV head. Asked
      // for in one burst before the group's first head, it arrives at the memory's pace
      // rather than the score loop's, and the group's other heads find it in L2. A
      // prompt's rows share their slot and bring the lines in as they go: not asked for.
      const bool alone_in_slot = (t + 1 == n || row_slot_[t + 1] != row_slot_[t]) &&
                                 (t == 0 || row_slot_[t - 1] != row_slot_[t]);
      if (alone_in_slot && (h0 % group == 0 || item == b)) prefetch_history(off, len);
      if (kv_type_ == KvCacheType::F16)
        kt.attn_scores_f16_group(q, per_item, k_f16_.data() + off, hd, len, hd, scale, scores.data(), len);
      else if (kv_type_ == KvCacheType::F32)
        kt.attn_scores_f32(q, k_f32_.data() + off, hd, len, hd, scale, scores.data());
      else  // element offsets are whole blocks: hd % 32 == 0
        kt.attn_scores_q8(q, k_q8_.data() + off / QK, hd / QK, len, hd, scale, scores.data());
      for (int64_t g = 0; g < per_item; ++g) {
        float* p = scores.data() + g * len;
        kt.softmax(p, len);
        if (kv_type_ == KvCacheType::F16) kt.attn_mix_f16(p, v_f16_.data() + off, hd, len, hd, out + g * hd);
        else if (kv_type_ == KvCacheType::F32) kt.attn_mix_f32(p, v_f32_.data() + off, hd, len, hd, out + g * hd);
        else kt.attn_mix_q8(p, v_q8_.data() + off / QK, hd / QK, len, hd, out + g * hd);
      }
    }
  });
}

void LlamaModel::forward(const int32_t* ids, int64_t n, bool all_logits, float* logits) {
  const Segment one{0, n};
  forward_batch(ids, &one, 1, all_logits, logits);
}

void LlamaModel::forward_batch(const int32_t* ids, const Segment* segs, int64_t n_segs, bool all_logits,
                               float* logits) {
  // A sequence's numbers must not depend on what it is batched with, so the activation
  // kernel is chosen by the segment's own length (segment_is_prompt), and the prompt
  // segments go first so that each matrix is multiplied in at most two calls.
  bool sorted = true;
  for (int64_t s = 1; s < n_segs; ++s)
    if (segment_is_prompt(segs[s]) && !segment_is_prompt(segs[s - 1])) sorted = false;
  if (sorted) {
    forward_grouped(ids, segs, n_segs, all_logits, logits);
    return;
  }
  std::vector<int64_t> order, start(n_segs);
  for (int64_t s = 0, t = 0; s < n_segs; t += segs[s].n, ++s) start[s] = t;
  for (int pass = 0; pass < 2; ++pass)
    for (int64_t s = 0; s < n_segs; ++s)
      if (segment_is_prompt(segs[s]) == (pass == 0)) order.push_back(s);
  std::vector<int32_t> ids2;
  std::vector<Segment> segs2;
  for (int64_t s : order) {
    ids2.insert(ids2.end(), ids + start[s], ids + start[s] + segs[s].n);
    segs2.push_back(segs[s]);
  }
  const int64_t vocab = cfg_.vocab;
  std::vector<int64_t> dst(n_segs);  // first logits row of each segment, in the caller's order
  int64_t out_rows = 0;
  for (int64_t s = 0; s < n_segs; ++s) { dst[s] = out_rows; out_rows += all_logits ? segs[s].n : 1; }
  std::vector<float> out((size_t)(out_rows * vocab));
  forward_grouped(ids2.data(), segs2.data(), n_segs, all_logits, out.data());
  int64_t r = 0;  // back to the caller's segment order
  for (int64_t s : order) {
    const int64_t rows = all_logits ? segs[s].n : 1;
    std::copy(out.begin() + r * vocab, out.begin() + (r + rows) * vocab, logits + dst[s] * vocab);
    r += rows;
  }
}

int64_t LlamaModel::prompt_rows_in_f32(const PackedMatrix& w, int64_t n_prompt) const {
  const bool integer = format_info(w.format()).integer_path;
  return (integer ? (precise_ ? kt_->f32_prompts : kt_->bf16_prompts) : kt_->dense_prompts) ? n_prompt : 0;
}

void LlamaModel::matmul_rows(const PackedMatrix& w, const float* x, int64_t n, int64_t n_prompt, float* y) const {
  const int64_t n_f32 = prompt_rows_in_f32(w, n_prompt);
  if (n_f32 > 0) w.matmul(x, n_f32, y, f32_prompt_activations());
  const int64_t n_int = n_prompt - n_f32;  // prompt rows on the integer kernels
  if (n_int > 0) w.matmul(x + n_f32 * w.k(), n_int, y + n_f32 * w.n(), prompt_activations());
  if (n > n_prompt) w.matmul(x + n_prompt * w.k(), n - n_prompt, y + n_prompt * w.n(), row_activations());
}

void LlamaModel::matmul_rows_shared(std::initializer_list<const PackedMatrix*> ws, std::initializer_list<float*> ys,
                                    const float* x, int64_t n, int64_t n_prompt) const {
  const PackedMatrix* const* w = ws.begin();
  float* const* y = ys.begin();
  const int count = (int)ws.size();
  const int64_t n_f32 = prompt_rows_in_f32(*w[0], n_prompt);
  for (int i = 1; i < count; ++i) {
    if (prompt_rows_in_f32(*w[i], n_prompt) != n_f32) {  // the matrices split the rows differently
      for (int j = 0; j < count; ++j) matmul_rows(*w[j], x, n, n_prompt, y[j]);
      return;
    }
  }
  if (n_f32 > 0) matmul_shared_input(w, y, count, x, n_f32, f32_prompt_activations());
  const auto rows_from = [&](int64_t r0, int64_t rows, Activations act) {
    float* part[kMaxSharedInput];
    for (int i = 0; i < count; ++i) part[i] = y[i] + r0 * w[i]->n();
    matmul_shared_input(w, part, count, x + r0 * w[0]->k(), rows, act);
  };
  if (n_prompt > n_f32) rows_from(n_f32, n_prompt - n_f32, prompt_activations());
  if (n > n_prompt) rows_from(n_prompt, n - n_prompt, row_activations());
}

namespace {
// f(t) for every row t < n: over the pool for a prompt's rows, in this thread for the few
// rows of a decode step (waking the pool costs more than they take). Each row is computed
// the same way either way, so results do not depend on the thread count.
template <class F>
void rows(int64_t n, F&& f) {
  if (n < 16) {
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
  global_pool()->parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) f(t);
  });
}
}  // namespace

void LlamaModel::forward_grouped(const int32_t* ids, const Segment* segs, int64_t n_segs, bool all_logits,
                                 float* logits) {
  // Rows in all (in the last layer, once trimmed: the rows still computed); of them, the
  // leading prompt rows (segment_is_prompt).
  int64_t n = 0, n_prompt = 0, n_prompt_segs = 0;
  for (int64_t s = 0; s < n_segs; ++s) {
    n += segs[s].n;
    if (segment_is_prompt(segs[s])) n_prompt += segs[s].n, ++n_prompt_segs;
  }
  grow(row_slot_, n); grow(row_pos_, n);
  for (int64_t s = 0, t = 0; s < n_segs; ++s)
    for (int64_t i = 0; i < segs[s].n; ++i, ++t) {
      row_slot_[t] = segs[s].slot;
      row_pos_[t] = pos_[segs[s].slot] + i;
    }
  const int64_t dim = cfg_.dim, ffn = cfg_.ffn_dim, hd = cfg_.head_dim, half = hd / 2;
  grow(x_, n * dim); grow(h_, n * dim); grow(o_, n * dim);
  grow(q_, n * q_dim_); grow(att_, n * q_dim_);
  grow(k_, n * kv_dim_); grow(v_, n * kv_dim_);
  grow(gate_, n * ffn); grow(up_, n * ffn);

  for (int64_t t = 0; t < n; ++t) w_.embed->dequantize_row(ids[t], x_.data() + t * dim);

  // Past the last layer's cache write only the rows that reach the head matter: each
  // segment's last row, unless all_logits. So the last layer's attention, output
  // projection and MLP run on those n_segs rows alone (a 128-token prompt: one row
  // instead of 128, about 1/n_layers of its work). Its K and V still come from every row.
  const bool trim = !all_logits && n > n_segs;

  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    const LayerWeights& L = w_.layers[l];
    // --- attention block ---
    rows(n, [&](int64_t t) { rms_norm(x_.data() + t * dim, L.attn_norm, h_.data() + t * dim, dim, cfg_.norm_eps); });
    matmul_rows_shared({L.wq, L.wk, L.wv}, {q_.data(), k_.data(), v_.data()}, h_.data(), n, n_prompt);
    rows(n, [&](int64_t t) {
      float* q = q_.data() + t * q_dim_;
      float* k = k_.data() + t * kv_dim_;
      float* v = v_.data() + t * kv_dim_;
      if (L.bq) for (int64_t i = 0; i < q_dim_; ++i) q[i] += L.bq[i];
      if (L.bk) for (int64_t i = 0; i < kv_dim_; ++i) k[i] += L.bk[i];
      if (L.bv) for (int64_t i = 0; i < kv_dim_; ++i) v[i] += L.bv[i];
      const int64_t p = row_pos_[t];
      apply_rope(q, cfg_.n_heads, hd, rope_cos_.data() + p * half, rope_sin_.data() + p * half);
      apply_rope(k, cfg_.n_kv_heads, hd, rope_cos_.data() + p * half, rope_sin_.data() + p * half);
      for (int64_t kvh = 0; kvh < cfg_.n_kv_heads; ++kvh) {
        const size_t off = kv_offset(row_slot_[t], l, kvh, p);
        const float *kh = k + kvh * hd, *vh = v + kvh * hd;
        if (kv_type_ == KvCacheType::F32) {
          std::copy(kh, kh + hd, k_f32_.data() + off);
          std::copy(vh, vh + hd, v_f32_.data() + off);
        } else if (kv_type_ == KvCacheType::Q8_0) {  // hd % 32 == 0 (constructor)
          quantize_row_q8_0_amax(kh, k_q8_.data() + off / QK, hd);
          quantize_row_q8_0_amax(vh, v_q8_.data() + off / QK, hd);
        } else {
          for (int64_t i = 0; i < hd; ++i) {
            k_f16_[off + i] = fp32_to_fp16(kh[i]);
            v_f16_[off + i] = fp32_to_fp16(vh[i]);
          }
        }
      }
    });
    if (trim && l == cfg_.n_layers - 1) {
      // Row s <- segment s's last row (t >= s: moving forward never overwrites a source).
      // Prompt segments come first, so the first n_prompt_segs rows stay prompt rows and
      // keep their kernels: a sequence's numbers do not depend on the trim.
      for (int64_t s = 0, end = 0; s < n_segs; ++s) {
        end += segs[s].n;
        const int64_t t = end - 1;
        std::copy(q_.data() + t * q_dim_, q_.data() + (t + 1) * q_dim_, q_.data() + s * q_dim_);
        std::copy(x_.data() + t * dim, x_.data() + (t + 1) * dim, x_.data() + s * dim);
        row_pos_[s] = row_pos_[t];
        row_slot_[s] = row_slot_[t];
      }
      n = n_segs;
      n_prompt = n_prompt_segs;
    }
    attention(l, n);
    matmul_rows(*L.wo, att_.data(), n, n_prompt, o_.data());
    rows(n, [&](int64_t t) { for (int64_t i = t * dim; i < (t + 1) * dim; ++i) x_[i] += o_[i]; });
    // --- SwiGLU MLP block ---
    rows(n, [&](int64_t t) { rms_norm(x_.data() + t * dim, L.ffn_norm, h_.data() + t * dim, dim, cfg_.norm_eps); });
    matmul_rows_shared({L.w_gate, L.w_up}, {gate_.data(), up_.data()}, h_.data(), n, n_prompt);
    rows(n, [&](int64_t t) { kt_->swiglu(gate_.data() + t * ffn, up_.data() + t * ffn, ffn); });
    matmul_rows(*L.w_down, gate_.data(), n, n_prompt, o_.data());
    rows(n, [&](int64_t t) { for (int64_t i = t * dim; i < (t + 1) * dim; ++i) x_[i] += o_[i]; });
  }
  for (int64_t s = 0; s < n_segs; ++s) pos_[segs[s].slot] += segs[s].n;

  // The head runs on every row (all_logits) or on each segment's last row (row s once
  // trimmed).
  int64_t rows = 0;
  for (int64_t s = 0, end = 0; s < n_segs; ++s) {
    end += segs[s].n;
    const int64_t last = trim ? s : end - 1;
    for (int64_t t = all_logits ? end - segs[s].n : last; t <= last; ++t, ++rows)
      rms_norm(x_.data() + t * dim, w_.final_norm, h_.data() + rows * dim, dim, cfg_.norm_eps);
  }
  // A segment's head rows are all its rows (all_logits: same kernels as its body) or its
  // last one (never a prompt-sized batch).
  matmul_rows(*w_.output, h_.data(), rows, all_logits ? n_prompt : 0, logits);
}

}  // namespace linly
