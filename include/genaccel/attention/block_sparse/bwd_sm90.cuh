// Block-sparse attention backward on Hopper's warpgroup tensor cores (wgmma, sm_90a). Torch-free
// device code; the launcher is csrc/cuda/attention/block_sparse/bwd.cu, which runs these instead of
// the mma.sync kernels (bwd.cuh) on sm_90 with backend="sm90".
//
// The equations, work split, tile-list policies and epilogues of bwd.cuh; the products
// are wgmma with the operands as in block_sparse_fwd_sm90.cuh: scores from two K-major tiles in
// shared memory, the accumulating products (dV += P^T dO, dK += dS^T Q, dQ += dS K) with P or dS
// from registers and the other tile read MN-major. Each product waits for its own completion.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "genaccel/attention/block_sparse/bwd.cuh"
#include "genaccel/attention/block_sparse/fwd_sm90.cuh"
#include "genaccel/common/sm90_wgmma.cuh"

namespace genaccel::attention {

template <class T, int kHeadDim_>
struct Sm90DkDvTraits {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kTile = 64;  // keys of a CTA (one warpgroup); queries of one stage
  static constexpr int kThreads = 128;
  static constexpr int kTileBytes = kTile * kHeadDim * 2;
  // 1024 bytes of alignment slack, then K | V | Q stage 0 | Q stage 1 | dO stage 0 | dO stage 1 |
  // lse2 x 2 stages | delta x 2 stages.
  static constexpr int kRowStatsOffset = 6 * kTileBytes;
  static constexpr int kSmemBytes = 1024 + kRowStatsOffset + 4 * kTile * static_cast<int>(sizeof(float));
  static_assert(sizeof(T) == 2 && (kHeadDim == 64 || kHeadDim == 128), "16-bit inputs, head dim 64 or 128");
};

// The forward's shape plus a dO tile beside Q: Q | dO | K stage 0 | K stage 1 | V stage 0 | V stage 1.
template <class T, int kHeadDim_, int kBlockQ_>
struct Sm90DqTraits : Sm90FwdTraits<T, kHeadDim_, kBlockQ_> {
  static constexpr int kSmemBytes = Sm90FwdTraits<T, kHeadDim_, kBlockQ_>::kSmemBytes + kBlockQ_ * kHeadDim_ * 2;
};

// grid (ceil(seqlen_k / 64), kv_heads, batch), as block_sparse_bwd_dkdv_kernel.
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 2)
    block_sparse_bwd_dkdv_sm90_kernel(const __grid_constant__ BlockSparseBwdCudaParams p) {
  using T = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kTile = Traits::kTile;
  constexpr int kThreads = Traits::kThreads;
  constexpr int kTileBytes = Traits::kTileBytes;
  extern __shared__ __align__(128) char smem_raw[];
  char* smem = smem_aligned_1024(smem_raw);
  const BlockSparseFwdParams& f = p.bwd.fwd;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_row0 = warp * 16;
  const int kv_head = blockIdx.y, b = blockIdx.z;
  const int k0 = blockIdx.x * kTile;

  const DkDvTile<Traits> kt(f, smem, b, kv_head, k0);

  float dk[D / 8][4], dv[D / 8][4];
  zero(dk);
  zero(dv);

  KeyMajorQueryTiles<kTile> tiles(p, b, kv_head, k0 / f.block_k);
  QueryTile tile;
  if (tiles.next(tile)) {
    const auto load_queries = [&](const QueryTile& t, int stage) {
      load_rows_sw128<kTile, D, kThreads>(kt.smem_q + stage * kTileBytes, kt.q_rows(p, b, t), f.q_row_stride, t.len,
                                          tid);
      load_rows_sw128<kTile, D, kThreads>(kt.smem_do + stage * kTileBytes, kt.do_rows(p, b, t),
                                          p.bwd.do_row_stride, t.len, tid);
      load_query_stats<kTile>(p, b, t, tid, kt.lse2_s + stage * kTile, kt.delta_s + stage * kTile);
    };
    // K and V are read by the whole warpgroup: all threads load them.
    load_rows_sw128<kTile, D, kThreads>(kt.smem_k, kt.k, f.k_row_stride, f.seqlen_k - k0, tid);
    load_rows_sw128<kTile, D, kThreads>(kt.smem_v, kt.v, f.v_row_stride, f.seqlen_k - k0, tid);
    ptx::cp_async_commit();
    load_queries(tile, 0);
    ptx::cp_async_commit();

    const float scale_log2 = f.scale * kLog2e;
    const auto compute = [&](const QueryTile&, int stage) {
      const uint32_t q_stage = kt.smem_q + stage * kTileBytes;
      const uint32_t do_stage = kt.smem_do + stage * kTileBytes;
      const float* lse2 = kt.lse2_s + stage * kTile;
      const float* delta = kt.delta_s + stage * kTile;

      // P^T (keys x queries) = exp2(K Q^T * scale * log2(e) - lse2[query]).
      float s[kTile / 8][4];
      zero(s);
      wgmma_scores<T, D / 16>(s, kt.smem_k, kTile, 0, q_stage);
      transposed_probabilities(s, scale_log2, lse2, lane);

      // dP^T = V dO^T; dV += P^T dO; dS^T = P^T * (dP^T - delta[query]); dK += dS^T Q.
      float ds[kTile / 8][4];
      zero(ds);
      wgmma_scores<T, D / 16>(ds, kt.smem_v, kTile, 0, do_stage);
      wgmma_acc_pv<T, D>(dv, s, do_stage);
      transposed_dscores(ds, s, delta, lane);
      wgmma_acc_pv<T, D>(dk, ds, q_stage);
    };
    for_each_tile_double_buffered(tiles, tile, load_queries, compute, [] { sm90::fence_async_proxy(); });
  }

  // Staged through the K and V tiles once the warpgroup is done reading them.
  __syncthreads();
  store_dkdv_rows<T, D, kTile>(p, b, kv_head, k0, warp_row0, lane, dk, dv, reinterpret_cast<T*>(smem));
}

