// The row gather / scatter of ops svg2_permute / svg2_unpermute on CUDA: a thread block per
// (batch, head, 16 rows), its threads over the rows' elements (copied as 2-, 4- or 8-byte words).
#include "cuda/attention/svg2/permute.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace genaccel::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxGridY = 65535;

unsigned grid_y(int64_t bh) { return static_cast<unsigned>(std::min<int64_t>(bh, kMaxGridY)); }
unsigned blocks_for(int64_t n, int64_t per) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + per - 1) / per, 0x7FFFFFFF)));
}

template <class E>
__global__ void __launch_bounds__(kThreads)
    move_rows_kernel(const E* __restrict__ src, int64_t sb, int64_t sh, int64_t sr, E* __restrict__ dst,
                     const int32_t* __restrict__ perm, int64_t bh_count, int64_t heads, int64_t n, int64_t d,
                     bool scatter) {
  constexpr int64_t kRowsPerBlock = 16;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    const E* s = src + (bh / heads) * sb + (bh % heads) * sh;
    E* o = dst + bh * n * d;
    const int32_t* pr = perm + bh * n;
    const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock;
    const int64_t rows = min(kRowsPerBlock, n - t0);
    for (int64_t e = threadIdx.x; e < rows * d; e += kThreads) {
      const int64_t t = t0 + e / d, k = e % d;
      const int64_t q = pr[t];
      const bool ok = q >= 0 && q < n;
      if (scatter) {
        if (ok) o[q * d + k] = s[t * sr + k];
      } else {
        o[t * d + k] = ok ? s[q * sr + k] : E{};
      }
    }
  }
}

template <class E>
int move_rows(const void* src, int64_t sb, int64_t sh, int64_t sr, void* dst, const int32_t* perm, int64_t bh,
              int64_t heads, int64_t n, int64_t d, bool scatter, cudaStream_t stream) {
  const dim3 grid(blocks_for(n, 16), grid_y(bh));
  move_rows_kernel<E><<<grid, kThreads, 0, stream>>>(static_cast<const E*>(src), sb, sh, sr, static_cast<E*>(dst),
                                                     perm, bh, heads, n, d, scatter);
  return cudaGetLastError();
}

}  // namespace

int svg2_move_rows(const void* src, int64_t sb, int64_t sh, int64_t sr, void* dst, const int32_t* perm, int64_t batch,
                   int64_t heads, int64_t n, int64_t row_elems, int elem_bytes, bool scatter, void* stream_ptr) {
  const int64_t bh = batch * heads;
  if (bh == 0 || n == 0 || row_elems == 0) return cudaSuccess;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (elem_bytes) {
    case 2: return move_rows<uint16_t>(src, sb, sh, sr, dst, perm, bh, heads, n, row_elems, scatter, stream);
    case 4: return move_rows<uint32_t>(src, sb, sh, sr, dst, perm, bh, heads, n, row_elems, scatter, stream);
    case 8: return move_rows<uint64_t>(src, sb, sh, sr, dst, perm, bh, heads, n, row_elems, scatter, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace genaccel::cuda
