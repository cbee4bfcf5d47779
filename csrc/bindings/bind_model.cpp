// LlamaModel for Python: takes a config dict and the canonical tensor set (HF names),
// checks every shape against the config before the native model sees a pointer.
#include <memory>

#include "bindings/py_packed_matrix.h"
#include "model/llama.h"
#include "runtime/dispatch.h"

namespace linly::py_bind {

namespace {

template <class T>
T get(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw py::value_error(std::string("model config is missing '") + key + "'");
  try {
    return d[key].cast<T>();
  } catch (const py::cast_error&) {
    throw py::value_error(std::string("model config '") + key + "' has the wrong type");
  }
}

}  // namespace

const float* weight_vector(const py::dict& w, const std::string& name, int64_t len, bool optional,
                           py::list& keep_alive) {
  if (!w.contains(name)) {
    if (optional) return nullptr;
    throw py::value_error("missing weight '" + name + "'");
  }
  py::array a = py::array::ensure(w[name.c_str()]);
  if (!a) throw py::type_error("weight '" + name + "' must be a numpy array");
  require_f32(a, name.c_str(), 1, 1);
  if (a.shape(0) != len)
    throw py::value_error("weight '" + name + "' has shape " + shape_str(a) + " but the config needs (" +
                          std::to_string(len) + ",)");
  keep_alive.append(a);
  return static_cast<const float*>(a.data());
}

ModelConfig config_from_dict(const py::dict& d) {
  ModelConfig c;
  c.vocab = get<int64_t>(d, "vocab_size");
  c.dim = get<int64_t>(d, "hidden_size");
  c.n_layers = get<int64_t>(d, "num_hidden_layers");
  c.n_heads = get<int64_t>(d, "num_attention_heads");
  c.n_kv_heads = get<int64_t>(d, "num_key_value_heads");
  c.head_dim = get<int64_t>(d, "head_dim");
  c.ffn_dim = get<int64_t>(d, "intermediate_size");
  c.max_context = get<int64_t>(d, "max_context");
  c.norm_eps = get<float>(d, "rms_norm_eps");
  c.rope_theta = get<float>(d, "rope_theta");
  c.qkv_bias = get<bool>(d, "qkv_bias");
  if (d.contains("rope_scaling") && !d["rope_scaling"].is_none()) {
    const py::dict rs = d["rope_scaling"].cast<py::dict>();
    const std::string type = get<std::string>(rs, "rope_type");
    c.rope.factor = get<float>(rs, "factor");
    if (type == "linear") {
      c.rope.type = RopeScaling::Type::Linear;
    } else if (type == "llama3") {
      c.rope.type = RopeScaling::Type::Llama3;
      c.rope.low_freq_factor = get<float>(rs, "low_freq_factor");
      c.rope.high_freq_factor = get<float>(rs, "high_freq_factor");
      c.rope.original_max_position = get<int64_t>(rs, "original_max_position_embeddings");
    } else {
      throw py::value_error("rope_scaling type '" + type + "' is not supported (supported: linear, llama3)");
    }
  }
  const std::string problem = c.problem();
  if (!problem.empty()) throw py::value_error("bad model config: " + problem);
  return c;
}

py::array_t<int32_t, py::array::c_style | py::array::forcecast> int_array(const py::object& in, const char* what) {
  const py::array raw = py::array::ensure(in);
  if (!raw || (raw.dtype().kind() != 'i' && raw.dtype().kind() != 'u'))
    throw py::type_error(std::string(what) + " must be integers");
  if (raw.ndim() != 1) throw py::value_error(std::string(what) + " must be 1-D, got shape " + shape_str(raw));
  return raw;
}

void check_ids(const int32_t* p, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] < 0 || p[i] >= vocab)
      throw py::value_error("token id " + std::to_string(p[i]) + " at index " + std::to_string(i) +
                            " is outside the vocabulary [0, " + std::to_string(vocab) + ")");
  }
}

