// The in-memory layout the SIMD integer kernels read: "panels" of 16 weight rows.
//
// On disk a quantised matrix is N rows of GGUF-style blocks (formats.h). At load time
// each run of 16 rows is repacked so that one 64-byte vector holds, in 32-bit lane r,
// four consecutive bytes of row r's block. A dot-product instruction (vpdpbusd or
// maddubs+madd) against four broadcast activation bytes then yields 16 (or 8) rows'
// partial sums at once, and the per-row scales are applied as one vector FMA per block
// instead of a horizontal reduction per row. AVX2 reads the same bytes as two 32-byte
// halves (rows 0-7, rows 8-15).
//
// Panel of 16 rows, nb = k/32 blocks, ng = k/G groups (q4_g only):
//   q4_0 : qs[nb][4][16][4]  d[nb][16] f16
//   q4_1 : qs[nb][4][16][4]  d[nb][16] f16  m[nb][16] f16
//   q8_0 : qs[nb][8][16][4]  d[nb][16] f16
//   q4_gG: qs[nb][4][16][4]  d[ng][16] f16  z[ng][16] u8
// qs[b][v][r][i] is the on-disk qs byte 4v+i of row r, block b: for 4-bit formats its
// low nibble is element 4v+i and its high nibble element 16+4v+i. Rows past N are zero
// (zero scales), so tails need no special case. Each panel is padded to 64 bytes.
// This is plain C++, shared by every ISA (and testable without any of them).
#pragma once
#include <cstdint>

#include "quant/formats.h"

namespace linly {

constexpr int kPanelRows = 16;

struct PanelLayout {
  int64_t qs_bytes;     // offset of the first scale array
  int64_t d_offset;     // f16 d[.][16]
  int64_t m_offset;     // q4_1: f16 m[nb][16]; -1 otherwise
  int64_t z_offset;     // q4_g: u8 z[ng][16];  -1 otherwise
  int64_t panel_bytes;  // stride between panels (multiple of 64)
};

bool format_has_panels(Format f);
PanelLayout panel_layout(Format f, int64_t k);
static inline int64_t panel_count(int64_t n) { return (n + kPanelRows - 1) / kPanelRows; }

// plain: n rows of row_bytes(f, k); out: panel_count(n) * panel_bytes, 64-byte aligned.
void repack_to_panels(Format f, const uint8_t* plain, int64_t n, int64_t k, uint8_t* out);
// The inverse, for tests and for writing a repacked matrix back out.
void unpack_from_panels(Format f, const uint8_t* panels, int64_t n, int64_t k, uint8_t* plain);
// One row back in the on-disk layout (an embedding lookup on a panel-stored matrix).
void panel_row_to_plain(Format f, const uint8_t* panels, int64_t k, int64_t row, uint8_t* plain_row);

}  // namespace linly
