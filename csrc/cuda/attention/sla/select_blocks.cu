// One thread block per row of scores: the row's keys (genaccel/attention/sla_block_select.h) are
// bitonic-sorted in descending order, in shared memory (in global scratch for rows past 4096 blocks,
// rows then taken in chunks), which gives the two thresholds; then each thread classifies a
// contiguous run of blocks and a block scan places its critical ids, so the id list comes out
// ascending without a second sort.
#include "cuda/attention/sla/select_blocks.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cub/block/block_scan.cuh>

#include "genaccel/attention/sla/select_blocks.h"

namespace genaccel::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kSharedKeys = 4096;  // 32 KB of keys: under the 48 KB a launch gets without opting in
// Longer rows sort in global scratch of at most this many keys (256 MB), rows taken in chunks.
constexpr int64_t kScratchKeys = int64_t{1} << 25;

int64_t padded_length(int64_t tk) {
  int64_t p = 1;
  while (p < tk) p <<= 1;
  return p;
}

__global__ void __launch_bounds__(kThreads)
    block_select_kernel(const float* __restrict__ scores, int tk, int p2, int n_crit, int n_neg,
                        int8_t* __restrict__ codes, int32_t* __restrict__ indices, uint64_t* __restrict__ scratch) {
  using attention::sla_block_key;
  extern __shared__ uint64_t shared_keys[];
  const int64_t row = blockIdx.x;
  uint64_t* keys = scratch != nullptr ? scratch + row * p2 : shared_keys;
  const float* s = scores + row * tk;
  // Padding keys are 0, at or below every real key, so they sort behind the tk real ones.
  for (int j = threadIdx.x; j < p2; j += kThreads) keys[j] = j < tk ? sla_block_key(s[j], j, tk) : 0;
  __syncthreads();
  for (int size = 2; size <= p2; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < p2 / 2; i += kThreads) {
        const int a = 2 * i - (i & (stride - 1)), b = a + stride;  // a has the stride bit clear
        const uint64_t x = keys[a], y = keys[b];
        const bool descending = (a & size) == 0;  // the last merge (size == p2) is all descending
        if (descending ? x < y : x > y) {
          keys[a] = y;
          keys[b] = x;
        }
      }
      __syncthreads();
    }
  }
  const uint64_t critical_min = keys[n_crit - 1];
  const uint64_t negligible_max = n_neg > 0 ? keys[tk - n_neg] : 0;

  const int chunk = (tk + kThreads - 1) / kThreads;
  const int j0 = min(tk, static_cast<int>(threadIdx.x) * chunk), j1 = min(tk, j0 + chunk);
  int8_t* c = codes + row * tk;
  int count = 0;
  for (int j = j0; j < j1; ++j) {
    const uint64_t key = sla_block_key(s[j], j, tk);
    const int8_t code = key >= critical_min                       ? attention::kSlaCritical
                        : (n_neg > 0 && key <= negligible_max) ? attention::kSlaNegligible
                                                                : attention::kSlaMarginal;
    c[j] = code;
    count += code == attention::kSlaCritical;
  }
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  int slot;
  Scan(scan_storage).ExclusiveSum(count, slot);
  int32_t* idx = indices + row * n_crit;
  for (int j = j0; j < j1; ++j)
    if (c[j] == attention::kSlaCritical) idx[slot++] = j;
}

// Rows per launch on the global-scratch path.
int64_t scratch_rows(int64_t rows, int64_t p2) { return std::max<int64_t>(1, std::min(rows, kScratchKeys / p2)); }

}  // namespace

int64_t sla_block_select_scratch(int64_t rows, int64_t tk) {
  const int64_t p2 = padded_length(tk);
  return p2 <= kSharedKeys || rows == 0 ? 0 : scratch_rows(rows, p2) * p2;
}

int sla_block_select(const float* scores, int64_t rows, int64_t tk, int64_t n_crit, int64_t n_neg, int8_t* codes,
                     int32_t* indices, uint64_t* scratch, void* stream) {
  if (tk < 1 || tk >= (int64_t{1} << 30) || n_crit < 1 || n_neg < 0 || n_crit + n_neg > tk || rows < 0 ||
      rows > 0x7FFFFFFF)
    return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int64_t p2 = padded_length(tk);
  const bool shared = p2 <= kSharedKeys;
  if (!shared && scratch == nullptr) return cudaErrorInvalidValue;
  const int64_t chunk = shared ? rows : scratch_rows(rows, p2);
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    block_select_kernel<<<static_cast<unsigned>(std::min(chunk, rows - r0)), kThreads,
                          shared ? p2 * sizeof(uint64_t) : 0, static_cast<cudaStream_t>(stream)>>>(
        scores + r0 * tk, static_cast<int>(tk), static_cast<int>(p2), static_cast<int>(n_crit),
        static_cast<int>(n_neg), codes + r0 * tk, indices + r0 * n_crit, shared ? nullptr : scratch);
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace genaccel::cuda
