#include "bindings/common.h"

#include <stdexcept>

#include "runtime/dispatch.h"

namespace linly::py_bind {

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

Format parse_format_or_throw(const std::string& name) {
  Format f;
  if (parse_format(name.c_str(), &f)) return f;
  std::string all;
  for (int i = 0; i < (int)Format::kCount; ++i) all += std::string(i ? ", " : "") + format_info((Format)i).name;
  throw py::value_error("unknown weight format '" + name + "'; choose one of: " + all);
}

void require_f32(const py::array& a, const char* what, int min_ndim, int max_ndim) {
  if (a.dtype().kind() != 'f' || a.itemsize() != 4)
    throw py::type_error(std::string(what) + " must be float32, got " + std::string(py::str(a.dtype())) +
                         " (convert with .astype(numpy.float32))");
  if (a.ndim() < min_ndim || a.ndim() > max_ndim)
    throw py::value_error(std::string(what) + " must have " +
                          (min_ndim == max_ndim ? std::to_string(min_ndim) : std::to_string(min_ndim) + " or " + std::to_string(max_ndim)) +
                          " dimensions, got shape " + shape_str(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(what) + " must be C-contiguous (pass numpy.ascontiguousarray(" + what + "))");
}

void require_k(Format fmt, int64_t k) {
  const FormatInfo& fi = format_info(fmt);
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  if (k % fi.block_elems != 0)
    throw py::value_error("k=" + std::to_string(k) + " is not a multiple of " + fi.name + "'s block size " +
                          std::to_string(fi.block_elems) + "; pad K to a multiple of " +
                          std::to_string(fi.block_elems) + " or use f16/f32");
}

void require_packed_rows(const py::array& data, Format fmt, int64_t k) {
  require_k(fmt, k);
  if (data.dtype().kind() != 'u' || data.itemsize() != 1)
    throw py::type_error("packed data must be uint8, got " + std::string(py::str(data.dtype())));
  if (data.ndim() != 2)
    throw py::value_error("packed data must be 2-D [n, bytes_per_row], got shape " + shape_str(data));
  if (!(data.flags() & py::array::c_style))
    throw py::value_error("packed data must be C-contiguous (pass numpy.ascontiguousarray(data))");
  const int64_t rb = row_bytes(fmt, k);
  if (data.shape(1) != rb)
    throw py::value_error("packed data has " + std::to_string(data.shape(1)) + " bytes per row but " +
                          format_info(fmt).name + " with k=" + std::to_string(k) + " needs " + std::to_string(rb));
  if (data.shape(0) < 1) throw py::value_error("packed data has no rows");
}

const KernelTable& kernels_or_default(const py::object& isa) {
  if (isa.is_none()) return default_kernels();
  try {
    return kernels_for(isa.cast<std::string>());
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

}  // namespace linly::py_bind
