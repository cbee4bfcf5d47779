#include "bindings/py_packed_matrix.h"

namespace linly::py_bind {

PyPackedMatrix::PyPackedMatrix(py::array d, const std::string& fmt_name, int64_t k, const py::object& isa)
    : data(std::move(d)) {
  const Format fmt = parse_format_or_throw(fmt_name);
  require_packed_rows(data, fmt, k);
  const KernelTable& kt = kernels_or_default(isa);
  const auto* plain = static_cast<const uint8_t*>(data.data());
  const int64_t n = data.shape(0);
  py::gil_scoped_release nogil;
  mat = std::make_unique<PackedMatrix>(fmt, n, k, plain, kt);
}

py::array PyPackedMatrix::matmul(const py::array& x, bool precise) const {
  require_f32(x, "x", 1, 2);
  const int64_t k = mat->k(), n = mat->n();
  const int64_t xk = x.shape(x.ndim() - 1);
  if (xk != k)
    throw py::value_error("x has shape " + shape_str(x) + " but this matrix is [n=" + std::to_string(n) +
                          ", k=" + std::to_string(k) + "]: x needs shape (m, " + std::to_string(k) + ")");
  const int64_t m = x.ndim() == 2 ? x.shape(0) : 1;
  py::array_t<float> y = x.ndim() == 2 ? py::array_t<float>({m, n}) : py::array_t<float>(n);
  if (m == 0) return std::move(y);
  const float* xp = static_cast<const float*>(x.data());
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    mat->matmul(xp, m, yp, precise);
  }
  return std::move(y);
}

void bind_packed_matrix(py::module_& m) {
  py::class_<PyPackedMatrix>(m, "PackedMatrix",
                             "A weight matrix W [n, k] in a quantised or dense format; matmul(x) = x · Wᵀ.")
      .def(py::init<py::array, const std::string&, int64_t, const py::object&>(), py::arg("data"), py::arg("fmt"),
           py::arg("k"), py::arg("isa") = py::none(),
           "data: uint8 [n, bytes_per_row] in the on-disk layout (borrowed, not copied; repacked into 16-row "
           "panels when the ISA's kernels want them). isa: 'scalar' | 'avx2' | 'avx512' | None (default).")
      .def("matmul", &PyPackedMatrix::matmul, py::arg("x"), py::arg("precise") = false,
           "x: float32 [m, k] or [k] -> float32 [m, n] or [n]. Releases the GIL. precise: integer formats "
           "also multiply the activations' int8 residual (~254x smaller activation error, ~2x integer work).")
      .def_property_readonly("n", [](const PyPackedMatrix& p) { return p.mat->n(); })
      .def_property_readonly("k", [](const PyPackedMatrix& p) { return p.mat->k(); })
      .def_property_readonly("fmt", [](const PyPackedMatrix& p) { return std::string(format_info(p.mat->format()).name); })
      .def_property_readonly("isa", [](const PyPackedMatrix& p) { return std::string(p.mat->kernels().name); })
      .def_property_readonly("repacked", [](const PyPackedMatrix& p) { return p.mat->repacked(); })
      .def_property_readonly("weight_bytes", [](const PyPackedMatrix& p) { return p.mat->weight_bytes(); },
                             "Bytes one matmul streams from memory.")
      .def_property_readonly("data", [](const PyPackedMatrix& p) { return p.data; }, "The on-disk bytes.")
      .def("__repr__", [](const PyPackedMatrix& p) {
        return "PackedMatrix(fmt=" + std::string(format_info(p.mat->format()).name) + ", n=" +
               std::to_string(p.mat->n()) + ", k=" + std::to_string(p.mat->k()) + ", isa=" + p.mat->kernels().name + ")";
      });
}

}  // namespace linly::py_bind
