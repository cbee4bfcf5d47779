#include "runtime/weight_arena.h"

#include <cstdlib>
#include <mutex>
#include <new>

#include "runtime/aligned_buffer.h"

namespace linly {

struct WeightSlab {
  uint8_t* base;
  int64_t size;
  int64_t used = 0;   // bump pointer
  int64_t live = 0;   // blocks handed out and not yet released
};

namespace {
// A slab holds several layers of a small model, or one or two matrices of a 7B one. Only
// the pages written are backed by memory, so a slab's unused tail costs address space.
constexpr int64_t kSlabBytes = 64 << 20;
constexpr int64_t kAlign = 64;  // cache line; the kernels' loads need no more

// Under AddressSanitizer every block is its own allocation, so that the redzones between
// them still catch a kernel reading past its matrix.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kBlockPerAllocation = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kBlockPerAllocation = true;
#else
constexpr bool kBlockPerAllocation = false;
#endif
#else
constexpr bool kBlockPerAllocation = false;
#endif

std::mutex g_mu;
WeightSlab* g_current = nullptr;  // the slab new blocks come from
int64_t g_reserved = 0;

WeightSlab* new_slab(int64_t at_least) {
  const int64_t huge = (int64_t)kHugePageBytes;
  const int64_t size = (at_least > kSlabBytes ? at_least + huge - 1 : kSlabBytes) / huge * huge;
  uint8_t* base = alloc_huge_pages((size_t)size);
  g_reserved += size;
  return new WeightSlab{base, size};
}

void free_slab(WeightSlab* s) {
  g_reserved -= s->size;
  std::free(s->base);
  delete s;
}
}  // namespace

WeightBlock weight_arena_allocate(int64_t bytes) {
  const int64_t need = (bytes + kAlign - 1) / kAlign * kAlign;
  std::lock_guard<std::mutex> lk(g_mu);
  if (kBlockPerAllocation) {
    auto* base = static_cast<uint8_t*>(std::aligned_alloc(kAlign, (size_t)need));
    if (!base) throw std::bad_alloc();
    g_reserved += need;
    return {base, new WeightSlab{base, need, need, 1}};
  }
  if (!g_current || g_current->used + need > g_current->size) {
    WeightSlab* fresh = new_slab(need);
    // The old slab is no longer handed out from; it goes when its last block does.
    if (g_current && g_current->live == 0) free_slab(g_current);
    g_current = fresh;
  }
  WeightBlock b{g_current->base + g_current->used, g_current};
  g_current->used += need;
  ++g_current->live;
  return b;
}

void weight_arena_release(WeightSlab* slab) {
  if (!slab) return;
  std::lock_guard<std::mutex> lk(g_mu);
  if (--slab->live > 0) return;
  if (slab == g_current) g_current = nullptr;
  free_slab(slab);
}

int64_t weight_arena_reserved_bytes() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_reserved;
}

}  // namespace linly