void check_room(int64_t position, int64_t n, int64_t ctx) {
  if (position + n > ctx)
    throw py::value_error(std::to_string(n) + " tokens at position " + std::to_string(position) +
                          " exceed the context of " + std::to_string(ctx) +
                          " tokens; reset() the model, shorten the prompt or load with a larger max_context");
}

namespace {

struct PyLlamaModel {
  py::list keep_alive;  // the matrices and arrays the native model points into
  std::unique_ptr<LlamaModel> model;

  const PackedMatrix* matrix(const py::dict& w, const std::string& name, int64_t n, int64_t k) {
    if (!w.contains(name)) throw py::value_error("missing weight '" + name + "'");
    py::object o = w[name.c_str()];
    PyPackedMatrix* pm;
    try {
      pm = o.cast<PyPackedMatrix*>();
    } catch (const py::cast_error&) {
      throw py::type_error("weight '" + name + "' must be a PackedMatrix");
    }
    if (pm->mat->n() != n || pm->mat->k() != k)
      throw py::value_error("weight '" + name + "' has shape [" + std::to_string(pm->mat->n()) + ", " +
                            std::to_string(pm->mat->k()) + "] but the config needs [" + std::to_string(n) +
                            ", " + std::to_string(k) + "]");
    keep_alive.append(o);
    return pm->mat.get();
  }

  const float* vector(const py::dict& w, const std::string& name, int64_t len, bool optional = false) {
    return weight_vector(w, name, len, optional, keep_alive);
  }

  PyLlamaModel(const py::dict& cfg_dict, const py::dict& w, const std::string& kv, const std::string& activations,
               int64_t slots) {
    const ModelConfig c = config_from_dict(cfg_dict);
    if (slots < 1 || slots > 1024) throw py::value_error("slots must be in [1, 1024], got " + std::to_string(slots));
    KvCacheType kv_type;
    if (kv == "f32") kv_type = KvCacheType::F32;
    else if (kv == "f16") kv_type = KvCacheType::F16;
    else if (kv == "q8_0") kv_type = KvCacheType::Q8_0;
    else throw py::value_error("kv_cache must be 'f32', 'f16' or 'q8_0', got '" + kv + "'");
    if (activations != "int8" && activations != "int8x2")
      throw py::value_error("activations must be 'int8' (fast) or 'int8x2' (precise), got '" + activations + "'");
    ModelWeights mw;
    mw.embed = matrix(w, "model.embed_tokens.weight", c.vocab, c.dim);
    mw.final_norm = vector(w, "model.norm.weight", c.dim);
    mw.output = matrix(w, "lm_head.weight", c.vocab, c.dim);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      mw.layers.push_back(layer_weights<LayerWeights>(
          c, l, [&](const std::string& name, int64_t n, int64_t k) { return matrix(w, name, n, k); },
          [&](const std::string& name, int64_t len, bool optional) { return vector(w, name, len, optional); }));
    }
    py::gil_scoped_release nogil;
    model = std::make_unique<LlamaModel>(c, std::move(mw), kv_type, activations == "int8x2", default_kernels(), slots);
  }

  void check_slot(int64_t slot) const {
    if (slot < 0 || slot >= model->slots())
      throw py::value_error("slot " + std::to_string(slot) + " is outside [0, " + std::to_string(model->slots()) + ")");
  }

  void check_ids(const int32_t* p, int64_t n) const { py_bind::check_ids(p, n, model->config().vocab); }
  void check_room(int64_t slot, int64_t n) const {
    py_bind::check_room(model->position(slot), n, model->config().max_context);
  }

