// Row gather / scatter per (batch, head), parallel over (batch, head, chunks of rows); the check that
// each perm row is a permutation marks the entries seen in a per-(batch, head) bitmap.
#include "cpu/attention/svg2/permute.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <vector>

namespace genaccel::cpu {

int64_t svg2_first_bad_perm(const int32_t* perm, int64_t bh, int64_t n, int32_t* bad_value, bool* out_of_range) {
  std::atomic<int64_t> first{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, bh, 1, [&](int64_t a, int64_t b) {
    std::vector<uint8_t> seen(static_cast<size_t>(n));
    for (int64_t i = a; i < b && i < first.load(); ++i) {
      std::fill(seen.begin(), seen.end(), 0);
      const int32_t* row = perm + i * n;
      bool ok = true;
      for (int64_t t = 0; t < n && ok; ++t) {
        const int32_t v = row[t];
        ok = v >= 0 && v < n && !seen[v];
        if (ok) seen[v] = 1;
      }
      if (!ok) {
        int64_t cur = first.load();
        while (i < cur && !first.compare_exchange_weak(cur, i)) {
        }
      }
    }
  });
  const int64_t bad = first.load();
  if (bad == std::numeric_limits<int64_t>::max()) return -1;
  // Find what is wrong in that row (serially: the error path).
  std::vector<uint8_t> seen(static_cast<size_t>(n));
  const int32_t* row = perm + bad * n;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t v = row[t];
    if (v < 0 || v >= n) {
      *bad_value = v, *out_of_range = true;
      return bad;
    }
    if (seen[v]) {
      *bad_value = v, *out_of_range = false;
      return bad;
    }
    seen[v] = 1;
  }
  return bad;
}

void svg2_move_rows(const char* src, int64_t src_batch_stride, int64_t src_head_stride, int64_t src_row_stride,
                    char* dst, const int32_t* perm, int64_t batch, int64_t heads, int64_t n, int64_t row_bytes,
                    bool scatter) {
  if (row_bytes == 0 || n == 0) return;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t{64} << 10) / row_bytes));
  const int64_t chunks = (n + chunk - 1) / chunk;
  at::parallel_for(0, batch * heads * chunks, 1, [&](int64_t a, int64_t b) {
    for (int64_t task = a; task < b; ++task) {
      const int64_t i = task / chunks, t0 = (task % chunks) * chunk, t1 = std::min(n, t0 + chunk);
      const char* s = src + (i / heads) * src_batch_stride + (i % heads) * src_head_stride;
      char* o = dst + i * n * row_bytes;
      const int32_t* pr = perm + i * n;
      if (scatter) {
        for (int64_t t = t0; t < t1; ++t) std::memcpy(o + pr[t] * row_bytes, s + t * src_row_stride, row_bytes);
      } else {
        for (int64_t t = t0; t < t1; ++t) std::memcpy(o + t * row_bytes, s + pr[t] * src_row_stride, row_bytes);
      }
    }
  });
}

}  // namespace genaccel::cpu
