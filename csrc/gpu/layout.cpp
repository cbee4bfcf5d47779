// On-disk blocks → the GPU layouts of layout.h. Runs once per matrix at load, on the host.
#include "gpu/layout.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "quant/formats.h"
#include "quant/fp16.h"

namespace linly {
namespace gpu {

namespace {

Format parse(const char* fmt) {
  Format f;
  if (!parse_format(fmt, &f)) throw std::invalid_argument(std::string("unknown weight format '") + fmt + "'");
  return f;
}

void check_sizes(Format f, int64_t n_rows_bytes, int64_t n, int64_t k) {
  const FormatInfo& fi = format_info(f);
  if (n <= 0 || k <= 0) throw std::invalid_argument("the matrix must have n > 0 rows and k > 0 columns");
  if (k % fi.block_elems != 0)
    throw std::invalid_argument("k=" + std::to_string(k) + " is not a multiple of " + fi.name + "'s block of " +
                                std::to_string(fi.block_elems));
  if (n_rows_bytes != n * row_bytes(f, k))
    throw std::invalid_argument(std::string(fi.name) + " rows of " + std::to_string(n) + "x" + std::to_string(k) +
                                " need " + std::to_string(n * row_bytes(f, k)) + " bytes, got " +
                                std::to_string(n_rows_bytes));
}

// 32 nibble codes of one q4_0-style run (qs[j] low = element j, high = element j+16)
// → four w4 words.
void put_run(const uint8_t* qs16, uint32_t* words) {
  uint8_t q[32];
  for (int j = 0; j < 16; ++j) { q[j] = qs16[j] & 0x0f; q[j + 16] = qs16[j] >> 4; }
  for (int w = 0; w < 4; ++w) {
    uint32_t v = 0;
    for (int j = 0; j < 8; ++j) v |= (uint32_t)q[w * 8 + j] << w4_shift(j);
    words[w] = v;
  }
}

}  // namespace

W4Weights repack_w4(const uint8_t* rows, int64_t n_rows_bytes, const char* fmt, int64_t n, int64_t k) {
  const Format f = parse(fmt);
  W4Weights out;
  if (f == Format::Q4_0) out.kind = W4Kind::Q4_0;
  else if (f == Format::Q4_1) out.kind = W4Kind::Q4_1;
  else if (q4_group_size(f)) out.kind = W4Kind::Q4_G;
  else throw std::invalid_argument(std::string("'") + fmt + "' has no 4-bit GPU layout (q4_0, q4_1, q4_g32/64/128 do)");
  check_sizes(f, n_rows_bytes, n, k);
  out.n = n; out.k = k;
  out.group = out.kind == W4Kind::Q4_G ? q4_group_size(f) : QK;
  const int64_t groups = k / out.group, rb = row_bytes(f, k);
  out.qweight.resize((size_t)(n * k / 8));
  out.scales.resize((size_t)(n * groups));
  if (out.kind == W4Kind::Q4_1) out.mins.resize((size_t)(n * groups));
  if (out.kind == W4Kind::Q4_G) out.zeros.resize((size_t)(n * groups));
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* row = rows + r * rb;
    uint32_t* words = out.qweight.data() + r * k / 8;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t gi = r * groups + g;
      if (out.kind == W4Kind::Q4_0) {
        block_q4_0 b; std::memcpy(&b, row + g * sizeof b, sizeof b);
        out.scales[gi] = b.d;
        put_run(b.qs, words + g * 4);
      } else if (out.kind == W4Kind::Q4_1) {
        block_q4_1 b; std::memcpy(&b, row + g * sizeof b, sizeof b);
        out.scales[gi] = b.d; out.mins[gi] = b.m;
        put_run(b.qs, words + g * 4);
      } else {
        // block_q4_g<G>: d, z, reserved, then G/32 runs of 16 bytes
        const int bytes = 4 + out.group / 2;
        const uint8_t* b = row + g * bytes;
        std::memcpy(&out.scales[gi], b, 2);
        out.zeros[gi] = b[2];
        for (int c = 0; c < out.group / QK; ++c) put_run(b + 4 + c * 16, words + (g * out.group + c * QK) / 8);
      }
    }
  }
  return out;
}

W8Weights repack_w8(const uint8_t* rows, int64_t n_rows_bytes, const char* fmt, int64_t n, int64_t k) {
  const Format f = parse(fmt);
  if (f != Format::Q8_0) throw std::invalid_argument(std::string("'") + fmt + "' has no 8-bit GPU layout (q8_0 does)");
  check_sizes(f, n_rows_bytes, n, k);
  W8Weights out;
  out.n = n; out.k = k; out.group = QK;
  out.qweight.resize((size_t)(n * k));
  out.scales.resize((size_t)(n * k / QK));
  const int64_t blocks = n * k / QK;
  for (int64_t b = 0; b < blocks; ++b) {
    block_q8_0 blk; std::memcpy(&blk, rows + b * sizeof blk, sizeof blk);
    out.scales[b] = blk.d;
    std::memcpy(out.qweight.data() + b * QK, blk.qs, QK);
  }
  return out;
}

W8Weights quantize_w8_per_channel(const float* w, int64_t n, int64_t k) {
  if (n <= 0 || k <= 0) throw std::invalid_argument("the matrix must have n > 0 rows and k > 0 columns");
  W8Weights out;
  out.n = n; out.k = k; out.group = (int)k;
  out.qweight.resize((size_t)(n * k));
  out.scales.resize((size_t)n);
  for (int64_t r = 0; r < n; ++r) {
    const float* x = w + r * k;
    float amax = 0.0f;
    for (int64_t j = 0; j < k; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    // The fp16 scale is what the kernel multiplies by, so round with it.
    const uint16_t d16 = fp32_to_fp16(amax / 127.0f);
    const float d = fp16_to_fp32(d16), id = d != 0.0f ? 1.0f / d : 0.0f;
    out.scales[r] = d16;
    for (int64_t j = 0; j < k; ++j) {
      const float q = std::nearbyint(x[j] * id);
      out.qweight[r * k + j] = (int8_t)(q > 127.0f ? 127 : q < -127.0f ? -127 : q);
    }
  }
  return out;
}

std::vector<float> dequantize_ref(const W4Weights& w) {
  std::vector<float> y((size_t)(w.n * w.k));
  const int64_t groups = w.k / w.group;
  for (int64_t r = 0; r < w.n; ++r) {
    for (int64_t e = 0; e < w.k; ++e) {
      const uint32_t word = w.qweight[(r * w.k + e) / 8];
      const int q = (word >> w4_shift((int)(e % 8))) & 0x0f;
      const int64_t gi = r * groups + e / w.group;
      const float d = fp16_to_fp32(w.scales[gi]);
      const int z = w.kind == W4Kind::Q4_0 ? 8 : w.kind == W4Kind::Q4_G ? w.zeros[gi] : 0;
      const float m = w.kind == W4Kind::Q4_1 ? fp16_to_fp32(w.mins[gi]) : 0.0f;
      // the engine's dequantisers: d·(q−z) for q4_0 / q4_g, d·q + m for q4_1
      y[r * w.k + e] = w.kind == W4Kind::Q4_1 ? d * (float)q + m : d * (float)(q - z);
    }
  }
  return y;
}

std::vector<float> dequantize_ref(const W8Weights& w) {
  std::vector<float> y((size_t)(w.n * w.k));
  for (int64_t i = 0; i < w.n * w.k; ++i)
    y[i] = fp16_to_fp32(w.scales[i / w.group]) * (float)w.qweight[i];
  return y;
}

}  // namespace gpu
}  // namespace linly
