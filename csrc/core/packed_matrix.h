// A weight matrix W [n, k] in one of the formats, ready to multiply: y = x · Wᵀ.
// "Make the packed weights" is quant/quantize.h; this is "run them".
#pragma once
#include <cstdint>

#include "kernels/kernel_table.h"
#include "runtime/aligned_buffer.h"

namespace linly {

class PackedMatrix {
 public:
  // `plain` holds n rows of row_bytes(fmt, k) in the on-disk layout; it is borrowed and
  // must outlive this object. If the kernels want panels, a repacked copy is made here
  // (the only copy: the scalar path and dense formats read `plain` in place).
  PackedMatrix(Format fmt, int64_t n, int64_t k, const uint8_t* plain, const KernelTable& kernels);

  // x: [m, k] f32 row-major; y: [m, n] f32 row-major. Threads from the global pool.
  // precise: integer formats also use the activation residual (formats.h); ignored by
  // the dense formats, which multiply in f32 anyway.
  void matmul(const float* x, int64_t m, float* y, bool precise = false) const;
  // Row r of W as f32 [k] (an embedding lookup). r < n is the caller's promise.
  void dequantize_row(int64_t r, float* out) const;

  Format format() const { return fmt_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  const KernelTable& kernels() const { return *kernels_; }
  bool repacked() const { return panels_.size() > 0; }
  // Bytes a matmul streams from memory (the repacked copy when there is one).
  int64_t weight_bytes() const;

 private:
  Format fmt_;
  int64_t n_, k_;
  const uint8_t* plain_;
  const KernelTable* kernels_;
  AlignedBuffer panels_;
};

// Quantises x [m, k] into activation blocks [m, k/32], split over the pool by rows.
void quantize_activations(const KernelTable& kt, const float* x, int64_t m, int64_t k, block_q8_act* out);

}  // namespace linly
