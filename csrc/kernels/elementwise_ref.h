// Element-wise steps of the decoder between matmuls: the scalar references (the portable
// path and the twins the SIMD versions are tested against).
#pragma once
#include <cstdint>

namespace linly {

// gate[i] <- silu(gate[i]) · up[i] = gate[i] / (1 + e^(−gate[i])) · up[i], for i < n (SwiGLU).
void swiglu_ref(float* gate, const float* up, int64_t n);

}  // namespace linly
