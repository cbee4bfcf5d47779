// Weight formats: block structs as they lie on disk (GGUF-compatible where GGUF has
// the type) and the traits the rest of the engine asks about. docs/formats.md is the spec.
#pragma once
#include <cstddef>
#include <cstdint>

namespace linly {

constexpr int QK = 32;  // elements per quantisation block (and per activation block)

enum class Format : int {
  F32 = 0, F16, BF16,
  Q4_0, Q4_1, Q8_0,
  Q4_G32, Q4_G64, Q4_G128,
  kCount
};

// d·(q − 8), q ∈ [0,15]. qs[j] low nibble = element j, high nibble = element j+16.
struct block_q4_0 { uint16_t d; uint8_t qs[QK / 2]; };
static_assert(sizeof(block_q4_0) == 18, "q4_0 block must match GGUF (18 bytes)");

// d·q + m. Same nibble order as q4_0.
struct block_q4_1 { uint16_t d; uint16_t m; uint8_t qs[QK / 2]; };
static_assert(sizeof(block_q4_1) == 20, "q4_1 block must match GGUF (20 bytes)");

// d·q, q ∈ [−127,127].
struct block_q8_0 { uint16_t d; int8_t qs[QK]; };
static_assert(sizeof(block_q8_0) == 34, "q8_0 block must match GGUF (34 bytes)");

// Group-wise asymmetric 4-bit, the shape GPTQ/AWQ checkpoints map onto:
// d·(q − z), integer zero point z ∈ [0,15] (kept as an integer so imports are bit-exact).
// The G elements are stored as G/32 consecutive q4_0-style nibble runs of 16 bytes.
template <int G>
struct block_q4_g { uint16_t d; uint8_t z; uint8_t reserved; uint8_t qs[G / 2]; };
static_assert(sizeof(block_q4_g<32>) == 20, "q4_g32 block is 20 bytes");
static_assert(sizeof(block_q4_g<64>) == 36, "q4_g64 block is 36 bytes");
static_assert(sizeof(block_q4_g<128>) == 68, "q4_g128 block is 68 bytes");

// Activations, quantised on the fly before an integer matmul (never stored on disk):
// x ≈ d·qs + d2·r with qs = rint(x/d), d = max|x|/127, and the residual r =
// rint((x − d·qs)/d2), d2 = d/254. "fast" matmuls use d·qs alone (int8, like llama.cpp);
// "precise" ones add the residual term, which shrinks the activation error 254× for
// twice the integer work. Scales are f32 so they cost no precision; s = Σqs and s2 = Σr
// let the kernels apply q4 offsets and zero points with one multiply per block.
struct block_q8_act { float d, d2; int32_t s, s2; int8_t qs[QK]; int8_t r[QK]; };
static_assert(sizeof(block_q8_act) == 80, "activation block is 80 bytes");

struct FormatInfo {
  const char* name;
  int block_elems;  // K must be a multiple of this
  int block_bytes;
  bool integer_path;  // activations are quantised to block_q8_act
};

const FormatInfo& format_info(Format f);
// Returns false if `name` is not a known format.
bool parse_format(const char* name, Format* out);

static inline int64_t row_bytes(Format f, int64_t k) {
  const FormatInfo& fi = format_info(f);
  return k / fi.block_elems * fi.block_bytes;
}

// constexpr so the ISA kernels can use it as a template constant; static (internal
// linkage) so no copy compiled with AVX flags can be shared with other units.
static constexpr int q4_group_size(Format f) {
  return f == Format::Q4_G32 ? 32 : f == Format::Q4_G64 ? 64 : f == Format::Q4_G128 ? 128 : 0;
}

}  // namespace linly
