// The GPU layouts (always: they are plain C++, tested on any CPU) and, in a CUDA build,
// weight matrices on the GPU. Without a CUDA build or a device the CUDA entry points
// raise RuntimeError saying which of the two is missing.
#include <cstring>
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

gpu::W4Weights w4_from(const py::array& data, const std::string& fmt, int64_t k) {
  const Format f = parse_format_or_throw(fmt);
  require_packed_rows(data, f, k);
  const int64_t n = data.shape(0);
  return gpu::repack_w4(static_cast<const uint8_t*>(data.data()), n * data.shape(1), fmt.c_str(), n, k);
}

gpu::W8Weights w8_from(const py::array& data, const std::string& fmt, int64_t k) {
  const Format f = parse_format_or_throw(fmt);
  require_packed_rows(data, f, k);
  const int64_t n = data.shape(0);
  return gpu::repack_w8(static_cast<const uint8_t*>(data.data()), n * data.shape(1), fmt.c_str(), n, k);
}

py::array_t<float> f32_matrix(const std::vector<float>& v, int64_t n, int64_t k) {
  py::array_t<float> a({n, k});
  std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(float));
  return a;
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
struct PyCudaLinear {
  std::unique_ptr<cuda::Linear> impl;

  py::array_t<uint16_t> forward(const py::array& x, bool force_gemm) {
    if (x.dtype().kind() != 'f' || x.itemsize() != 2)
      throw py::type_error("x must be float16, got " + std::string(py::str(x.dtype())));
    if (x.ndim() != 2 || x.shape(1) != impl->k())
      throw py::value_error("x must have shape (m, " + std::to_string(impl->k()) + "), got " + shape_str(x));
    if (!(x.flags() & py::array::c_style)) throw py::value_error("x must be C-contiguous (np.ascontiguousarray)");
    const int m = (int)x.shape(0);
    py::array_t<uint16_t> y({(int64_t)m, impl->n()});
    const uint16_t* src = static_cast<const uint16_t*>(x.data());
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
      return f32_matrix(gpu::dequantize_ref(w), w.n, w.k);
    }
    const gpu::W4Weights w = w4_from(data, fmt, k);
    return f32_matrix(gpu::dequantize_ref(w), w.n, w.k);
  }, py::arg("data"), py::arg("fmt"), py::arg("k"),
     "The f32 weights the GPU layout of these rows stands for (the scalar reference of the CUDA kernels).");

  m.def("gpu_int8_per_channel", [](const py::array& w) {
    require_f32(w, "w", 2, 2);
    const gpu::W8Weights q = gpu::quantize_w8_per_channel(static_cast<const float*>(w.data()), w.shape(0), w.shape(1));
    return py::make_tuple(to_np(q.qweight, q.n), to_np(q.scales, q.n), f32_matrix(gpu::dequantize_ref(q), q.n, q.k));
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
  m.def("cuda_copy_bandwidth", [](int64_t bytes, int iters) {
    require_cuda();
    py::gil_scoped_release nogil;
    return cuda::copy_bandwidth_gbs(bytes, iters);
  }, py::arg("bytes") = (int64_t)1 << 30, py::arg("iters") = 20);
#else
  m.def("CudaLinear", [](py::args, py::kwargs) -> py::object { throw std::runtime_error(kNoCudaBuild); });
  m.def("cuda_copy_bandwidth", [](py::args, py::kwargs) -> double { throw std::runtime_error(kNoCudaBuild); });
#endif
}

}  // namespace linly::py_bind
