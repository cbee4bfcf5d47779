// Argument checking shared by the binding files: every message says what was wrong,
// what was expected and, where there is one, the fix.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "kernels/kernel_table.h"
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

void bind_runtime(py::module_& m);
void bind_quant(py::module_& m);
void bind_packed_matrix(py::module_& m);
void bind_model(py::module_& m);
void bind_gpu(py::module_& m);

}  // namespace linly::py_bind
