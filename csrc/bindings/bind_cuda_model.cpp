// CudaLlamaModel for Python: the fp16 GPU decoder (cuda/decoder.h) behind the same
// methods as LlamaModel, so linly_engine.Model drives either. Every shape is checked
// against the config before the decoder sees a pointer. Without a CUDA build the class
// still exists and says why it cannot be made.
#include <memory>
#include <string>
#include <vector>

#include "bindings/common.h"
#include "model/llama.h"
#if LINLY_CUDA_ENABLED
#include "cuda/api.h"
#include "cuda/decoder.h"
#endif

namespace linly::py_bind {

namespace {

#if LINLY_CUDA_ENABLED
struct PyCudaModel {
  py::list keep_alive;  // host arrays the upload reads (released after construction)
  std::unique_ptr<cuda::Decoder> decoder;
  ModelConfig cfg;

  // ("q4_0" | "q4_1" | "q4_g32|64|128" | "q8_0", uint8 rows) or ("f16", float16 [n, k]).
  cuda::HostMatrix matrix(const py::dict& w, const std::string& name, int64_t n, int64_t k) {
    if (!w.contains(name)) throw py::value_error("missing weight '" + name + "'");
    py::tuple t;
    try {
      t = w[name.c_str()].cast<py::tuple>();
    } catch (const py::cast_error&) {
      throw py::type_error("weight '" + name + "' must be a (format, array) tuple");
    }
    if (t.size() != 2) throw py::type_error("weight '" + name + "' must be a (format, array) tuple");
    cuda::HostMatrix m;
    m.fmt = t[0].cast<std::string>();
    py::array a = py::array::ensure(t[1]);
    if (!a) throw py::type_error("weight '" + name + "' must carry a numpy array");
    if (m.fmt == "f16") {
      if (a.dtype().kind() != 'f' || a.itemsize() != 2 || a.ndim() != 2 || !(a.flags() & py::array::c_style))
        throw py::type_error("f16 weight '" + name + "' must be a C-contiguous float16 [n, k] array");
      if (a.shape(0) != n || a.shape(1) != k)
        throw py::value_error("weight '" + name + "' has shape " + shape_str(a) + " but the config needs (" +
                              std::to_string(n) + ", " + std::to_string(k) + ")");
    } else {
      require_packed_rows(a, parse_format_or_throw(m.fmt), k);
      if (a.shape(0) != n)
        throw py::value_error("weight '" + name + "' has " + std::to_string(a.shape(0)) + " rows but the config needs " +
                              std::to_string(n));
    }
    keep_alive.append(a);
    m.data = static_cast<const uint8_t*>(a.data());
    m.nbytes = a.nbytes();
    m.n = n;
    m.k = k;
    return m;
  }

  const float* vector(const py::dict& w, const std::string& name, int64_t len, bool optional = false) {
    return weight_vector(w, name, len, optional, keep_alive);
  }

  PyCudaModel(const py::dict& cfg_dict, const py::dict& w) : cfg(config_from_dict(cfg_dict)) {
    const ModelConfig& c = cfg;
    cuda::HostModel hm;
    hm.cfg = c;
    {
      py::array e;
      if (w.contains("model.embed_tokens.weight")) e = py::array::ensure(w["model.embed_tokens.weight"]);
      if (!e || e.dtype().kind() != 'f' || e.itemsize() != 2 || e.ndim() != 2 || !(e.flags() & py::array::c_style) ||
          e.shape(0) != c.vocab || e.shape(1) != c.dim)
        throw py::value_error("'model.embed_tokens.weight' must be a float16 [" + std::to_string(c.vocab) + ", " +
                              std::to_string(c.dim) + "] array for the GPU");
      keep_alive.append(e);
      hm.embed_f16 = static_cast<const uint16_t*>(e.data());
    }
    hm.final_norm = vector(w, "model.norm.weight", c.dim);
    hm.output = matrix(w, "lm_head.weight", c.vocab, c.dim);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      hm.layers.push_back(layer_weights<cuda::HostLayer>(
          c, l, [&](const std::string& name, int64_t n, int64_t k) { return matrix(w, name, n, k); },
          [&](const std::string& name, int64_t len, bool optional) { return vector(w, name, len, optional); }));
    }
    // every argument checked (tests/test_cuda_decoder.py does so without a GPU); now the device
    std::string why;
    if (cuda::device_count(&why) == 0)
      throw std::runtime_error("no usable CUDA device (" + why + "); load the model on the CPU (device='cpu')");
    std::vector<float> cos_t, sin_t;
    rope_tables(c, cos_t, sin_t);
    hm.rope_cos = cos_t.data();
    hm.rope_sin = sin_t.data();
    {
      py::gil_scoped_release nogil;
      decoder = cuda::Decoder::create(hm);
    }
    keep_alive = py::list();  // everything is on the device now
  }

