// Owning, 64-byte aligned byte buffer (cache line and zmm width).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>

#include "runtime/weight_arena.h"
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace linly {

constexpr size_t kHugePageBytes = (size_t)2 << 20;

// `bytes` rounded up to whole 2 MiB pages, on a 2 MiB boundary, with transparent huge
// pages asked for (advice only: where the OS declines, 4 KiB pages serve). Freed with
// std::free. Throws std::bad_alloc.
inline uint8_t* alloc_huge_pages(size_t bytes) {
  const size_t rounded = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kHugePageBytes, rounded));
  if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(int64_t bytes) : size_(bytes) {
    if (bytes <= 0) return;
    // Big buffers (a KV cache, a bandwidth probe) go on huge pages: streamed through, 4 KiB
    // pages would cost a TLB miss per page.
    if ((size_t)bytes >= kHugePageBytes) {
      data_ = alloc_huge_pages((size_t)bytes);
      return;
    }
    data_ = static_cast<uint8_t*>(std::aligned_alloc(64, ((size_t)bytes + 63) / 64 * 64));
    if (!data_) throw std::bad_alloc();
  }
  // Packed weights: a block of the weight arena (runtime/weight_arena.h), placed right
  // after the weights allocated before it, on huge pages even when it is small.
  static AlignedBuffer weights(int64_t bytes) {
    AlignedBuffer b;
    if (bytes <= 0) return b;
    const WeightBlock w = weight_arena_allocate(bytes);
    b.data_ = w.data;
    b.slab_ = w.slab;
    b.size_ = bytes;
    return b;
  }
  ~AlignedBuffer() {
    if (slab_) weight_arena_release(slab_);
    else std::free(data_);
  }
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)), slab_(std::exchange(o.slab_, nullptr)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    std::swap(slab_, o.slab_);
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  int64_t size_ = 0;
  WeightSlab* slab_ = nullptr;  // set: data_ is a weight-arena block, not malloc'd
};

// n values of a trivially copyable T in an AlignedBuffer: on huge pages from 2 MiB up,
// which a std::vector's memory is not. For the KV cache, which attention reads as one
// short stream per head and layer: with 4 KiB pages each stream crosses a page, and
// takes a TLB miss, every 32 positions of a 64-wide f16 head.
template <class T>
class AlignedArray {
 public:
  void assign(int64_t n, const T& value) {
    buf_ = AlignedBuffer(n * (int64_t)sizeof(T));
    n_ = n;
    std::fill(data(), data() + n, value);
  }
  T* data() { return reinterpret_cast<T*>(buf_.data()); }
  const T* data() const { return reinterpret_cast<const T*>(buf_.data()); }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) { return data()[i]; }
  const T& operator[](int64_t i) const { return data()[i]; }

 private:
  AlignedBuffer buf_;
  int64_t n_ = 0;
};

}  // namespace linly
