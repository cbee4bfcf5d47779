// Memory read bandwidth of this machine, measured with the same thread pool the kernels
// use: the ceiling that a memory-bound GEMV is judged against.
#pragma once
#include <cstdint>

#include "kernels/kernel_table.h"

namespace linly {

// Reads a buffer of `bytes` (rounded up to 256 KiB chunks per thread) `repeats` times;
// returns the best rate in GB/s (1e9 bytes per second).
double measure_read_bandwidth(const KernelTable& kt, int64_t bytes, int repeats);

}  // namespace linly