// grid (num_q_blocks, heads, batch), as block_sparse_bwd_dq_kernel.
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kWarpgroups == 1 ? 2 : 1)
    block_sparse_bwd_dq_sm90_kernel(const __grid_constant__ BlockSparseBwdCudaParams p) {
  using T = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kTile = Traits::kKeyTile;
  constexpr int kThreads = Traits::kThreads;
  extern __shared__ __align__(128) char smem_raw[];
  char* smem = smem_aligned_1024(smem_raw);
  const BlockSparseFwdParams& f = p.bwd.fwd;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_row0 = warp * 16;
  const int wg_row0 = (warp / 4) * 64;
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int q0 = qb * Traits::kBlockQ;

  const FwdHeadRows<T> rows(f, b, h, q0);
  const T* dout = static_cast<const T*>(p.bwd.dout) + b * p.bwd.do_batch_stride + h * p.bwd.do_head_stride +
                  q0 * p.bwd.do_row_stride;

  const uint32_t smem_q = ptx::smem_address(smem);
  const uint32_t smem_do = smem_q + Traits::kQBytes;
  const uint32_t smem_k = smem_do + Traits::kQBytes;        // 2 stages
  const uint32_t smem_v = smem_k + 2 * Traits::kTileBytes;  // 2 stages

  float dq[D / 8][4];
  zero(dq);

  IndexListTiles<kTile> tiles(f, b, h, qb);
  KeyTile tile;
  if (tiles.next(tile)) {
    const auto load_kv = [&](const KeyTile& t, int stage) {
      load_rows_sw128<kTile, D, kThreads>(smem_k + stage * Traits::kTileBytes, rows.k + t.start * f.k_row_stride,
                                          f.k_row_stride, t.len, tid);
      load_rows_sw128<kTile, D, kThreads>(smem_v + stage * Traits::kTileBytes, rows.v + t.start * f.v_row_stride,
                                          f.v_row_stride, t.len, tid);
    };
    load_rows_sw128<Traits::kBlockQ, D, kThreads>(smem_q, rows.q, f.q_row_stride, f.seqlen_q - q0, tid);
    load_rows_sw128<Traits::kBlockQ, D, kThreads>(smem_do, dout, p.bwd.do_row_stride, f.seqlen_q - q0, tid);
    ptx::cp_async_commit();
    load_kv(tile, 0);
    ptx::cp_async_commit();

    float lse2[2], delta[2];
    load_row_stats(p, b, h, q0, f.seqlen_q, warp_row0, lane, lse2, delta);

    const float scale_log2 = f.scale * kLog2e;
    const auto compute = [&](const KeyTile& t, int stage) {
      const uint32_t k_stage = smem_k + stage * Traits::kTileBytes;
      const uint32_t v_stage = smem_v + stage * Traits::kTileBytes;

      // P = exp2(Q K^T * scale * log2(e) - lse2[row]), 0 past seqlen_k; element c is row c / 2.
      float s[kTile / 8][4];
      zero(s);
      wgmma_scores<T, D / 16>(s, smem_q, Traits::kBlockQ, wg_row0, k_stage);
      row_probabilities(s, scale_log2, lse2, t.len, lane);

      // dS = P * (dO V^T - delta[row]); dQ += dS K.
      float ds[kTile / 8][4];
      zero(ds);
      wgmma_scores<T, D / 16>(ds, smem_do, Traits::kBlockQ, wg_row0, v_stage);
      row_dscores(ds, s, delta);
      wgmma_acc_pv<T, D>(dq, ds, k_stage);
    };
    for_each_tile_double_buffered(tiles, tile, load_kv, compute, [] { sm90::fence_async_proxy(); });
  }

  // Staged through the Q tile once every warpgroup is done reading it.
  __syncthreads();
  store_dq_rows<T, D>(p, b, h, q0, f.seqlen_q, warp_row0, lane, dq, reinterpret_cast<T*>(smem));
}

}  // namespace genaccel::attention
