// Block-sparse attention forward on tensor cores (FlashAttention-2 scheme, sm_80 / sm_90a).
// Torch-free device code; the launcher is csrc/cuda/attention/block_sparse/fwd.cu.
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
//
// Variable-size blocks (q_block_offsets / k_block_offsets, SVG2's clusters) have their own kernel,
// block_sparse_fwd_varblock_kernel, on the same mainloop: a CTA computes one row tile of kBlockQ rows
// of one query block (grid x = query block x row tile, the tile count from the largest block; a CTA
// whose tile starts past its block's end exits at once), rows past the block's end are zero-filled
// and not stored, and VarBlockTiles walks each run of adjacent selected key blocks' tokens in 64-key
// tiles, the last one partial (masked like the last uniform block); empty key blocks are skipped.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "genaccel/attention/block_sparse/params.h"
#include "genaccel/common/online_softmax.cuh"
#include "genaccel/common/tile_mma.cuh"

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

// Keys [start, start + len) of one tile; 0 < len <= kKeyTile.
struct KeyTile {
  int start;
  int len;
};

// Issues the copies of key tile t's K and V rows into stage `stage` of the double-buffered
// [kTile][D] shared tiles at smem_k and smem_v (rows past t.len zero-filled), kThreads threads
// cooperating; k and v point at key row 0 of their head.
template <int kTile, int D, int kThreads, class T>
__device__ __forceinline__ void load_key_tile(uint32_t smem_k, uint32_t smem_v, const T* k,
                                              int64_t k_row_stride, const T* v, int64_t v_row_stride,
                                              const KeyTile& t, int stage, int tid) {
  constexpr uint32_t kTileBytes = kTile * D * sizeof(T);
  load_rows_async<kTile, D, kThreads>(smem_k + stage * kTileBytes, k + t.start * k_row_stride,
                                      k_row_stride, 0, t.len, tid);
  load_rows_async<kTile, D, kThreads>(smem_v + stage * kTileBytes, v + t.start * v_row_stride,
                                      v_row_stride, 0, t.len, tid);
}

// Tile-list policy of the block-sparse op: the key blocks kv_indices[b', h', qb, 0..count) in plan
// order, each walked as block_k / kTile tiles and clipped to seqlen_k (the last block may be
// partial; its tiles that start past the end are skipped). Every thread of the CTA walks the same
// list, so the loop over it is uniform. The count is clamped to [0, max_kv_blocks] and entries
// outside [0, key blocks) are skipped, so that a plan taken on trust (SLA's check_plan=False) can
// never make the kernel read outside the plan, k or v.
template <int kTile>
class IndexListTiles {
 public:
  // `p` must outlive the policy; the kernel's __grid_constant__ params do, and reading sizes from
  // there instead of copying them keeps them out of registers.
  __device__ __forceinline__ IndexListTiles(const BlockSparseFwdParams& p, int b, int h, int qb)
      : p_(p),
        blocks_(p.kv_indices + b * p.idx_batch_stride + h * p.idx_head_stride +
                static_cast<int64_t>(qb) * p.max_kv_blocks),
        count_(min(max(p.kv_counts[b * p.cnt_batch_stride + h * p.cnt_head_stride + qb], 0), p.max_kv_blocks)),
        last_block_((p.seqlen_k - 1) / p.block_k) {}

