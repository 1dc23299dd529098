// Block-sparse attention forward on tensor cores (FlashAttention-2 scheme, sm_80 / sm_90a).
// Torch-free device code; the launcher is csrc/cuda/attention/block_sparse_fwd.cu.
//
// One CTA computes one (query block, head, batch): each warp owns 16 query rows, keeps its Q
// fragment in registers and walks a list of 64-key tiles. K/V tiles are staged in shared memory
// with cp.async, double-buffered so that tile i+1 loads while tile i is computed. Per tile and warp:
// S = Q K^T (mma.sync m16n8k16, float32), online softmax in registers, O += P V with P taken from
// the S accumulators without a trip through shared memory.
//
// The mainloop does not know which key tiles it visits: a tile-list policy (`next(KeyTile&)`)
// says. IndexListTiles walks the planned kv_indices / kv_counts of the block-sparse op; other
// attention flavours (SLA, Radial, SVG2) plug their own policy into attention_fwd_mainloop and
// keep the same mainloop, as FlashInfer's attention variants do.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "genaccel/attention/block_sparse_params.h"
#include "genaccel/attention/online_softmax.cuh"
#include "genaccel/attention/sm80_mma.cuh"

namespace genaccel::attention {

// Compile-time shape of one forward kernel instance.
template <class T, int kHeadDim_, int kBlockQ_>
struct FwdTraits {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockQ = kBlockQ_;
  static constexpr int kKeyTile = 64;  // keys per shared-memory stage
  static constexpr int kWarps = kBlockQ / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowBytes = kHeadDim * static_cast<int>(sizeof(T));
  static constexpr int kQBytes = kBlockQ * kRowBytes;
  static constexpr int kTileBytes = kKeyTile * kRowBytes;
  // Q | K stage 0 | K stage 1 | V stage 0 | V stage 1
  static constexpr int kSmemBytes = kQBytes + 4 * kTileBytes;
  // Resident CTAs per SM that __launch_bounds__ asks register allocation to allow, aiming at 12
  // warps per SM at head dim 64 and 8 at head dim 128 (whose Q fragment and output accumulator need
  // ~230 registers); an 8-warp CTA gets 1. 16 warps at head dim 64 would cap registers at 128 per
  // thread, where ptxas spills.
  static constexpr int kMinBlocksPerSm = (kHeadDim == 64 ? 12 : 8) / kWarps;

