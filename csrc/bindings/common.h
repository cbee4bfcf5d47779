// Argument checking shared by the binding files: every message says what was wrong,
// what was expected and, where there is one, the fix.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "kernels/kernel_table.h"
#include "model/config.h"
#include "quant/formats.h"

namespace linly::py_bind {

namespace py = pybind11;

std::string shape_str(const py::array& a);
Format parse_format_or_throw(const std::string& name);
// Validates a float32, C-contiguous array of ndim in [min_ndim, max_ndim].
void require_f32(const py::array& a, const char* what, int min_ndim, int max_ndim);
// Validates a uint8, C-contiguous, 2-D array holding rows of `k` elements of `fmt`.
void require_packed_rows(const py::array& data, Format fmt, int64_t k);
void require_k(Format fmt, int64_t k);
const KernelTable& kernels_or_default(const py::object& isa);

// The model bindings' shared checks (bind_model.cpp): a config dict → ModelConfig, token
// ids → int32 array, ids inside the vocabulary, room left in the context.
ModelConfig config_from_dict(const py::dict& d);
py::array_t<int32_t, py::array::c_style | py::array::forcecast> int_array(const py::object& in, const char* what);
void check_ids(const int32_t* p, int64_t n, int64_t vocab);
void check_room(int64_t position, int64_t n, int64_t ctx);

// A float32 [len] vector weight (norms, biases) of the dict, kept alive in keep_alive;
// null when absent and optional.
const float* weight_vector(const py::dict& w, const std::string& name, int64_t len, bool optional,
                           py::list& keep_alive);

// Layer l's weights under their Hugging Face names, each fetched and checked by the
// caller's matrix(name, n, k) and vector(name, len, optional); L is the CPU decoder's
// LayerWeights or the GPU decoder's HostLayer (the same field names).
template <class L, class MatrixFn, class VectorFn>
L layer_weights(const ModelConfig& c, int64_t l, MatrixFn&& matrix, VectorFn&& vector) {
  const int64_t q = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  L w{};
  w.wq = matrix(p + "self_attn.q_proj.weight", q, c.dim);
  w.wk = matrix(p + "self_attn.k_proj.weight", kvd, c.dim);
  w.wv = matrix(p + "self_attn.v_proj.weight", kvd, c.dim);
  w.wo = matrix(p + "self_attn.o_proj.weight", c.dim, q);
  w.w_gate = matrix(p + "mlp.gate_proj.weight", c.ffn_dim, c.dim);
  w.w_up = matrix(p + "mlp.up_proj.weight", c.ffn_dim, c.dim);
  w.w_down = matrix(p + "mlp.down_proj.weight", c.dim, c.ffn_dim);
  w.attn_norm = vector(p + "input_layernorm.weight", c.dim, false);
  w.ffn_norm = vector(p + "post_attention_layernorm.weight", c.dim, false);
  w.bq = vector(p + "self_attn.q_proj.bias", q, !c.qkv_bias);
  w.bk = vector(p + "self_attn.k_proj.bias", kvd, !c.qkv_bias);
  w.bv = vector(p + "self_attn.v_proj.bias", kvd, !c.qkv_bias);
  return w;
}

void bind_runtime(py::module_& m);
void bind_quant(py::module_& m);
void bind_packed_matrix(py::module_& m);
void bind_model(py::module_& m);
void bind_gpu(py::module_& m);
void bind_cuda_model(py::module_& m);

}  // namespace linly::py_bind
