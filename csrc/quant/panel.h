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
// A panel's piece of a K-slice (below) is a run of chunks; a chunk is CB consecutive
// 32-blocks' codes followed by the scale records of the groups those blocks belong to, so
// a GEMV reads every byte of the piece in address order, one stream. (Scales gathered at
// the panel's end made a second stream 16 KiB away from the codes: the 4-bit GEMV then
// read 79 % of the bandwidth that the same loop reached with the scales in address order,
// benchmarks/NOTES.md.)
//
//   block codes  q4: qs[4][16][4]  (256 B)     q8_0: qs[8][16][4]  (512 B)
//   record       q4_0, q8_0: d[16] f16 (32 B)   q4_1: d[16] f16, m[16] f16 (64 B)
//                q4_gG: d[16] f16, z[16] u8 (48 B), one record per group of G/32 blocks
//   chunk        codes of CB blocks, then their records; CB makes a full chunk a
//                multiple of 64 B: q4_0 2, q4_1 1, q8_0 2, q4_g32 4, q4_g64 8, q4_g128 16
//                (every chunk 9, 5, 17, 19, 35 or 67 cache lines)
// The last chunk of a piece holds the remaining blocks when its block count is not a
// multiple of CB, its records right after its codes; every piece is padded to 64 bytes.
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

// K-slices. The matrix is stored slice by slice along K: slice s holds blocks
// [32s, 32s + 32) (the last one the rest), as every panel's piece of them side by side:
//
//   matrix  [slice 0: piece(panel 0) piece(panel 1) ...][slice 1: ...] ...
//   piece   the chunked run above over the slice's blocks, padded to 64 B
//
// A decode GEMV walks slice by slice, each thread through its panels' pieces of the slice
// in address order: one stream per thread and slice, as before, while the slice's 32
// activation blocks (2.5 KiB) stay in L1 from one panel to the next. With whole-K panels a
// panel's weights (36 KiB at K = 4096 in q4_0) evicted the activations before the next
// panel came back to them, and refetching them from L2 cost the weight stream a quarter of
// its rate from DRAM (Zen 4, one thread: 73 -> 95 % of the read bandwidth, benchmarks/
// NOTES.md, session 25). 32 blocks keep a q8_0 piece (17 KiB) and its activations in a
// 32 KiB L1d; it is a multiple of every format's chunk and group.
constexpr int kSliceBlocks = 32;

struct PanelPiece;

struct PanelLayout {
  int64_t nb;           // 32-blocks per row: of the matrix, or of one piece (piece())
  int64_t panels;       // 16-row panels side by side in a slice (1 in a piece's layout)
  int chunk_blocks;     // CB
  int group_blocks;     // 32-blocks per scale record
  int block_bytes;      // codes of one 32-block of 16 rows
  int record_bytes;     // one scale record
  int64_t chunk_bytes;  // stride between chunks
  int64_t piece_bytes;  // one panel's piece of a full slice (of this piece, in a piece's layout)
  int64_t tail_bytes;   // one panel's piece of the last slice
  int64_t panel_bytes;  // one panel over all of K: its pieces together (each a multiple of 64)

  int64_t slices() const { return (nb + kSliceBlocks - 1) / kSliceBlocks; }
  int slice_blocks(int64_t s) const { return (int)(nb - s * kSliceBlocks < kSliceBlocks ? nb - s * kSliceBlocks : kSliceBlocks); }
  // Panel p's piece of slice s, from the matrix's start.
  int64_t piece_offset(int64_t p, int64_t s) const {
    return s * panels * piece_bytes + p * (s + 1 < slices() ? piece_bytes : tail_bytes);
  }
  // The layout inside one piece of slice s: what the kernels walk, with offsets from its start.
  PanelLayout piece(int64_t s) const {
    PanelLayout L = *this;
    L.nb = slice_blocks(s);
    L.panels = 1;
    L.piece_bytes = L.tail_bytes = L.panel_bytes = s + 1 < slices() ? piece_bytes : tail_bytes;
    return L;
  }

  // In a piece's layout: block b's codes, and the record of block b's group.
  int64_t qs_offset(int64_t b) const { return b / chunk_blocks * chunk_bytes + b % chunk_blocks * block_bytes; }
  int64_t record_offset(int64_t b) const {
    const int64_t c0 = b / chunk_blocks * chunk_blocks;
    return c0 / chunk_blocks * chunk_bytes + blocks_in_chunk(c0) * block_bytes +
           (b - c0) / group_blocks * record_bytes;
  }
  // Blocks in the chunk starting at block c0 (CB, or fewer in a piece's last chunk).
  int blocks_in_chunk(int64_t c0) const { return (int)(nb - c0 < chunk_blocks ? nb - c0 : chunk_blocks); }

  // In the matrix's layout: the piece holding block b of panel p, and that block's codes
  // and record from the matrix's start.
  PanelPiece piece_of(int64_t p, int64_t b) const;
  int64_t qs_at(int64_t p, int64_t b) const;
  int64_t record_at(int64_t p, int64_t b) const;
};

struct PanelPiece {
  int64_t offset;  // from the matrix's start
  PanelLayout L;   // the layout inside it
  int64_t b;       // the block's index in it
};

inline PanelPiece PanelLayout::piece_of(int64_t p, int64_t b) const {
  const int64_t s = b / kSliceBlocks;
  return {piece_offset(p, s), piece(s), b % kSliceBlocks};
}
inline int64_t PanelLayout::qs_at(int64_t p, int64_t b) const {
  const PanelPiece c = piece_of(p, b);
  return c.offset + c.L.qs_offset(c.b);
}
inline int64_t PanelLayout::record_at(int64_t p, int64_t b) const {
  const PanelPiece c = piece_of(p, b);
  return c.offset + c.L.record_offset(c.b);
}

bool format_has_panels(Format f);
// The layout of an n-row, k-column matrix (n only sets how many pieces share a slice).
PanelLayout panel_layout(Format f, int64_t n, int64_t k);
static inline int64_t panel_count(int64_t n) { return (n + kPanelRows - 1) / kPanelRows; }
// Rows of an n-row matrix that panel p holds (kPanelRows but in the last panel).
static inline int panel_rows(int64_t n, int64_t p) {
  return (int)(n - p * kPanelRows < kPanelRows ? n - p * kPanelRows : kPanelRows);
}

// plain: n rows of row_bytes(f, k); out: panel_count(n) * panel_bytes, 64-byte aligned.
// Writes panels [p0, p1) (their pieces of every slice), so that threads can share the work.
void repack_to_panels(Format f, const uint8_t* plain, int64_t n, int64_t k, uint8_t* out, int64_t p0, int64_t p1);
inline void repack_to_panels(Format f, const uint8_t* plain, int64_t n, int64_t k, uint8_t* out) {
  repack_to_panels(f, plain, n, k, out, 0, panel_count(n));
}
// The inverse, for tests and for writing a repacked matrix back out.
void unpack_from_panels(Format f, const uint8_t* panels, int64_t n, int64_t k, uint8_t* plain);
// One row back in the on-disk layout (an embedding lookup on a panel-stored matrix).
void panel_row_to_plain(Format f, const uint8_t* panels, int64_t n, int64_t k, int64_t row, uint8_t* plain_row);

}  // namespace linly