  py::array forward(const py::object& ids_in, bool all_logits) {
    auto ids = int_array(ids_in, "token ids");
    const int64_t n = ids.shape(0), vocab = cfg.vocab;
    if (n == 0) throw py::value_error("no token ids given");
    check_ids(ids.data(), n, vocab);
    check_room(decoder->position(), n, cfg.max_context);
    py::array_t<float> logits = all_logits ? py::array_t<float>({n, vocab}) : py::array_t<float>(vocab);
    float* out = logits.mutable_data();
    {
      py::gil_scoped_release nogil;
      decoder->forward(ids.data(), n, all_logits, out);
    }
    return logits;
  }
};
#endif

}  // namespace

void bind_cuda_model(py::module_& m) {
#if LINLY_CUDA_ENABLED
  py::class_<PyCudaModel>(m, "CudaLlamaModel",
                          "The fp16 LLaMA/Qwen2 decoder on the GPU (W4A16/W8A16/fp16 matrices, fp16 KV cache).")
      .def(py::init<const py::dict&, const py::dict&>(), py::arg("config"), py::arg("weights"),
           "weights: HF names → (format, array) for matrices (on-disk rows, or float16 [n, k] with 'f16'), "
           "float16 [vocab, dim] for the embedding, float32 vectors for norms and biases.")
      .def("forward", &PyCudaModel::forward, py::arg("ids"), py::arg("all_logits") = false,
           "Runs ids at the current position; returns the last logits [vocab] or all [n, vocab].")
      .def("forward_batch", [](PyCudaModel& p, const py::object& ids, const py::object& slots_in,
                               const py::object& lengths_in) -> py::array {
             // The scheduler's step with one sequence (the server with --parallel 1).
             auto slots = int_array(slots_in, "slots");
             auto lengths = int_array(lengths_in, "lengths");
             if (slots.shape(0) != 1 || lengths.shape(0) != 1 || slots.data()[0] != 0)
               throw py::value_error("the GPU decoder runs one sequence (slot 0); batched steps over several "
                                     "sequences run on the CPU decoder");
             py::array_t<float> last = p.forward(ids, false);
             return last.reshape(std::vector<py::ssize_t>{1, (py::ssize_t)p.cfg.vocab});
           }, py::arg("ids"), py::arg("slots"), py::arg("lengths"))
      .def_property_readonly("position", [](const PyCudaModel& p) { return p.decoder->position(); })
      .def_property_readonly("slots", [](const PyCudaModel&) { return 1; })
      .def("slot_position", [](const PyCudaModel& p, int64_t slot) {
        if (slot != 0) throw py::value_error("slot " + std::to_string(slot) + " is outside [0, 1)");
        return p.decoder->position();
      }, py::arg("slot"))
      .def("truncate", [](PyCudaModel& p, int64_t n, int64_t slot) {
        if (n < 0) throw py::value_error("truncate needs n >= 0");
        if (slot != 0) throw py::value_error("slot " + std::to_string(slot) + " is outside [0, 1)");
        p.decoder->truncate(n);
      }, py::arg("n"), py::arg("slot") = 0)
      .def_property_readonly("kv_cache_bytes", [](const PyCudaModel& p) { return p.decoder->kv_cache_bytes(); })
      .def_property_readonly("weight_bytes", [](const PyCudaModel& p) { return p.decoder->weight_bytes(); })
      .def_property_readonly("max_context", [](const PyCudaModel& p) { return p.cfg.max_context; })
      .def_property("use_graph", [](const PyCudaModel& p) { return p.decoder->use_graph(); },
                    [](PyCudaModel& p, bool on) { p.decoder->set_use_graph(on); },
                    "Whether decode steps replay the captured CUDA graph (LINLY_CUDA_GRAPH=0 starts with it off).");
#else
  m.def("CudaLlamaModel", [](py::args, py::kwargs) -> py::object {
    throw std::runtime_error(
        "this build of linly-engine has no CUDA part: nvcc was not found when it was built. Reinstall on a machine "
        "with the CUDA toolkit, or run on the CPU (device='cpu')");
  });
#endif
}

}  // namespace linly::py_bind
