// Scalar reference kernels: the twins every SIMD kernel is tested against, and the
// portable path on CPUs without AVX2. They read the on-disk row layout directly.
#pragma once
#include <cstdint>

#include "kernels/kernel_table.h"

namespace linly {

// Rows [n0, n1) of y = x · Wᵀ. Integer formats take args.xq (quantize_row_act_ref);
// per-block terms are exact integers times f32 scales, summed in double.
void matmul_ref(const MatmulArgs& args, int64_t n0, int64_t n1);

}  // namespace linly