  // Sets `tile` to the next tile and returns true, or returns false when the list is exhausted.
  __device__ __forceinline__ bool next(KeyTile& tile) {
    while (pos_ < count_) {
      const int block = __ldg(blocks_ + pos_);
      if (sub_ * kTile < p_.block_k && block >= 0 && block <= last_block_) {
        const int start = block * p_.block_k + sub_ * kTile;
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
  int last_block_;  // the last key block
  int pos_ = 0;     // index into blocks_
  int sub_ = 0;  // next tile within block blocks_[pos_]
};

// The variable-block policies below (and VarKeyMajorQueryTiles in bwd.cuh) are host-device so that
// tools/varblock_tiles_check.cu can run them on a CPU against a brute-force enumeration of the
// (query, key) pairs a plan computes. A read of plan data: through the read-only cache on the
// device, a plain load on the host.
GENACCEL_HOST_DEVICE __forceinline__ int32_t load_plan(const int32_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// Tokens of a block (or run of blocks) as the CUDA kernels use them: clamped into [0, n] with
// end >= begin, so that offsets taken on trust (check_plan=False) can give wrong numbers but never
// make a kernel touch a row outside q, k or v.
GENACCEL_HOST_DEVICE __forceinline__ TokenRange clamp_tokens(TokenRange r, int n) {
  const int begin = min(max(r.begin, 0), n);
  return {begin, min(max(r.end, begin), n)};
}

// The tokens of query block qb of (b, h), clamped (variable-size or uniform blocks).
GENACCEL_HOST_DEVICE __forceinline__ TokenRange query_tokens_clamped(const BlockSparseFwdParams& p, int b, int h, int qb) {
  return clamp_tokens(query_block_tokens(p, b, h, qb), p.seqlen_q);
}

// The tokens of key blocks [first, last) of (b, h), clamped; 0 <= first < last <= num_k_blocks.
GENACCEL_HOST_DEVICE __forceinline__ TokenRange key_tokens_clamped(const BlockSparseFwdParams& p, int b, int h, int first,
                                                         int last) {
  return clamp_tokens(key_blocks_tokens(p, b, h, first, last), p.seqlen_k);
}

// Tile-list policy for variable-size blocks (either side): the key blocks kv_indices[b', h', qb,
// 0..count) in plan order, a run of adjacent ones (c, c + 1, ...) merged into one token range,
// each range walked in kTile-key tiles, the last one partial; empty ranges give no tile. Like
// IndexListTiles, the count is clamped to [0, max_kv_blocks] and entries outside [0, num_k_blocks)
// are skipped; the token ranges are clamped (key_tokens_clamped). Uniform across the CTA.
template <int kTile>
class VarBlockTiles {
 public:
  GENACCEL_HOST_DEVICE __forceinline__ VarBlockTiles(const BlockSparseFwdParams& p, int b, int h, int qb)
      : p_(p),
        b_(b),
        h_(h),
        blocks_(p.kv_indices + b * p.idx_batch_stride + h * p.idx_head_stride +
                static_cast<int64_t>(qb) * p.max_kv_blocks),
        count_(min(max(p.kv_counts[b * p.cnt_batch_stride + h * p.cnt_head_stride + qb], 0), p.max_kv_blocks)) {}

  GENACCEL_HOST_DEVICE __forceinline__ bool next(KeyTile& tile) {
    while (cur_ >= end_) {
      if (pos_ >= count_) return false;
      const int first = load_plan(blocks_ + pos_++);
      if (first < 0 || first >= p_.num_k_blocks) continue;
      int last = first + 1;
      while (pos_ < count_ && last < p_.num_k_blocks && load_plan(blocks_ + pos_) == last) {
        ++last;
        ++pos_;
      }
      const TokenRange keys = key_tokens_clamped(p_, b_, h_, first, last);
      cur_ = keys.begin;
      end_ = keys.end;
    }
    tile.start = cur_;
    tile.len = min(kTile, end_ - cur_);
    cur_ += tile.len;
    return true;
  }

 private:
  const BlockSparseFwdParams& p_;
  int b_, h_;
  const int32_t* blocks_;
  int count_;
  int pos_ = 0;            // index into blocks_
  int cur_ = 0, end_ = 0;  // keys [cur_, end_) of the current run are left
};

// q (from query row q0), k and v of batch b and head h: the kv head of query head h under GQA.
template <class T>
struct FwdHeadRows {
  const T* q;
  const T* k;
  const T* v;

  __device__ __forceinline__ FwdHeadRows(const BlockSparseFwdParams& p, int b, int h, int q0) {
    const int kv_head = h / (p.heads / p.kv_heads);
    q = static_cast<const T*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride + q0 * p.q_row_stride;
    k = static_cast<const T*>(p.k) + b * p.k_batch_stride + kv_head * p.k_head_stride;
    v = static_cast<const T*>(p.v) + b * p.v_batch_stride + kv_head * p.v_head_stride;
  }
};

// One tile's scores (m16n8 accumulator layout) to log2 units, the keys at or past `len` masked to
// -inf. Scaling before the max keeps the max right for any sign of the scale.
template <int kNTiles>
__device__ __forceinline__ void scale_and_mask_scores(float (&s)[kNTiles][4], float scale_log2, int len, int lane) {
  const int col0 = 2 * (lane & 3);  // first score column of this lane in an n8 tile
#pragma unroll
  for (int j = 0; j < kNTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) s[j][c] *= scale_log2;
  if (len < 8 * kNTiles) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c)
        if (8 * j + col0 + (c & 1) >= len) s[j][c] = -INFINITY;
  }
}

// The forward's epilogue for one warp: its 16 rows from warp_row0 of the row tile at q0 (b, h) are
// normalised, rounded to T and stored through `staged` (shared memory that this warp alone uses, see
// store_warp_rows), with their lse; rows at or past q_end (seqlen_q, or the end of a variable-size
// query block) are not stored.
template <class T, int D>
__device__ __forceinline__ void store_fwd_rows(const BlockSparseFwdParams& p, int b, int h, int q0, int q_end,
                                               int warp_row0, int lane, const float (&acc)[D / 8][4],
                                               const OnlineSoftmax& softmax, T* staged) {
  float inv_sum[2], lse[2];
  softmax.finish(inv_sum, lse);
  T* out = static_cast<T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride + q0 * p.o_row_stride;
  store_warp_rows<T, D>(acc, inv_sum, staged, warp_row0, out, p.o_row_stride, q_end - q0, lane);
  const int lane_row = warp_row0 + lane / 4;
  if ((lane & 3) == 0) {
    float* lse_row = p.lse + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int q_row = q0 + lane_row + 8 * r;
      if (q_row < q_end) lse_row[q_row] = lse[r];
    }
  }
}

// The whole work of one CTA: the kBlockQ query rows from q0 of head h, batch b, over the key tiles
// `tiles` lists. Writes out rows [q0, q0 + kBlockQ) below q_end and their lse; rows whose list is
// empty get zeros and lse = -inf. `smem` holds Traits::kSmemBytes bytes.
template <class Traits, class Tiles>
__device__ __forceinline__ void attention_fwd_rows(const BlockSparseFwdParams& p, int b, int h, int q0, int q_end,
                                                   Tiles& tiles, char* smem) {
  using T = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kTile = Traits::kKeyTile;
  constexpr int kThreads = Traits::kThreads;
  constexpr int kDTiles = D / 8;        // n8 tiles of the output
  constexpr int kNTiles = kTile / 8;    // n8 tiles of the scores
  constexpr int kDSteps = D / 16;       // k16 steps of Q K^T

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_row0 = warp * 16;

  const FwdHeadRows<T> rows(p, b, h, q0);
  const T *q = rows.q, *k = rows.k, *v = rows.v;

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
      load_key_tile<kTile, D, kThreads>(smem_k, smem_v, k, p.k_row_stride, v, p.v_row_stride, t,
                                        stage, tid);
    };
    // Each warp loads its own 16 Q rows, so only a warp barrier stands between copy and ldmatrix.
    load_rows_async<16, D, 32>(smem_q, q, p.q_row_stride, warp_row0, q_end - q0, lane);
    ptx::cp_async_commit();
    load_kv(tile, 0);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();  // the Q group; K/V of tile 0 may still be in flight
    __syncwarp();

