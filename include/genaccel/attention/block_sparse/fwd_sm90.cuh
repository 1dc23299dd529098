// Block-sparse attention forward on Hopper's warpgroup tensor cores (wgmma, sm_90a). Torch-free
// device code; the launcher is csrc/cuda/attention/block_sparse/fwd.cu, which runs it instead of the
// mma.sync kernel (fwd.cuh) on sm_90 with backend="sm90".
//
// Same work split, tile-list policy, online softmax and epilogue as the mma.sync kernel; what
// changes is the matrix engine. Each warpgroup (4 warps, 128 threads) owns 64 query rows. Q, K and
// V tiles live in shared memory in the 128-byte-swizzled panel layout that wgmma descriptors read
// (sm90_wgmma.cuh), loaded with cp.async and double-buffered as before. Per 64-key tile:
// S = Q K^T as 8 (head dim 128) wgmma m64n64k16 with both operands in shared memory, online
// softmax on the accumulators (per warp, the m16n8 layout of the mma.sync kernel), then O += P V
// with P from registers and V read MN-major (no transpose in memory). Each product waits for its
// own completion: no overlap of softmax and tensor cores yet, no TMA, no warp specialisation.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "genaccel/attention/block_sparse/fwd.cuh"
#include "genaccel/common/sm90_wgmma.cuh"

namespace genaccel::attention {

template <class T, int kHeadDim_, int kBlockQ_>
struct Sm90FwdTraits {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockQ = kBlockQ_;
  static constexpr int kKeyTile = 64;
  static constexpr int kWarpgroups = kBlockQ / 64;
  static constexpr int kThreads = 128 * kWarpgroups;
  static constexpr int kQBytes = kBlockQ * kHeadDim * 2;
  static constexpr int kTileBytes = kKeyTile * kHeadDim * 2;
  // 1024 bytes of slack to align the tiles (the swizzle is on absolute address bits), then
  // Q | K stage 0 | K stage 1 | V stage 0 | V stage 1, each a multiple of 1024 bytes.
  static constexpr int kSmemBytes = 1024 + kQBytes + 4 * kTileBytes;

