// Scratch memory of the CPU kernels: large blocks 2 MB aligned, marked for transparent huge pages,
// and kept by the thread that frees them for its next call.
#pragma once
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <utility>
#include <vector>

namespace genaccel::cpu {

// Large buffers are 2 MB aligned and, on Linux, marked for transparent huge pages, so touching a
// fresh one costs a few page faults rather than one per 4 KB page. Fresh memory still has to be
// mapped and zeroed by the kernel, which costs more than the linear branch's arithmetic on the
// development VM (docs/sla.md), so a thread keeps the large blocks it frees (up to kKeepBlocks of
// them and kKeepBytes in all) and its next call reuses them.
constexpr size_t kHuge = size_t{2} << 20;

class BlockCache {
 public:
  static constexpr size_t kKeepBlocks = 8;
  static constexpr size_t kKeepBytes = size_t{1} << 30;
  // A cached block of at least `bytes` (a multiple of kHuge), else a fresh one; *got = its size.
  void* take(size_t bytes, size_t* got) {
    auto best = blocks_.end();
    for (auto it = blocks_.begin(); it != blocks_.end(); ++it)
      if (it->second >= bytes && (best == blocks_.end() || it->second < best->second)) best = it;
    if (best != blocks_.end()) {
      void* p = best->first;
      *got = best->second;
      kept_ -= best->second;
      blocks_.erase(best);
      return p;
    }
    void* p = std::aligned_alloc(kHuge, bytes);
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(p, bytes, MADV_HUGEPAGE);  // advisory: failure only costs speed
#endif
    *got = bytes;
    return p;
  }
  // Keeps the block, dropping the smallest ones while more than the limits would be kept.
  void give(void* p, size_t bytes) {
    blocks_.emplace_back(p, bytes);
    kept_ += bytes;
    while (blocks_.size() > kKeepBlocks || kept_ > kKeepBytes) {
      auto smallest = std::min_element(blocks_.begin(), blocks_.end(),
                                       [](const auto& x, const auto& y) { return x.second < y.second; });
      kept_ -= smallest->second;
      std::free(smallest->first);
      blocks_.erase(smallest);
    }
  }
  ~BlockCache() {
    for (auto& b : blocks_) std::free(b.first);
  }

 private:
  std::vector<std::pair<void*, size_t>> blocks_;
  size_t kept_ = 0;
};

inline BlockCache& block_cache() {
  thread_local BlockCache cache;
  return cache;
}

struct ScratchDeleter {
  size_t cached_bytes = 0;  // 0: a small malloc'ed block; else the size of a BlockCache block
  void operator()(float* p) const {
    if (cached_bytes == 0) std::free(p);
    else block_cache().give(p, cached_bytes);
  }
};
using Scratch = std::unique_ptr<float[], ScratchDeleter>;
inline Scratch scratch(size_t floats) {
  const size_t bytes = std::max<size_t>(floats * sizeof(float), 1);
  if (bytes < kHuge) {
    void* p = std::malloc(bytes);
    if (p == nullptr) throw std::bad_alloc();
    return Scratch(static_cast<float*>(p), ScratchDeleter{});
  }
  size_t got = 0;
  void* p = block_cache().take((bytes + kHuge - 1) / kHuge * kHuge, &got);
  return Scratch(static_cast<float*>(p), ScratchDeleter{got});
}

}  // namespace genaccel::cpu
