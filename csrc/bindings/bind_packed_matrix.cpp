#include "bindings/py_packed_matrix.h"
#include "quant/panel.h"

namespace linly::py_bind {

PyPackedMatrix::PyPackedMatrix(py::array data, const std::string& fmt_name, int64_t k, const py::object& isa)
    : source_bytes(data.nbytes()) {
  const Format fmt = parse_format_or_throw(fmt_name);
  require_packed_rows(data, fmt, k);
  const KernelTable& kt = kernels_or_default(isa);
  const auto* plain = static_cast<const uint8_t*>(data.data());
  const int64_t n = data.shape(0);
  py::gil_scoped_release nogil;
  mat = std::make_unique<PackedMatrix>(fmt, n, k, plain, kt);
}

std::unique_ptr<PyPackedMatrix> PyPackedMatrix::from_panels(py::array panels, const std::string& fmt_name, int64_t n,
                                                            int64_t k, const py::object& isa) {
  const Format fmt = parse_format_or_throw(fmt_name);
  require_k(fmt, k);
  if (!format_has_panels(fmt))
    throw py::value_error(std::string(format_info(fmt).name) + " has no panel layout; store it as rows");
  if (n < 1) throw py::value_error("n must be >= 1, got " + std::to_string(n));
  const int64_t need = panel_count(n) * panel_layout(fmt, n, k).panel_bytes;
  if (panels.dtype().kind() != 'u' || panels.itemsize() != 1 || panels.ndim() != 1 ||
      !(panels.flags() & py::array::c_style))
    throw py::value_error("panels must be a contiguous 1-D uint8 array");
  if (panels.shape(0) != need)
    throw py::value_error("panels hold " + std::to_string(panels.shape(0)) + " bytes but " + format_info(fmt).name +
                          " [" + std::to_string(n) + ", " + std::to_string(k) + "] needs " + std::to_string(need));
  const KernelTable& kt = kernels_or_default(isa);
  std::unique_ptr<PyPackedMatrix> p(new PyPackedMatrix());
  p->source_bytes = panels.nbytes();
  const auto* bytes = static_cast<const uint8_t*>(panels.data());
  py::gil_scoped_release nogil;
  p->mat = std::make_unique<PackedMatrix>(fmt, n, k, bytes, kt, PackedMatrix::Layout::Panels);
  return p;
}

namespace {
Activations parse_activations(const py::object& activations, bool precise) {
  if (activations.is_none()) return precise ? Activations::Int8x2 : Activations::Int8;
  const std::string name = py::str(activations);
  if (name == "int8") return Activations::Int8;
  if (name == "int8x2") return Activations::Int8x2;
  if (name == "int8x2-prompt") return Activations::Int8x2Prompt;
  if (name == "f32") return Activations::F32;
  if (name == "bf16-prompt") return Activations::Bf16Prompt;
  throw py::value_error("unknown activations '" + name +
                        "': choose 'int8', 'int8x2', 'int8x2-prompt', 'f32' or 'bf16-prompt'");
}

py::list matmul_shared_input_np(const std::vector<const PyPackedMatrix*>& mats, const py::array& x,
                                const py::object& activations) {
  const Activations act = parse_activations(activations, false);
  if (mats.empty() || mats.size() > (size_t)kMaxSharedInput)
    throw py::value_error("give 1 to " + std::to_string(kMaxSharedInput) + " matrices, got " + std::to_string(mats.size()));
  require_f32(x, "x", 2, 2);
  const int64_t m = x.shape(0), k = x.shape(1);
  std::vector<const PackedMatrix*> ws;
  std::vector<py::array_t<float>> outs;
  std::vector<float*> ys;
  for (const PyPackedMatrix* p : mats) {
    if (p->mat->k() != k)
      throw py::value_error("x has shape " + shape_str(x) + " but a matrix is [n=" + std::to_string(p->mat->n()) +
                            ", k=" + std::to_string(p->mat->k()) + "]: all matrices need k = x.shape[1]");
    ws.push_back(p->mat.get());
    outs.emplace_back(std::vector<py::ssize_t>{(py::ssize_t)m, (py::ssize_t)p->mat->n()});
    ys.push_back(outs.back().mutable_data());
  }
  if (m > 0) {
    py::gil_scoped_release nogil;
    matmul_shared_input(ws.data(), ys.data(), (int)ws.size(), static_cast<const float*>(x.data()), m, act);
  }
  py::list result;
  for (auto& o : outs) result.append(std::move(o));
  return result;
}
}  // namespace

py::array PyPackedMatrix::matmul(const py::array& x, bool precise, const py::object& activations) const {
  const Activations act = parse_activations(activations, precise);
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
    mat->matmul(xp, m, yp, act);
  }
  return std::move(y);
}