  static_assert(sizeof(T) == 2, "16-bit inputs only (wgmma bf16 / f16)");
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim 64 or 128 (one or two 128-byte panels)");
  static_assert(kBlockQ == 64 || kBlockQ == 128, "one warpgroup per 64 query rows");
};

// copy_rows_async of rows [0, kRows) into the swizzled panel tile at `tile` (a tile of kRows rows).
template <int kRows, int D, int kThreads, class T>
__device__ __forceinline__ void load_rows_sw128(uint32_t tile, const T* gmem, int64_t row_stride, int valid_rows,
                                                int thread) {
  copy_rows_async<kRows, D, kThreads>(tile, gmem, row_stride, 0, valid_rows, thread,
                                      [](int row, int chunk) { return sm90::sw128_offset(kRows, row, chunk); });
}

// The dynamic shared memory of a wgmma kernel, its start rounded up to 1024 bytes (the swizzle is
// on absolute address bits); the kernels reserve the slack.
__device__ __forceinline__ char* smem_aligned_1024(char* raw) {
  const uint32_t address = ptx::smem_address(raw);
  return raw + (((address + 1023u) & ~1023u) - address);
}

// C[m64 x n64] = A B^T over the head dim (kDSteps k16 steps), A and B K-major tiles in shared memory:
// A's rows from a_row0 of a tile of a_rows rows, B a whole tile of 64 rows. Waits for the result.
template <class T, int kDSteps>
__device__ __forceinline__ void wgmma_scores(float (&c)[8][4], uint32_t a_tile, int a_rows, int a_row0,
                                             uint32_t b_tile) {
  sm90::fence_registers(c);
  sm90::fence();
#pragma unroll
  for (int ks = 0; ks < kDSteps; ++ks)
    sm90::Wgmma<T, 64>::template ss<0>(c, sm90::k_major_desc(a_tile, a_rows, a_row0, ks),
                                       sm90::k_major_desc(b_tile, 64, 0, ks), ks > 0);
  sm90::commit_group();
  sm90::wait_group<0>();
  sm90::fence_registers(c);
}

// acc[m64 x nD] += P B with P (m64 x 64, accumulator layout) rounded to T as the register A operand
// and B a 64-row tile in shared memory read MN-major (its rows are the k dimension). Waits.
template <class T, int D>
__device__ __forceinline__ void wgmma_acc_pv(float (&acc)[D / 8][4], const float (&p)[8][4], uint32_t b_tile) {
  uint32_t pa[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    pa[i][0] = ptx::pack2<T>(p[2 * i][0], p[2 * i][1]);
    pa[i][1] = ptx::pack2<T>(p[2 * i][2], p[2 * i][3]);
    pa[i][2] = ptx::pack2<T>(p[2 * i + 1][0], p[2 * i + 1][1]);
    pa[i][3] = ptx::pack2<T>(p[2 * i + 1][2], p[2 * i + 1][3]);
  }
  sm90::fence_registers(pa);
  sm90::fence_registers(acc);
  sm90::fence();
#pragma unroll
  for (int i = 0; i < 4; ++i) sm90::Wgmma<T, D>::template rs<1>(acc, pa[i], sm90::mn_major_desc(b_tile, 64, i), true);
  sm90::commit_group();
  sm90::wait_group<0>();
  sm90::fence_registers(acc);
}

// The work of one CTA, as attention_fwd_mainloop: query block qb of head h, batch b, over the key
// tiles `tiles` lists. `smem` holds Traits::kSmemBytes bytes.
template <class Traits, class Tiles>
__device__ __forceinline__ void attention_fwd_mainloop_sm90(const BlockSparseFwdParams& p, int b, int h, int qb,
                                                            Tiles& tiles, char* smem_raw) {
  using T = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kTile = Traits::kKeyTile;
  constexpr int kThreads = Traits::kThreads;
  constexpr int kDTiles = D / 8;       // n8 tiles of the output
  constexpr int kNTiles = kTile / 8;   // n8 tiles of the scores
  constexpr int kDSteps = D / 16;      // k16 steps of Q K^T

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_row0 = warp * 16;          // this warp's rows in the query block
  const int wg_row0 = (warp / 4) * 64;      // its warpgroup's
  const int q0 = qb * Traits::kBlockQ;
  const FwdHeadRows<T> rows(p, b, h, q0);
  const T *q = rows.q, *k = rows.k, *v = rows.v;

  char* smem = smem_aligned_1024(smem_raw);
  const uint32_t smem_q = ptx::smem_address(smem);
  const uint32_t smem_k = smem_q + Traits::kQBytes;
  const uint32_t smem_v = smem_k + 2 * Traits::kTileBytes;

  float acc[kDTiles][4];
  zero(acc);
  OnlineSoftmax softmax;
  softmax.init();

  KeyTile tile;
  if (tiles.next(tile)) {
    const auto load_kv = [&](const KeyTile& t, int stage) {
      load_rows_sw128<kTile, D, kThreads>(smem_k + stage * Traits::kTileBytes, k + t.start * p.k_row_stride,
                                          p.k_row_stride, t.len, tid);
      load_rows_sw128<kTile, D, kThreads>(smem_v + stage * Traits::kTileBytes, v + t.start * p.v_row_stride,
                                          p.v_row_stride, t.len, tid);
    };
    load_rows_sw128<Traits::kBlockQ, D, kThreads>(smem_q, q, p.q_row_stride, p.seqlen_q - q0, tid);
    ptx::cp_async_commit();
    load_kv(tile, 0);
    ptx::cp_async_commit();

    const float scale_log2 = p.scale * kLog2e;
    const auto compute = [&](const KeyTile& t, int stage) {
      const uint32_t k_stage = smem_k + stage * Traits::kTileBytes;
      const uint32_t v_stage = smem_v + stage * Traits::kTileBytes;

      float s[kNTiles][4];
      zero(s);  // overwritten by the first step (accumulate false); zeroed so no register is read undefined
      wgmma_scores<T, kDSteps>(s, smem_q, Traits::kBlockQ, wg_row0, k_stage);
      scale_and_mask_scores(s, scale_log2, t.len, lane);
      float rescale[2];
      softmax.update(s, rescale);
      OnlineSoftmax::rescale_rows(acc, rescale);

      wgmma_acc_pv<T, D>(acc, s, v_stage);  // O += P V
    };
    for_each_tile_double_buffered(tiles, tile, load_kv, compute, [] { sm90::fence_async_proxy(); });
  }

  // Epilogue as in the mma.sync kernel, staged through the Q tile once every warpgroup is done
  // reading it.
  __syncthreads();
  store_fwd_rows<T, D>(p, b, h, q0, p.seqlen_q, warp_row0, lane, acc, softmax, reinterpret_cast<T*>(smem));
}

// grid (num_q_blocks, heads, batch), as the mma.sync kernel.
// Two warpgroups (block_q 128) get the whole register file: capped at 128 registers they spill.
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kWarpgroups == 1 ? 2 : 1)
    block_sparse_fwd_sm90_kernel(const __grid_constant__ BlockSparseFwdParams p) {
  extern __shared__ __align__(128) char smem[];  // aligned to 1024 in the mainloop
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  IndexListTiles<Traits::kKeyTile> tiles(p, b, h, qb);
  attention_fwd_mainloop_sm90<Traits>(p, b, h, qb, tiles, smem);
}

}  // namespace genaccel::attention