  static_assert(sizeof(T) == 2, "16-bit inputs only (mma.sync m16n8k16 bf16 / f16)");
  static_assert(kHeadDim % 64 == 0, "rows must be whole 128-byte lines for the swizzle");
  static_assert(kBlockQ % 16 == 0 && kWarps <= 8, "a warp owns 16 query rows; at most 8 warps");
};

// Shared-memory layout of a [rows][kHeadDim] tile: row-major, with the 16-byte chunk index of each
// row XORed by (row % 8). ldmatrix reads eight rows at one chunk position per 8x8 matrix and a
// row is a multiple of 128 bytes, so without the XOR all eight addresses would hit the same four
// banks; with it they cover all 32. The same holds for the 16-byte cp.async writes, which eight
// consecutive threads issue along one row.
template <int kHeadDim>
__device__ __forceinline__ int swizzled_offset(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// Copies rows [row_begin, row_begin + kRows) of a [*][kHeadDim] global tile into the swizzled shared
// tile with cp.async, `kThreads` threads cooperating; rows at or past `valid_rows` are zero-filled
// and their global memory is never touched. Row 0 of `gmem` must be a valid row: it is the (unread)
// source address of the zero-filled copies.
template <int kRows, int kHeadDim, int kThreads, class T>
__device__ __forceinline__ void load_rows_async(uint32_t smem_tile, const T* gmem,
                                                int64_t row_stride, int row_begin, int valid_rows,
                                                int thread) {
  constexpr int kChunks = kHeadDim / 8;
  static_assert(kRows * kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int it = 0; it < kRows * kChunks / kThreads; ++it) {
    const int idx = it * kThreads + thread;
    const int row = row_begin + idx / kChunks;
    const int chunk = idx % kChunks;
    const bool valid = row < valid_rows;
    const T* src = valid ? gmem + row * row_stride + chunk * 8 : gmem;
    ptx::cp_async_16(smem_tile + swizzled_offset<kHeadDim>(row, chunk) * sizeof(T), src, valid);
  }
}

// Keys [start, start + len) of one tile; 0 < len <= kKeyTile.
struct KeyTile {
  int start;
  int len;
};

// Tile-list policy of the block-sparse op: the key blocks kv_indices[b', h', qb, 0..count) in plan
// order, each walked as block_k / kTile tiles and clipped to seqlen_k (the last block may be
// partial; its tiles that start past the end are skipped). Every thread of the CTA walks the same
// list, so the loop over it is uniform.
template <int kTile>
class IndexListTiles {
 public:
  // `p` must outlive the policy; the kernel's __grid_constant__ params do, and reading sizes from
  // there instead of copying them keeps them out of registers.
  __device__ __forceinline__ IndexListTiles(const BlockSparseFwdParams& p, int b, int h, int qb)
      : p_(p),
        blocks_(p.kv_indices + b * p.idx_batch_stride + h * p.idx_head_stride +
                static_cast<int64_t>(qb) * p.max_kv_blocks),
        count_(p.kv_counts[b * p.cnt_batch_stride + h * p.cnt_head_stride + qb]) {}

  // Sets `tile` to the next tile and returns true, or returns false when the list is exhausted.
  __device__ __forceinline__ bool next(KeyTile& tile) {
    while (pos_ < count_) {
      if (sub_ * kTile < p_.block_k) {
        const int start = __ldg(blocks_ + pos_) * p_.block_k + sub_ * kTile;
        if (start < p_.seqlen_k) {
          ++sub_;
          tile.start = start;
          tile.len = min(kTile, p_.seqlen_k - start);
          return true;
        }
      }
      ++pos_;
      sub_ = 0;
    }
    return false;
  }

 private:
  const BlockSparseFwdParams& p_;
  const int32_t* blocks_;
  int count_;
  int pos_ = 0;  // index into blocks_
  int sub_ = 0;  // next tile within block blocks_[pos_]
};

// The whole work of one CTA: query block qb of head h, batch b, over the key tiles `tiles` lists.
// Writes out rows [qb * kBlockQ, ...) below seqlen_q and their lse; a query block whose list is
// empty gets zeros and lse = -inf. `smem` holds Traits::kSmemBytes bytes.
template <class Traits, class Tiles>
__device__ __forceinline__ void attention_fwd_mainloop(const BlockSparseFwdParams& p, int b, int h,
                                                       int qb, Tiles& tiles, char* smem) {
  using T = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kTile = Traits::kKeyTile;
  constexpr int kThreads = Traits::kThreads;
  constexpr int kDTiles = D / 8;        // n8 tiles of the output
  constexpr int kNTiles = kTile / 8;    // n8 tiles of the scores
  constexpr int kDSteps = D / 16;       // k16 steps of Q K^T
  constexpr int kKeySteps = kTile / 16; // k16 steps of P V
  using Mma = ptx::Mma16816<T>;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_row0 = warp * 16;
  const int q0 = qb * Traits::kBlockQ;
  const int kv_head = h / (p.heads / p.kv_heads);

  const T* q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride +
               q0 * p.q_row_stride;
  const T* k = static_cast<const T*>(p.k) + b * p.k_batch_stride + kv_head * p.k_head_stride;
  const T* v = static_cast<const T*>(p.v) + b * p.v_batch_stride + kv_head * p.v_head_stride;

  const uint32_t smem_q = ptx::smem_address(smem);
  const uint32_t smem_k = smem_q + Traits::kQBytes;
  const uint32_t smem_v = smem_k + 2 * Traits::kTileBytes;

  float acc[kDTiles][4];
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
  OnlineSoftmax softmax;
  softmax.init();

  KeyTile tile;
  if (tiles.next(tile)) {
    const auto load_kv = [&](const KeyTile& t, int stage) {
      load_rows_async<kTile, D, kThreads>(smem_k + stage * Traits::kTileBytes,
                                          k + t.start * p.k_row_stride, p.k_row_stride, 0, t.len,
                                          tid);
      load_rows_async<kTile, D, kThreads>(smem_v + stage * Traits::kTileBytes,
                                          v + t.start * p.v_row_stride, p.v_row_stride, 0, t.len,
                                          tid);
    };
    // Each warp loads its own 16 Q rows, so only a warp barrier stands between copy and ldmatrix.
    load_rows_async<16, D, 32>(smem_q, q, p.q_row_stride, warp_row0, p.seqlen_q - q0, lane);
    ptx::cp_async_commit();
    load_kv(tile, 0);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();  // the Q group; K/V of tile 0 may still be in flight
    __syncwarp();

    // ldmatrix row addresses (byte offsets within a tile). Every row any lane addresses is
    // congruent to lane mod 8, so its swizzle is lane % 8; the chunk index of step i is
    // 2 * i + (a bit of the lane), and since the row base has zero low 7 bits the whole step
    // offset is `lane offset ^ (i * 32 bytes)`.
    //   Q (A operand) and V (B operand, transposed): lanes 0-15 rows 0-15 at chunk 2i, lanes 16-31
    //   rows 0-15 at chunk 2i + 1 -> registers {rows 0-7 | rows 8-15} x {chunk lo | chunk hi}.
    //   K (B operand): lanes 0-7 keys 0-7 chunk lo, 8-15 keys 0-7 chunk hi, 16-23 keys 8-15 chunk
    //   lo, 24-31 keys 8-15 chunk hi -> registers {b0, b1} of n8 tile 0, then of n8 tile 1.
    const uint32_t swz = lane & 7;
    const uint32_t a_off = (lane & 15) * Traits::kRowBytes + (((lane >> 4) ^ swz) << 4);
    const uint32_t k_off = ((lane & 7) + ((lane >> 4) << 3)) * Traits::kRowBytes +
                           ((((lane >> 3) & 1) ^ swz) << 4);

    uint32_t q_frag[kDSteps][4];
#pragma unroll
    for (int i = 0; i < kDSteps; ++i)
      ptx::ldmatrix_x4(q_frag[i], smem_q + warp_row0 * Traits::kRowBytes + (a_off ^ (i << 5)));

    const float scale_log2 = p.scale * kLog2e;
    const int col0 = 2 * (lane & 3);  // first score column of this lane in an n8 tile
    for (int stage = 0;; stage ^= 1) {
      KeyTile next_tile;
      const bool more = tiles.next(next_tile);
      if (more) {
        // Stage ^ 1 was last read in the previous iteration, which ended with __syncthreads.
        load_kv(next_tile, stage ^ 1);
        ptx::cp_async_commit();
        ptx::cp_async_wait<1>();
      } else {
        ptx::cp_async_wait<0>();
      }
      __syncthreads();  // this stage's copies by every thread are visible

      const uint32_t k_stage = smem_k + stage * Traits::kTileBytes;
      const uint32_t v_stage = smem_v + stage * Traits::kTileBytes;

      float s[kNTiles][4];
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int i = 0; i < kDSteps; ++i) {
#pragma unroll
        for (int n = 0; n < kNTiles / 2; ++n) {
          uint32_t kb[4];
          ptx::ldmatrix_x4(kb, k_stage + n * 16 * Traits::kRowBytes + (k_off ^ (i << 5)));
          Mma::run(s[2 * n], q_frag[i], kb[0], kb[1]);
          Mma::run(s[2 * n + 1], q_frag[i], kb[2], kb[3]);
        }
      }

      // Scaling before the max keeps the max right for any sign of the scale.
#pragma unroll
      for (int j = 0; j < kNTiles; ++j)
#pragma unroll
        for (int c = 0; c < 4; ++c) s[j][c] *= scale_log2;
      if (tile.len < kTile) {
#pragma unroll
        for (int j = 0; j < kNTiles; ++j)
#pragma unroll
          for (int c = 0; c < 4; ++c)
            if (8 * j + col0 + (c & 1) >= tile.len) s[j][c] = -INFINITY;
      }

      float rescale[2];
      softmax.update(s, rescale);
      OnlineSoftmax::rescale_rows(acc, rescale);

      // P (16 x 16 per key step) as an A operand: the C layout of two adjacent n8 score tiles is the
      // A layout of one k16 step, so the registers are only rounded and packed.
#pragma unroll
      for (int i = 0; i < kKeySteps; ++i) {
        const uint32_t pa[4] = {ptx::pack2<T>(s[2 * i][0], s[2 * i][1]),
                                ptx::pack2<T>(s[2 * i][2], s[2 * i][3]),
                                ptx::pack2<T>(s[2 * i + 1][0], s[2 * i + 1][1]),
                                ptx::pack2<T>(s[2 * i + 1][2], s[2 * i + 1][3])};
#pragma unroll
        for (int d = 0; d < kDTiles / 2; ++d) {
          uint32_t vb[4];
          ptx::ldmatrix_x4_trans(vb, v_stage + i * 16 * Traits::kRowBytes + (a_off ^ (d << 5)));
          Mma::run(acc[2 * d], pa, vb[0], vb[1]);
          Mma::run(acc[2 * d + 1], pa, vb[2], vb[3]);
        }
      }

      if (!more) break;
      __syncthreads();  // every warp is done with this stage before the next iteration refills it
      tile = next_tile;
    }
  }

  // Epilogue: normalise, round to T, stage through this warp's own Q rows in shared memory (Q now
  // lives in registers; no other warp touches these rows) and store 16-byte chunks row by row.
  float inv_sum[2], lse[2];
  softmax.finish(inv_sum, lse);
  T* staged = reinterpret_cast<T*>(smem);
  const int lane_row = warp_row0 + lane / 4;
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = lane_row + 8 * r;
      *reinterpret_cast<uint32_t*>(staged + swizzled_offset<D>(row, j) + 2 * (lane & 3)) =
          ptx::pack2<T>(acc[j][2 * r] * inv_sum[r], acc[j][2 * r + 1] * inv_sum[r]);
    }
  }
  __syncwarp();

  T* out = static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride;
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int it = 0; it < 16 * kChunks / 32; ++it) {
    const int idx = it * 32 + lane;
    const int row = warp_row0 + idx / kChunks;
    const int chunk = idx % kChunks;
    const int q_row = q0 + row;
    if (q_row < p.seqlen_q)
      *reinterpret_cast<uint4*>(out + q_row * p.o_row_stride + chunk * 8) =
          *reinterpret_cast<const uint4*>(staged + swizzled_offset<D>(row, chunk));
  }
  if ((lane & 3) == 0) {
    float* lse_row = p.lse + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q_row = q0 + lane_row + 8 * r;
      if (q_row < p.seqlen_q) lse_row[q_row] = lse[r];
    }
  }
}

// grid (num_q_blocks, heads, batch): consecutive CTAs are query blocks of one head, so they share
// the head's K/V in L2.
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    block_sparse_fwd_kernel(const __grid_constant__ BlockSparseFwdParams p) {
  extern __shared__ __align__(128) char smem[];
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  IndexListTiles<Traits::kKeyTile> tiles(p, b, h, qb);
  attention_fwd_mainloop<Traits>(p, b, h, qb, tiles, smem);
}

}  // namespace genaccel::attention
