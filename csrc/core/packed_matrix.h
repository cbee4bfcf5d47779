// A weight matrix W [n, k] in one of the formats, ready to multiply: y = x · Wᵀ.
// "Make the packed weights" is quant/quantize.h; this is "run them".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernel_table.h"
#include "runtime/aligned_buffer.h"

namespace linly {

// How an integer-format matmul treats its activations (dense formats take x in f32, except
// f16 weights at one row, which take it rounded to f16: takes_f16_input, quant/quantize.h):
// Int8 / Int8x2 quantise them to blocks (formats.h: block_q8_act, without or with the
// residual) for the integer kernels; F32 multiplies them unquantised against weights
// dequantised tile by tile (KernelTable::matmul_f32), the path for prompts.
// Int8x2Prompt is Int8x2 through kernels made for many rows (MatmulArgs::prompt): the
// same product, different in the last bits, so the decoder gives a sequence's rows one or
// the other by what they are (prompt segment or decode step), never by batch size.
// How a matmul sees x: int8 blocks (Int8), plus their residual (Int8x2, and Int8x2Prompt
// through the many-row kernels), as f32 (F32: the prompt kernels of matmul_f32), or as
// F32 where the ISA may round x to bf16 first (Bf16Prompt: the AMX tiles then take one
// bf16 product per weight part, not two; other ISAs compute it as F32).
enum class Activations { Int8, Int8x2, Int8x2Prompt, F32, Bf16Prompt };

class PackedMatrix {
 public:
  enum class Layout { Rows, Panels };
  // `bytes` holds the matrix in `layout`: n rows of row_bytes(fmt, k) (the on-disk row
  // layout), or panel_count(n) panels (panel.h). They are read here only: the matrix
  // keeps its own copy in the weight arena (runtime/weight_arena.h), in the layout the
  // kernels read, so the caller may free or unmap them afterwards.
  PackedMatrix(Format fmt, int64_t n, int64_t k, const uint8_t* bytes, const KernelTable& kernels,
               Layout layout = Layout::Rows);

  // x: [m, k] f32 row-major; y: [m, n] f32 row-major. Threads from the global pool.
  void matmul(const float* x, int64_t m, float* y, Activations act = Activations::Int8) const;
  // Act-order checkpoints (GPTQ desc_act): stored column j multiplies input order[j],
  // so that each group of columns is contiguous. Returns an error message (empty: set)
  // unless `order` is a permutation of [0, k).
  std::string set_input_order(std::vector<int32_t> order);
  const std::vector<int32_t>& input_order() const { return input_order_; }
  // Row r of W as f32 [k] (an embedding lookup). r < n is the caller's promise.
  void dequantize_row(int64_t r, float* out) const;

  Format format() const { return fmt_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  const KernelTable& kernels() const { return *kernels_; }
  bool uses_panels() const { return panels_ != nullptr; }
  // Bytes a matmul streams from memory.
  int64_t weight_bytes() const;
  // What the kernels iterate over: panels when the matrix has them, rows otherwise.
  int64_t units() const;
  // Whether matmul_f32 here reads the table's prompt input (KernelTable::
  // prepare_prompt_input), and in how many kernel units at a time its work may be cut
  // (16 rows for row-major f16 that does: the kernel takes whole panels).
  bool reads_prompt_input() const;
  int64_t f32_unit_rows() const;
  // A kernel call's arguments for this matrix (x: dense and f32 kernels, xq: integer).
  MatmulArgs args(const float* x, const block_q8_act* xq, int64_t m, float* y, Activations act) const;

 private:
  void dequantize_stored_row(int64_t r, float* out) const;  // columns in stored order

  Format fmt_;
  int64_t n_, k_;
  const KernelTable* kernels_;
  const uint8_t* plain_ = nullptr;   // rows, when the kernels read rows (in owned_)
  const uint8_t* panels_ = nullptr;  // panels, when the kernels read them (in owned_)
  AlignedBuffer owned_;              // the weights: a block of the weight arena
  std::vector<int32_t> input_order_; // [k] or empty (inputs in order)
};

// y_i = x · W_iᵀ for several matrices that read the same input x [m, k] (Q, K and V; gate
// and up), as one pool job: one activation quantisation and one barrier instead of one
// each, and each thread's share is one contiguous run across the matrices, split by
// weight bytes, so the streams stay long and the threads' loads even. ys[i]: [m, n_i].
// Matrices with an input order, with other kernels or a different k, or more than
// kMaxSharedInput of them, run one by one.
constexpr int kMaxSharedInput = 4;
void matmul_shared_input(const PackedMatrix* const* ws, float* const* ys, int count, const float* x, int64_t m,
                         Activations act);

// Quantises x [m, k] into activation blocks [m, k/32], split over the pool by rows.
void quantize_activations(const KernelTable& kt, const float* x, int64_t m, int64_t k, block_q8_act* out);

}  // namespace linly
