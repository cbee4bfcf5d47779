// The Python-facing PackedMatrix: the core matrix, which holds its own copy of the
// weights, and the size of the bytes it was made from. Shared by the bindings that take one.
#pragma once
#include <memory>

#include "bindings/common.h"
#include "core/packed_matrix.h"

namespace linly::py_bind {

struct PyPackedMatrix {
  int64_t source_bytes = 0;  // of the array it was made from (the on-disk size)
  std::unique_ptr<PackedMatrix> mat;

  PyPackedMatrix(py::array d, const std::string& fmt_name, int64_t k, const py::object& isa);
  // From bytes already in the 16-row panel layout (a packed .linly file): copied as they
  // are when the selected ISA reads panels.
  static std::unique_ptr<PyPackedMatrix> from_panels(py::array panels, const std::string& fmt_name, int64_t n,
                                                     int64_t k, const py::object& isa);
  py::array matmul(const py::array& x, bool precise, const py::object& activations) const;

 private:
  PyPackedMatrix() = default;
};

}  // namespace linly::py_bind