void bind_packed_matrix(py::module_& m) {
  m.def("matmul_shared_input", &matmul_shared_input_np, py::arg("mats"), py::arg("x"),
        py::arg("activations") = py::none(),
        "[x · W_iᵀ for W_i in mats] as one pool job (the decoder's Q/K/V and gate/up): mats share k; "
        "x: float32 [m, k]; activations as PackedMatrix.matmul (default 'int8'). Releases the GIL.");
  py::class_<PyPackedMatrix>(m, "PackedMatrix",
                             "A weight matrix W [n, k] in a quantised or dense format; matmul(x) = x · Wᵀ.")
      .def(py::init<py::array, const std::string&, int64_t, const py::object&>(), py::arg("data"), py::arg("fmt"),
           py::arg("k"), py::arg("isa") = py::none(),
           "data: uint8 [n, bytes_per_row] in the on-disk layout, copied (repacked into 16-row panels when the "
           "ISA's kernels want them) into the weight arena: data may be freed afterwards. isa: 'scalar' | 'avx2' | "
           "'avx512' | None (default).")
      .def("matmul", &PyPackedMatrix::matmul, py::arg("x"), py::arg("precise") = false,
           py::arg("activations") = py::none(),
           "x: float32 [m, k] or [k] -> float32 [m, n] or [n]. Releases the GIL. precise: integer formats "
           "also multiply the activations' int8 residual (~254x smaller activation error, ~2x integer work). "
           "activations: 'int8' | 'int8x2' | 'int8x2-prompt' | 'f32' (overrides precise; 'int8x2-prompt' is "
           "int8x2 through the kernels the decoder gives prompt rows, equal to int8x2 up to rounding; 'f32' "
           "multiplies x unquantised against the weights dequantised tile by tile, the AVX2 prompt path; "
           "'bf16-prompt' is 'f32' where the AMX prompt tiles may round x to bf16, the fast mode's prompts).")
      .def_property_readonly("n", [](const PyPackedMatrix& p) { return p.mat->n(); })
      .def_property_readonly("k", [](const PyPackedMatrix& p) { return p.mat->k(); })
      .def_property_readonly("fmt", [](const PyPackedMatrix& p) { return std::string(format_info(p.mat->format()).name); })
      .def_property_readonly("isa", [](const PyPackedMatrix& p) { return std::string(p.mat->kernels().name); })
      .def_static("from_panels", &PyPackedMatrix::from_panels, py::arg("panels"), py::arg("fmt"), py::arg("n"),
                  py::arg("k"), py::arg("isa") = py::none(),
                  "From uint8 bytes already in the 16-row panel layout (copied as they are into the weight arena when the "
                  "ISA reads panels; unpacked to rows when it does not).")
      .def_property_readonly("layout", [](const PyPackedMatrix& p) {
        return std::string(p.mat->uses_panels() ? "panel16" : "rows");
      }, "The layout the kernels read.")
      .def_property_readonly("weight_bytes", [](const PyPackedMatrix& p) { return p.mat->weight_bytes(); },
                             "Bytes one matmul streams from memory.")
      .def_property_readonly("source_bytes", [](const PyPackedMatrix& p) { return p.source_bytes; },
                             "Size of the array it was made from (the matrix's bytes on disk).")
      .def("set_input_order", [](PyPackedMatrix& p, const py::array& order) {
        if (order.ndim() != 1 || !py::isinstance<py::array_t<int32_t>>(order))
          throw py::type_error("input order must be a 1-D int32 array");
        const auto* d = static_cast<const int32_t*>(order.data());
        const std::string err = p.mat->set_input_order(std::vector<int32_t>(d, d + order.shape(0)));
        if (!err.empty()) throw py::value_error(err);
      }, py::arg("order"),
           "Act-order (GPTQ desc_act) matrices: stored column j multiplies input order[j].")
      .def_property_readonly("input_order", [](const PyPackedMatrix& p) -> py::object {
        const auto& o = p.mat->input_order();
        if (o.empty()) return py::none();
        return py::array_t<int32_t>((py::ssize_t)o.size(), o.data());
      })
      .def("__repr__", [](const PyPackedMatrix& p) {
        return "PackedMatrix(fmt=" + std::string(format_info(p.mat->format()).name) + ", n=" +
               std::to_string(p.mat->n()) + ", k=" + std::to_string(p.mat->k()) + ", isa=" + p.mat->kernels().name + ")";
      });
}

}  // namespace linly::py_bind
