#include <cstdlib>
#include <stdexcept>

#include "bindings/common.h"
#include "core/bandwidth.h"
#include "runtime/cpu_features.h"
#include "runtime/dispatch.h"
#include "runtime/thread_pool.h"
#include "runtime/weight_arena.h"

namespace linly::py_bind {

void bind_runtime(py::module_& m) {
  // Resolve LINLY_ISA at import so a bad value fails loudly and at once.
  try {
    default_kernels();
  } catch (const std::invalid_argument& e) {
    throw py::import_error(e.what());
  }

  m.def("cpu_info", [] {
    const CpuFeatures& f = cpu_features();
    py::dict detected;
    detected["avx2"] = f.avx2; detected["fma"] = f.fma; detected["f16c"] = f.f16c;
    detected["avx512f"] = f.avx512f; detected["avx512bw"] = f.avx512bw; detected["avx512vl"] = f.avx512vl;
    detected["avx512_vnni"] = f.avx512vnni; detected["avx512_bf16"] = f.avx512bf16;
    detected["amx_tile"] = f.amx_tile; detected["amx_int8"] = f.amx_int8; detected["amx_bf16"] = f.amx_bf16;
    detected["os_saves_ymm"] = f.os_avx; detected["os_saves_zmm"] = f.os_avx512;
    detected["os_grants_amx"] = f.os_amx;
    py::dict info;
    info["detected"] = detected;
    info["available"] = available_isas();
    info["selected"] = std::string(default_kernels().name);
    const char* env = std::getenv("LINLY_ISA");
    info["forced_by"] = env && *env ? py::object(py::str(std::string("LINLY_ISA=") + env)) : py::object(py::none());
    info["threads"] = global_threads();
    return info;
  }, "What the CPU supports, which kernel ISAs can run, which one is selected and the thread count.");

  m.def("available_isas", &available_isas, "ISAs this build and CPU can run, best last.");

  m.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("thread count must be >= 1, got " + std::to_string(n));
    set_global_threads(n);
  }, py::arg("n"), "Sets the size of the kernel thread pool (the calling thread counts as one).");
  m.def("get_num_threads", &global_threads);
  m.def("weight_arena_bytes", &weight_arena_reserved_bytes,
        "Bytes of memory the packed-weight arena holds now (slabs on huge pages, used or not).");

  m.def("measure_read_bandwidth", [](int64_t bytes, int repeats, const py::object& isa) {
    if (bytes < (1 << 20)) throw py::value_error("bytes must be at least 1 MiB");
    if (repeats < 1) throw py::value_error("repeats must be >= 1");
    const KernelTable& kt = kernels_or_default(isa);
    py::gil_scoped_release nogil;
    return measure_read_bandwidth(kt, bytes, repeats);
  }, py::arg("bytes") = (int64_t)1 << 30, py::arg("repeats") = 5, py::arg("isa") = py::none(),
     "Best read bandwidth in GB/s over `repeats` passes on a buffer of `bytes`, using the thread pool.");
}

}  // namespace linly::py_bind