  py::array forward(const py::object& ids_in, bool all_logits) {
    auto ids = int_array(ids_in, "token ids");
    const int64_t n = ids.shape(0), vocab = model->config().vocab;
    if (n == 0) throw py::value_error("no token ids given");
    check_ids(ids.data(), n);
    check_room(0, n);
    py::array_t<float> logits = all_logits ? py::array_t<float>({n, vocab}) : py::array_t<float>(vocab);
    float* out = logits.mutable_data();
    {
      py::gil_scoped_release nogil;
      model->forward(ids.data(), n, all_logits, out);
    }
    return std::move(logits);
  }

  py::array forward_batch(const py::object& ids_in, const py::object& slots_in, const py::object& lengths_in) {
    auto ids = int_array(ids_in, "token ids");
    auto slots = int_array(slots_in, "slots");
    auto lengths = int_array(lengths_in, "lengths");
    const int64_t n_segs = slots.shape(0), vocab = model->config().vocab;
    if (n_segs == 0 || lengths.shape(0) != n_segs)
      throw py::value_error("slots and lengths must be non-empty and of equal length");
    std::vector<Segment> segs(n_segs);
    std::vector<bool> used(model->slots(), false);
    int64_t total = 0;
    for (int64_t s = 0; s < n_segs; ++s) {
      const int64_t slot = slots.data()[s], n = lengths.data()[s];
      check_slot(slot);
      if (used[slot]) throw py::value_error("slot " + std::to_string(slot) + " appears twice in one batch");
      used[slot] = true;
      if (n < 1) throw py::value_error("every segment needs at least one token");
      check_room(slot, n);
      segs[s] = Segment{slot, n};
      total += n;
    }
    if (total != ids.shape(0))
      throw py::value_error("lengths add up to " + std::to_string(total) + " but " + std::to_string(ids.shape(0)) +
                            " token ids were given");
    check_ids(ids.data(), total);
    py::array_t<float> logits({n_segs, vocab});
    float* out = logits.mutable_data();
    {
      py::gil_scoped_release nogil;
      model->forward_batch(ids.data(), segs.data(), n_segs, false, out);
    }
    return std::move(logits);
  }
};

}  // namespace

void bind_model(py::module_& m) {
  py::class_<PyLlamaModel>(m, "LlamaModel", "The native LLaMA/Qwen2 decoder with its KV cache.")
      .def(py::init<const py::dict&, const py::dict&, const std::string&, const std::string&, int64_t>(),
           py::arg("config"), py::arg("weights"), py::arg("kv_cache") = "f16", py::arg("activations") = "int8x2",
           py::arg("slots") = 1)
      .def("forward", &PyLlamaModel::forward, py::arg("ids"), py::arg("all_logits") = false,
           "Runs ids at the current position; returns the last logits [vocab] or all [n, vocab].")
      .def("forward_batch", &PyLlamaModel::forward_batch, py::arg("ids"), py::arg("slots"), py::arg("lengths"),
           "One step over several sequences: segment i (lengths[i] ids, continuing KV slot slots[i]) follows "
           "segment i-1 in ids. Returns each segment's last logits [n_segments, vocab].")
      .def_property_readonly("position", [](const PyLlamaModel& p) { return p.model->position(0); })
      .def_property_readonly("slots", [](const PyLlamaModel& p) { return p.model->slots(); })
      .def("slot_position", [](const PyLlamaModel& p, int64_t slot) {
        p.check_slot(slot);
        return p.model->position(slot);
      }, py::arg("slot"), "Tokens cached in a slot.")
      .def("truncate", [](PyLlamaModel& p, int64_t n, int64_t slot) {
        if (n < 0) throw py::value_error("truncate needs n >= 0");
        p.check_slot(slot);
        p.model->truncate(n, slot);
      }, py::arg("n"), py::arg("slot") = 0, "Keeps only the first n cached tokens of a slot.")
      .def_property_readonly("kv_cache_bytes", [](const PyLlamaModel& p) { return p.model->kv_cache_bytes(); })
      .def_property_readonly("max_context", [](const PyLlamaModel& p) { return p.model->config().max_context; });
}

}  // namespace linly::py_bind
