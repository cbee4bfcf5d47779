// Where packed weights live: back to back, in load order, inside large slabs that ask for
// transparent huge pages.
//
// Why: a decode step streams every matrix once. A small model's matrices (SmolLM2: 62 KB
// to 0.5 MB each) were each their own allocation, too small for a 2 MiB page, so the
// stream crossed a 4 KiB page, and took a TLB miss, every 4 KiB; a slab puts a whole
// layer's matrices on one or two huge pages. Back to back in load order, one thread's
// decode also reads them as one long forward stream.
//
// Ownership: AlignedBuffer::weights() hands out blocks; each block holds a count on its
// slab, and the slab's memory is freed when its last block is. Freed blocks are not
// reused inside a live slab: weights are loaded once and freed together.
#pragma once
#include <cstdint>

namespace linly {

struct WeightSlab;

struct WeightBlock {
  uint8_t* data = nullptr;  // 64-byte aligned
  WeightSlab* slab = nullptr;
};

// Thread-safe. Throws std::bad_alloc when memory runs out. bytes > 0.
WeightBlock weight_arena_allocate(int64_t bytes);
void weight_arena_release(WeightSlab* slab);

// Bytes the arena holds from the system now (slabs, used or not); for tests and reports.
int64_t weight_arena_reserved_bytes();

}  // namespace linly