    const LaneOffsets<Traits::kRowBytes> lo(lane);
    uint32_t q_frag[kDSteps][4];
    load_a_fragments(q_frag, smem_q + warp_row0 * Traits::kRowBytes, lo);

    const float scale_log2 = p.scale * kLog2e;
    for_each_tile_double_buffered(tiles, tile, load_kv, [&](const KeyTile& t, int stage) {
      const uint32_t k_stage = smem_k + stage * Traits::kTileBytes;
      const uint32_t v_stage = smem_v + stage * Traits::kTileBytes;

      float s[kNTiles][4];
      zero(s);
      mma_a_bt<T, Traits::kRowBytes>(s, q_frag, k_stage, lo);

      scale_and_mask_scores(s, scale_log2, t.len, lane);
      float rescale[2];
      softmax.update(s, rescale);
      OnlineSoftmax::rescale_rows(acc, rescale);

      mma_acc_b<T, Traits::kRowBytes>(acc, s, v_stage, lo);  // O += P V
    });
  }

  // Epilogue, staged through this warp's own Q rows in shared memory (Q now lives in registers; no
  // other warp touches these rows).
  store_fwd_rows<T, D>(p, b, h, q0, q_end, warp_row0, lane, acc, softmax, reinterpret_cast<T*>(smem));
}

