#include "quant/formats.h"

#include <cstring>

namespace linly {

namespace {
const FormatInfo kFormats[] = {
    {"f32", 1, 4, false},
    {"f16", 1, 2, false},
    {"bf16", 1, 2, false},
    {"q4_0", QK, (int)sizeof(block_q4_0), true},
    {"q4_1", QK, (int)sizeof(block_q4_1), true},
    {"q8_0", QK, (int)sizeof(block_q8_0), true},
    {"q4_g32", 32, (int)sizeof(block_q4_g<32>), true},
    {"q4_g64", 64, (int)sizeof(block_q4_g<64>), true},
    {"q4_g128", 128, (int)sizeof(block_q4_g<128>), true},
};
static_assert(sizeof(kFormats) / sizeof(kFormats[0]) == (size_t)Format::kCount, "one row per format");
}  // namespace

const FormatInfo& format_info(Format f) { return kFormats[(int)f]; }

bool parse_format(const char* name, Format* out) {
  for (int i = 0; i < (int)Format::kCount; ++i) {
    if (std::strcmp(kFormats[i].name, name) == 0) { *out = (Format)i; return true; }
  }
  return false;
}

}  // namespace linly
