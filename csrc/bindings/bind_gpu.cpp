// The GPU layouts (always: they are plain C++, tested on any CPU) and, in a CUDA build,
// weight matrices on the GPU. Without a CUDA build or a device the CUDA entry points
// raise RuntimeError saying which of the two is missing.
#include <cstring>
#include <stdexcept>
#include <vector>
#include <string>

#include "bindings/common.h"
#include "gpu/layout.h"
#if LINLY_CUDA_ENABLED
#include "cuda/api.h"
#endif

namespace linly::py_bind {

namespace {

template <class T>
py::array_t<T> to_np(const std::vector<T>& v, int64_t rows) {
  const int64_t cols = rows > 0 ? (int64_t)v.size() / rows : 0;
  py::array_t<T> a({rows, cols});
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

bool is_w8(const std::string& fmt) { return fmt == "q8_0"; }

// Checks that `data` holds n rows of `fmt` with k columns; returns n.
int64_t checked_rows(const py::array& data, const std::string& fmt, int64_t k) {
  require_packed_rows(data, parse_format_or_throw(fmt), k);
  return data.shape(0);
}

gpu::W4Weights w4_from(const py::array& data, const std::string& fmt, int64_t k) {
  const int64_t n = checked_rows(data, fmt, k);
  return gpu::repack_w4(static_cast<const uint8_t*>(data.data()), data.nbytes(), fmt.c_str(), n, k);
}

gpu::W8Weights w8_from(const py::array& data, const std::string& fmt, int64_t k) {
  const int64_t n = checked_rows(data, fmt, k);
  return gpu::repack_w8(static_cast<const uint8_t*>(data.data()), data.nbytes(), fmt.c_str(), n, k);
}

#if !LINLY_CUDA_ENABLED
const char* kNoCudaBuild =
    "this build of linly-engine has no CUDA part: nvcc was not found when it was built. Reinstall on a "
    "machine with the CUDA toolkit (nvcc on PATH, or CUDACXX set); `pip install . -C cmake.define.LINLY_CUDA=ON` "
    "makes a missing nvcc an error instead of a CPU-only build";
#endif

std::string cuda_missing() {
#if LINLY_CUDA_ENABLED
  std::string why;
  if (cuda::device_count(&why) > 0) return "";
  return "no usable CUDA device (" + why + "); run on the CPU (the default) or on a machine with an NVIDIA GPU";
#else
  return kNoCudaBuild;
#endif
}

void require_cuda() {
  const std::string why = cuda_missing();
  if (!why.empty()) throw std::runtime_error(why);
}

#if LINLY_CUDA_ENABLED
// A float16 C-contiguous array of `ndim` dimensions (float16 travels as uint16 bits).
void require_f16(const py::array& a, const char* what, int ndim) {
  if (a.dtype().kind() != 'f' || a.itemsize() != 2)
    throw py::type_error(std::string(what) + " must be float16, got " + std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw py::value_error(std::string(what) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
                          shape_str(a));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(what) + " must be C-contiguous");
}
const uint16_t* bits(const py::array& a) { return static_cast<const uint16_t*>(a.data()); }
py::array_t<uint16_t> like(const py::array& a) {
  std::vector<py::ssize_t> shape(a.shape(), a.shape() + a.ndim());
  return py::array_t<uint16_t>(shape);
}

struct PyCudaLinear {
  std::unique_ptr<cuda::Linear> impl;

  py::array_t<uint16_t> forward(const py::array& x, bool force_gemm) {
    require_f16(x, "x", 2);
    if (x.shape(1) != impl->k())
      throw py::value_error("x must have shape (m, " + std::to_string(impl->k()) + "), got " + shape_str(x));
    const int m = (int)x.shape(0);
    py::array_t<uint16_t> y({(int64_t)m, impl->n()});
    const uint16_t* src = bits(x);
    uint16_t* dst = y.mutable_data();
    {
      py::gil_scoped_release nogil;
      impl->forward_host(src, dst, m, force_gemm);
    }
    return y;
  }
};
#endif

}  // namespace

void bind_gpu(py::module_& m) {
  m.def("gpu_w4_shift", [](int j) {
    if (j < 0 || j > 7) throw py::value_error("j must be 0..7");
    return gpu::w4_shift(j);
  }, py::arg("j"), "Bit position of element j of a w4 word in the GPU layout.");

  m.def("gpu_layout", [](const py::array& data, const std::string& fmt, int64_t k) {
    py::dict d;
    if (is_w8(fmt)) {
      const gpu::W8Weights w = w8_from(data, fmt, k);
      d["kind"] = "w8"; d["group"] = w.group;
      d["qweight"] = to_np(w.qweight, w.n); d["scales"] = to_np(w.scales, w.n);
      return d;
    }
    const gpu::W4Weights w = w4_from(data, fmt, k);
    d["kind"] = (int)w.kind == 0 ? "q4_0" : (int)w.kind == 1 ? "q4_1" : "q4_g";
    d["group"] = w.group;
    d["qweight"] = to_np(w.qweight, w.n); d["scales"] = to_np(w.scales, w.n);
    d["mins"] = to_np(w.mins, w.mins.empty() ? 0 : w.n); d["zeros"] = to_np(w.zeros, w.zeros.empty() ? 0 : w.n);
    return d;
  }, py::arg("data"), py::arg("fmt"), py::arg("k"),
     "On-disk rows of a q4_*/q8_0 matrix -> its GPU layout (csrc/gpu/layout.h) as numpy arrays.");

  m.def("gpu_layout_dequantize", [](const py::array& data, const std::string& fmt, int64_t k) {
    if (is_w8(fmt)) {
      const gpu::W8Weights w = w8_from(data, fmt, k);
      return to_np(gpu::dequantize_ref(w), w.n);
    }
    const gpu::W4Weights w = w4_from(data, fmt, k);
    return to_np(gpu::dequantize_ref(w), w.n);
  }, py::arg("data"), py::arg("fmt"), py::arg("k"),
     "The f32 weights the GPU layout of these rows stands for (the scalar reference of the CUDA kernels).");

  m.def("gpu_int8_per_channel", [](const py::array& w) {
    require_f32(w, "w", 2, 2);
    const gpu::W8Weights q = gpu::quantize_w8_per_channel(static_cast<const float*>(w.data()), w.shape(0), w.shape(1));
    return py::make_tuple(to_np(q.qweight, q.n), to_np(q.scales, q.n), to_np(gpu::dequantize_ref(q), q.n));
  }, py::arg("w"), "f32 [n, k] -> (int8 codes, fp16 scale bits per row, the f32 they stand for).");

  m.def("cuda_built", [] { return (bool)LINLY_CUDA_ENABLED; }, "Whether this build has the CUDA part.");
  m.def("cuda_unavailable_reason", &cuda_missing,
        "Empty when CUDA can be used; otherwise what is missing and what to do.");
  m.def("cuda_device_name", [](int device) {
    require_cuda();
#if LINLY_CUDA_ENABLED
    return cuda::device_name(device);
#else
    return std::string();
#endif
  }, py::arg("device") = 0);

#if LINLY_CUDA_ENABLED
  py::class_<PyCudaLinear>(m, "CudaLinear",
                           "A weight matrix on the GPU (W4A16 / W8A16): y = x @ W.T with float16 x and y.")
      .def(py::init([](const py::array& data, const std::string& fmt, int64_t k) {
             require_cuda();
             PyCudaLinear p;
             if (fmt == "int8") {
               require_f32(data, "w", 2, 2);
               p.impl = cuda::Linear::from_w8(gpu::quantize_w8_per_channel(
                   static_cast<const float*>(data.data()), data.shape(0), data.shape(1)));
             } else if (is_w8(fmt)) {
               p.impl = cuda::Linear::from_w8(w8_from(data, fmt, k));
             } else {
               p.impl = cuda::Linear::from_w4(w4_from(data, fmt, k));
             }
             return p;
           }), py::arg("data"), py::arg("fmt"), py::arg("k") = 0,
           "data: on-disk rows of q4_0/q4_1/q4_g*/q8_0 (uint8 [n, row_bytes]) with k, or f32 [n, k] with fmt='int8' "
           "(per-channel int8).")
      .def("forward", &PyCudaLinear::forward, py::arg("x"), py::arg("force_gemm") = false)
      .def("time_us", [](PyCudaLinear& p, int m, int iters, int copies) {
             py::gil_scoped_release nogil;
             return p.impl->time_us(m, iters, copies);
           }, py::arg("m"), py::arg("iters") = 50, py::arg("copies") = 4)
      .def_property_readonly("n", [](const PyCudaLinear& p) { return p.impl->n(); })
      .def_property_readonly("k", [](const PyCudaLinear& p) { return p.impl->k(); })
      .def_property_readonly("weight_bytes", [](const PyCudaLinear& p) { return p.impl->weight_bytes(); });
  m.def("cuda_memory_info", [] {
    require_cuda();
    int64_t f = 0, t = 0;
    cuda::memory_info(&f, &t);
    return py::make_tuple(f, t);
  }, "(free, total) bytes of GPU memory.");
  m.def("cuda_copy_bandwidth", [](int64_t bytes, int iters) {
    require_cuda();
    py::gil_scoped_release nogil;
    return cuda::copy_bandwidth_gbs(bytes, iters);
  }, py::arg("bytes") = (int64_t)1 << 30, py::arg("iters") = 20);
  m.def("cuda_rmsnorm", [](const py::array& x, const py::array& w, float eps) {
    require_cuda();
    require_f16(x, "x", 2);
    require_f32(w, "w", 1, 1);
    if (w.shape(0) != x.shape(1)) throw py::value_error("w has shape " + shape_str(w) + " but x has " + shape_str(x));
    auto y = like(x);
    cuda::rmsnorm_host(bits(x), static_cast<const float*>(w.data()), y.mutable_data(), x.shape(0), x.shape(1), eps);
    return y;
  }, py::arg("x"), py::arg("w"), py::arg("eps"), "RMSNorm on the GPU: float16 [rows, d], float32 weights [d].");
  m.def("cuda_swiglu", [](const py::array& gate, const py::array& up) {
    require_cuda();
    require_f16(gate, "gate", 2);
    require_f16(up, "up", 2);
    if (gate.shape(0) != up.shape(0) || gate.shape(1) != up.shape(1))
      throw py::value_error("gate " + shape_str(gate) + " and up " + shape_str(up) + " must have one shape");
    auto out = like(gate);
    cuda::swiglu_host(bits(gate), bits(up), out.mutable_data(), gate.size());
    return out;
  }, py::arg("gate"), py::arg("up"), "silu(gate) * up on the GPU, float16.");
  m.def("cuda_rope", [](const py::array& v, const py::array_t<int32_t, py::array::c_style | py::array::forcecast>& pos,
                        const py::array& cos_t, const py::array& sin_t) {
    require_cuda();
    require_f16(v, "v", 3);
    require_f32(cos_t, "cos", 2, 2);
    require_f32(sin_t, "sin", 2, 2);
    const int hd = (int)v.shape(2);
    if (hd % 2 || cos_t.shape(1) != hd / 2 || sin_t.shape(1) != hd / 2 || sin_t.shape(0) != cos_t.shape(0))
      throw py::value_error("cos and sin must both be [positions, head_dim/2] for an even head_dim, got " +
                            shape_str(cos_t) + " and " + shape_str(sin_t) + " for v " + shape_str(v));
    if (pos.ndim() != 1 || pos.shape(0) != v.shape(0))
      throw py::value_error("pos must have one entry per row of v");
    auto out = like(v);
    std::memcpy(out.mutable_data(), v.data(), (size_t)v.nbytes());
    cuda::rope_host(out.mutable_data(), pos.data(), static_cast<const float*>(cos_t.data()),
                    static_cast<const float*>(sin_t.data()), v.shape(0), (int)v.shape(1), hd, cos_t.shape(0));
    return out;
  }, py::arg("v"), py::arg("pos"), py::arg("cos"), py::arg("sin"),
     "Rotary embedding (rotate-half pairs) of float16 [rows, heads, head_dim] at positions pos.");
  m.def("cuda_attention_decode", [](const py::array& q, const py::array& kc, const py::array& vc, float scale) {
    require_cuda();
    require_f16(q, "q", 2);
    require_f16(kc, "k_cache", 3);
    require_f16(vc, "v_cache", 3);
    const int heads = (int)q.shape(0), hd = (int)q.shape(1), len = (int)kc.shape(0), kvh = (int)kc.shape(1);
    if (kc.shape(2) != hd || vc.shape(0) != kc.shape(0) || vc.shape(1) != kvh || vc.shape(2) != hd)
      throw py::value_error("caches must be [len, kv_heads, head_dim] matching q: q " + shape_str(q) + ", k " +
                            shape_str(kc) + ", v " + shape_str(vc));
    if (len < 1 || len > cuda::attention_decode_max_len())
      throw py::value_error("the cache length must be 1.." + std::to_string(cuda::attention_decode_max_len()));
    if (kvh < 1 || heads % kvh) throw py::value_error("the query heads must be a multiple of the cache's kv heads");
    auto out = like(q);
    cuda::attention_decode_host(bits(q), bits(kc), bits(vc), out.mutable_data(), len, heads, kvh, hd, scale);
    return out;
  }, py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("scale"),
     "One position's attention over float16 caches [len, kv_heads, head_dim] (grouped-query heads).");
#else
  m.def("CudaLinear", [](py::args, py::kwargs) -> py::object { throw std::runtime_error(kNoCudaBuild); });
  for (const char* name : {"cuda_copy_bandwidth", "cuda_memory_info", "cuda_rmsnorm", "cuda_swiglu", "cuda_rope", "cuda_attention_decode"})
    m.def(name, [](py::args, py::kwargs) -> py::object { throw std::runtime_error(kNoCudaBuild); });
#endif
}

}  // namespace linly::py_bind