// Uniform blocks: the whole work of the CTA of query block qb (rows [qb * kBlockQ, ...) below
// seqlen_q).
template <class Traits, class Tiles>
__device__ __forceinline__ void attention_fwd_mainloop(const BlockSparseFwdParams& p, int b, int h,
                                                       int qb, Tiles& tiles, char* smem) {
  attention_fwd_rows<Traits>(p, b, h, qb * Traits::kBlockQ, p.seqlen_q, tiles, smem);
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

// Variable-size blocks (has_variable_blocks): the query rows of a CTA (64 when no query block is
// longer, else 128) and the row tiles per query block, from the largest block (p.block_q, at most
// seqlen_q); the grid's x is num_q_blocks * tiles_per_block, forward and dQ alike.
struct VarRowTiling {
  int block_q;
  int tiles_per_block;
};
GENACCEL_HOST_DEVICE inline VarRowTiling var_row_tiling(const BlockSparseFwdParams& p) {
  const int largest = p.block_q < p.seqlen_q ? p.block_q : (p.seqlen_q > 1 ? p.seqlen_q : 1);
  const int block_q = largest <= 64 ? 64 : 128;
  return {block_q, (largest + block_q - 1) / block_q};
}

// The row tile of a variable-size query block that CTA x of a variable-block grid computes: block
// x / tiles_per_block, rows from its start + (x % tiles_per_block) * kBlockQ up to its end. Empty
// (begin >= end) for a tile past the block's end.
template <int kBlockQ>
struct VarRowTile {
  int qb;
  int begin, end;

  GENACCEL_HOST_DEVICE __forceinline__ VarRowTile(const BlockSparseFwdParams& p, int b, int h, int x, int tiles_per_block) {
    qb = x / tiles_per_block;
    const TokenRange rows = query_tokens_clamped(p, b, h, qb);
    const int64_t start = rows.begin + static_cast<int64_t>(x % tiles_per_block) * kBlockQ;
    begin = start < rows.end ? static_cast<int>(start) : rows.end;
    end = rows.end;
  }
  GENACCEL_HOST_DEVICE __forceinline__ bool empty() const { return begin >= end; }
};

// Variable-size blocks: grid (num_q_blocks * tiles_per_block, heads, batch), tiles_per_block =
// ceil(largest query block / kBlockQ). A CTA whose row tile lies past its block's end returns before
// any barrier (the whole CTA alike).
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    block_sparse_fwd_varblock_kernel(const __grid_constant__ BlockSparseFwdParams p, int tiles_per_block) {
  extern __shared__ __align__(128) char smem[];
  const int h = blockIdx.y, b = blockIdx.z;
  const VarRowTile<Traits::kBlockQ> rt(p, b, h, blockIdx.x, tiles_per_block);
  if (rt.empty()) return;
  VarBlockTiles<Traits::kKeyTile> tiles(p, b, h, rt.qb);
  attention_fwd_rows<Traits>(p, b, h, rt.begin, rt.end, tiles, smem);
}

}  // namespace genaccel::attention
