#include "quant/panel.h"

#include <cstring>

namespace linly {

namespace {
struct PlainBlock {  // where a format's pieces sit inside one on-disk block
  int d, m, z;       // byte offsets, -1 if absent
  int qs;
  int qs_bytes_per_32;  // 16 for 4-bit, 32 for q8_0
};

PlainBlock plain_block(Format f) {
  switch (f) {
    case Format::Q4_0: return {0, -1, -1, 2, 16};
    case Format::Q4_1: return {0, 2, -1, 4, 16};
    case Format::Q8_0: return {0, -1, -1, 2, 32};
    case Format::Q4_G32: case Format::Q4_G64: case Format::Q4_G128: return {0, -1, 2, 4, 16};
    default: return {-1, -1, -1, -1, 0};
  }
}

// Visits every (row, 32-block, byte) of panel p, pairing its offset from the matrix's
// start with the offset from row r0's start on disk; `Copy` decides the direction.
template <class Copy>
void walk_panel(Format f, const PanelLayout& L, int64_t k, int64_t p, int64_t r0, int64_t r1, Copy copy) {
  const FormatInfo& fi = format_info(f);
  const PlainBlock pb = plain_block(f);
  const int64_t nb = k / QK;
  const int sub = fi.block_elems / QK;  // 32-blocks per on-disk block (G/32 for q4_g)
  const int qpb = pb.qs_bytes_per_32;
  const int64_t rb = row_bytes(f, k);
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t blk = b / sub, c = b % sub;
      const int64_t src_blk = (r - r0) * rb + blk * fi.block_bytes;
      const int64_t qs = L.qs_at(p, b);
      for (int j = 0; j < qpb; j += 4) {  // 4-byte words: one 32-bit lane of vector j/4
        copy(qs + (j / 4) * 64 + r * 4, src_blk + pb.qs + c * qpb + j, 4);
      }
      if (c == 0) {  // the group's record: d[16], then m[16] (q4_1) or z[16] (q4_g)
        const int64_t rec = L.record_at(p, b);
        copy(rec + r * 2, src_blk + pb.d, 2);
        if (pb.m >= 0) copy(rec + 32 + r * 2, src_blk + pb.m, 2);
        if (pb.z >= 0) copy(rec + 32 + r, src_blk + pb.z, 1);
      }
    }
  }
}
}  // namespace

bool format_has_panels(Format f) { return plain_block(f).qs >= 0; }

PanelLayout panel_layout(Format f, int64_t n, int64_t k) {
  PanelLayout L{};
  L.nb = k / QK;
  L.panels = panel_count(n);
  L.chunk_blocks = panel_chunk_blocks(f);
  L.group_blocks = panel_group_blocks(f);
  L.block_bytes = panel_block_bytes(f);
  L.record_bytes = panel_record_bytes(f);
  L.chunk_bytes = panel_chunk_bytes(f);
  auto piece = [&](int64_t blocks) {  // a piece of `blocks` blocks, padded to 64 B
    const int64_t full = blocks / L.chunk_blocks, tail = blocks % L.chunk_blocks;
    const int64_t end = full * L.chunk_bytes + tail * L.block_bytes + tail / L.group_blocks * L.record_bytes;
    return (end + 63) / 64 * 64;
  };
  const int64_t slices = L.slices();
  L.piece_bytes = piece(L.nb < kSliceBlocks ? L.nb : kSliceBlocks);
  L.tail_bytes = slices ? piece(L.nb - (slices - 1) * kSliceBlocks) : 0;
  L.panel_bytes = slices ? (slices - 1) * L.piece_bytes + L.tail_bytes : 0;
  return L;
}

void repack_to_panels(Format f, const uint8_t* plain, int64_t n, int64_t k, uint8_t* out, int64_t p0, int64_t p1) {
  const PanelLayout L = panel_layout(f, n, k);
  const int64_t rb = row_bytes(f, k);
  for (int64_t p = p0; p < p1; ++p) {
    for (int64_t s = 0; s < L.slices(); ++s) std::memset(out + L.piece_offset(p, s), 0, (size_t)L.piece(s).piece_bytes);
    const uint8_t* src = plain + p * kPanelRows * rb;
    walk_panel(f, L, k, p, 0, panel_rows(n, p), [&](int64_t po, int64_t so, int len) { std::memcpy(out + po, src + so, len); });
  }
}

void unpack_from_panels(Format f, const uint8_t* panels, int64_t n, int64_t k, uint8_t* plain) {
  const PanelLayout L = panel_layout(f, n, k);
  const int64_t rb = row_bytes(f, k);
  std::memset(plain, 0, (size_t)(n * rb));  // q4_g's reserved byte
  for (int64_t p = 0; p < panel_count(n); ++p) {
    uint8_t* dst = plain + p * kPanelRows * rb;
    walk_panel(f, L, k, p, 0, panel_rows(n, p), [&](int64_t po, int64_t so, int len) { std::memcpy(dst + so, panels + po, len); });
  }
}

void panel_row_to_plain(Format f, const uint8_t* panels, int64_t n, int64_t k, int64_t row, uint8_t* plain_row) {
  const PanelLayout L = panel_layout(f, n, k);
  const int64_t rb = row_bytes(f, k), r = row % kPanelRows;
  std::memset(plain_row, 0, (size_t)rb);
  walk_panel(f, L, k, row / kPanelRows, r, r + 1, [&](int64_t po, int64_t so, int len) { std::memcpy(plain_row + so, panels + po, len); });
}

}  // namespace linly
