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
// A panel is a run of chunks; a chunk is CB consecutive 32-blocks' codes followed by the
// scale records of the groups those blocks belong to, so a GEMV reads every byte of the
// panel in address order, one stream. (Scales gathered at the panel's end made a second
// stream 16 KiB away from the codes: the 4-bit GEMV then read 79 % of the bandwidth that
// the same loop reached with the scales in address order, benchmarks/NOTES.md.)
//
//   block codes  q4: qs[4][16][4]  (256 B)     q8_0: qs[8][16][4]  (512 B)
//   record       q4_0, q8_0: d[16] f16 (32 B)   q4_1: d[16] f16, m[16] f16 (64 B)
//                q4_gG: d[16] f16, z[16] u8 (48 B), one record per group of G/32 blocks
//   chunk        codes of CB blocks, then their records; CB makes a full chunk a
//                multiple of 64 B: q4_0 2, q4_1 1, q8_0 2, q4_g32 4, q4_g64 8, q4_g128 16
//                (every chunk 9, 5, 17, 19, 35 or 67 cache lines)
// The last chunk of a panel holds the nb % CB remaining blocks when K is not a multiple
// of CB·32, its records right after its codes; the panel is padded to 64 bytes.
// qs[v][r][i] is the on-disk qs byte 4v+i of row r's block: for 4-bit formats its low
// nibble is element 4v+i and its high nibble element 16+4v+i. Rows past N are zero
// (zero scales), so tails need no special case.
// This is plain C++, shared by every ISA (and testable without any of them).
#pragma once
#include <cstdint>

#include "quant/formats.h"

namespace linly {

constexpr int kPanelRows = 16;

// Per-format constants of the layout, usable as template constants in the kernels.
constexpr int panel_block_bytes(Format f) { return f == Format::Q8_0 ? 512 : 256; }
constexpr int panel_record_bytes(Format f) { return f == Format::Q4_1 ? 64 : q4_group_size(f) ? 48 : 32; }
constexpr int panel_group_blocks(Format f) { return q4_group_size(f) ? q4_group_size(f) / QK : 1; }
constexpr int panel_chunk_blocks(Format f) {
  return f == Format::Q4_1 ? 1 : f == Format::Q4_G32 ? 4 : f == Format::Q4_G64 ? 8 : f == Format::Q4_G128 ? 16 : 2;
}
constexpr int panel_chunk_bytes(Format f) {
  return panel_chunk_blocks(f) * panel_block_bytes(f) +
         panel_chunk_blocks(f) / panel_group_blocks(f) * panel_record_bytes(f);
}
static_assert(panel_chunk_bytes(Format::Q4_0) == 576 && panel_chunk_bytes(Format::Q4_1) == 320 &&
                  panel_chunk_bytes(Format::Q8_0) == 1088 && panel_chunk_bytes(Format::Q4_G32) == 1216 &&
                  panel_chunk_bytes(Format::Q4_G64) == 2240 && panel_chunk_bytes(Format::Q4_G128) == 4288,
              "full chunks keep every chunk's codes 64-byte aligned");

struct PanelLayout {
  int64_t nb;           // 32-blocks per row
  int chunk_blocks;     // CB
  int group_blocks;     // 32-blocks per scale record
  int block_bytes;      // codes of one 32-block of 16 rows
  int record_bytes;     // one scale record
  int64_t chunk_bytes;  // stride between chunks
  int64_t panel_bytes;  // stride between panels (multiple of 64)

  // Offsets from the panel's start: block b's codes, and the record of block b's group.
  int64_t qs_offset(int64_t b) const { return b / chunk_blocks * chunk_bytes + b % chunk_blocks * block_bytes; }
  int64_t record_offset(int64_t b) const {
    const int64_t c0 = b / chunk_blocks * chunk_blocks;
    return c0 / chunk_blocks * chunk_bytes + blocks_in_chunk(c0) * block_bytes +
           (b - c0) / group_blocks * record_bytes;
  }
  // Blocks in the chunk starting at block c0 (CB, or fewer in a panel's last chunk).
  int blocks_in_chunk(int64_t c0) const { return (int)(nb - c0 < chunk_blocks ? nb - c0 : chunk_blocks); }
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
