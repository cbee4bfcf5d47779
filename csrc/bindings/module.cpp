// linly_engine._C: the native core. One file per bound concept; see common.h.
#include "bindings/common.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "linly-engine native core: quantised CPU kernels, thread pool, dispatch";
  linly::py_bind::bind_runtime(m);
  linly::py_bind::bind_quant(m);
  linly::py_bind::bind_packed_matrix(m);
  linly::py_bind::bind_model(m);
  linly::py_bind::bind_gpu(m);
  linly::py_bind::bind_cuda_model(m);
}
