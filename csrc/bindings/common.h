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

void bind_runtime(py::module_& m);
void bind_quant(py::module_& m);
void bind_packed_matrix(py::module_& m);
void bind_model(py::module_& m);
void bind_gpu(py::module_& m);
void bind_cuda_model(py::module_& m);

}  // namespace linly::py_bind
