// Block-sparse attention backward on tensor cores (FlashAttention-2's equations, sm_80 / sm_90a).
// Torch-free device code; the launcher is csrc/cuda/attention/block_sparse/bwd.cu.
//
// With P = exp(scale * Q K^T - lse) recomputed from the forward's lse and delta = rowsum(dO * O):
//   dV = P^T dO,   dS = P * (dO V^T - delta),   dK = scale * dS^T Q,   dQ = scale * dS K,
// summed over the planned (query block, key block) pairs only. Two kernels, neither with atomics,
// so the result is deterministic:
//  - dK/dV: one CTA per (64-key tile, kv head, batch). Each warp owns 16 keys; the CTA walks the
//    64-query tiles of every query block that lists the tile's key block (the key-major plan), over
//    all query heads of the kv head (GQA sums there), with Q, dO, lse and delta double-buffered.
//  - dQ: one CTA per (query block, head, batch), walking the plan's 64-key tiles like the forward.
// Each product is one of the warp GEMMs of tile_mma.cuh; P and dS go from accumulator registers
// straight into the next product. K/V rows past seqlen_k are zero-filled: in the dK/dV kernel they
// only reach dK/dV rows that are never stored; the dQ kernel zeroes their P (exp(0 - lse) need not be
// small, and rounded to T it could overflow, making inf * 0 = NaN in dS K).
//
// Variable-size blocks (q_block_offsets / k_block_offsets) have their own instances of both kernels,
// still without atomics:
//  - dK/dV (block_sparse_bwd_dkdv_varblock_kernel): the same grid, one CTA per 64-key tile of a kv
//    head. Per query head of the kv head, the CTA finds the key blocks whose tokens meet its tile
//    (a binary search in that head's k offsets; a tile may meet several small blocks, and each query
//    head may cut its keys differently), and for each walks the query blocks that list it (the
//    key-major plan) as 64-query tiles of their token ranges; the tile's keys outside that key block
//    get P = dS = 0 (VarQueryTile::key_begin / key_end), and a warp whose 16 keys all lie outside
//    skips the tile.
//  - dQ (block_sparse_bwd_dq_varblock_kernel): grid and row tiles as the variable-block forward, the
//    key tiles of VarBlockTiles.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "genaccel/attention/block_sparse/fwd.cuh"
#include "genaccel/attention/block_sparse/params.h"
#include "genaccel/common/online_softmax.cuh"
#include "genaccel/common/tile_mma.cuh"

namespace genaccel::attention {

// lse in log2 units for P = exp2(s * scale * log2(e) - lse2). A row without keys (lse = -inf) and a
// row past the sequence end (valid = false) get +inf, so that every P of theirs is exactly 0.
__device__ __forceinline__ float lse_log2_or_inf(float lse, bool valid) {
  return valid && lse != -INFINITY ? lse * kLog2e : INFINITY;
}

// The dK/dV kernels' per-query statistics of query tile t, thread `tid` < kTile for query tid:
// lse2 (lse_log2_or_inf) and delta into this stage's rows of shared memory, with plain loads
// (visible after the next barrier).
template <int kTile, class Params, class Tile>
__device__ __forceinline__ void load_query_stats(const Params& p, int b, const Tile& t, int tid, float* lse2,
                                                 float* delta) {
  const BlockSparseFwdParams& f = p.bwd.fwd;
  if (tid < kTile) {
    const int64_t row = (static_cast<int64_t>(b) * f.heads + t.head) * f.seqlen_q + t.start + tid;
    const bool valid = tid < t.len;
    lse2[tid] = lse_log2_or_inf(valid ? f.lse[row] : 0.f, valid);
    delta[tid] = valid ? p.bwd.delta[row] : 0.f;
  }
}

// The dQ kernels' statistics of this lane's two rows (lane / 4 and lane / 4 + 8 from warp_row0 of
// the row tile at q0); rows at or past q_end (seqlen_q, or a variable-size block's end) are invalid.
template <class Params>
__device__ __forceinline__ void load_row_stats(const Params& p, int b, int h, int q0, int q_end, int warp_row0,
                                               int lane, float (&lse2)[2], float (&delta)[2]) {
  const BlockSparseFwdParams& f = p.bwd.fwd;
  const int64_t row0 = (static_cast<int64_t>(b) * f.heads + h) * f.seqlen_q;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int q_row = q0 + warp_row0 + lane / 4 + 8 * r;
    const bool valid = q_row < q_end;
    lse2[r] = lse_log2_or_inf(valid ? f.lse[row0 + q_row] : 0.f, valid);
    delta[r] = valid ? p.bwd.delta[row0 + q_row] : 0.f;
  }
}

// dK/dV: P^T (keys x queries, accumulator layout) = exp2(s * scale_log2 - lse2[query]) in place, then
// (second call) dS^T = P^T * (dP^T - delta[query]) into ds; the query is the column.
template <int kNTiles>
__device__ __forceinline__ void transposed_probabilities(float (&s)[kNTiles][4], float scale_log2, const float* lse2,
                                                         int lane) {
  const int col0 = 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < kNTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) s[j][c] = exp2_approx(fmaf(s[j][c], scale_log2, -lse2[8 * j + col0 + (c & 1)]));
}

template <int kNTiles>
__device__ __forceinline__ void transposed_dscores(float (&ds)[kNTiles][4], const float (&p)[kNTiles][4],
                                                   const float* delta, int lane) {
  const int col0 = 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < kNTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) ds[j][c] = p[j][c] * (ds[j][c] - delta[8 * j + col0 + (c & 1)]);
}

// dQ: P (queries x keys) = exp2(s * scale_log2 - lse2[row]) in place, 0 for keys at or past `len`
// (element c is row c / 2); then dS = P * (dP - delta[row]) into ds.
template <int kNTiles>
__device__ __forceinline__ void row_probabilities(float (&s)[kNTiles][4], float scale_log2, const float (&lse2)[2],
                                                  int len, int lane) {
  const int col0 = 2 * (lane & 3);
#pragma unroll
  for (int j = 0; j < kNTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c)
      s[j][c] = 8 * j + col0 + (c & 1) < len ? exp2_approx(fmaf(s[j][c], scale_log2, -lse2[c / 2])) : 0.f;
}

// Variable-size key blocks in the dK/dV kernel: zeroes the rows (keys, relative to the warp's first)
// of a 16-row accumulator outside [lo, hi); element c of a lane is row lane / 4 + 8 * (c / 2).
template <int kNTiles>
__device__ __forceinline__ void zero_rows_outside(float (&x)[kNTiles][4], int lo, int hi, int lane) {
  const int r0 = lane / 4;
  const bool keep[2] = {r0 >= lo && r0 < hi, r0 + 8 >= lo && r0 + 8 < hi};
#pragma unroll
  for (int j = 0; j < kNTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) x[j][c] = keep[c / 2] ? x[j][c] : 0.f;
}

template <int kNTiles>
__device__ __forceinline__ void row_dscores(float (&ds)[kNTiles][4], const float (&p)[kNTiles][4],
                                            const float (&delta)[2]) {
#pragma unroll
  for (int j = 0; j < kNTiles; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) ds[j][c] = p[j][c] * (ds[j][c] - delta[c / 2]);
}

// The dK/dV kernels' epilogue for one warp: dK (times the softmax scale) and dV rows from warp_row0 of
// key tile k0, staged through `staged` (2 * kTile rows of D that only this warp's rows use).
template <class T, int D, int kTile, class Params>
__device__ __forceinline__ void store_dkdv_rows(const Params& p, int b, int kv_head, int k0, int warp_row0, int lane,
                                                const float (&dk)[D / 8][4], const float (&dv)[D / 8][4], T* staged) {
  const BlockSparseFwdParams& f = p.bwd.fwd;
  const int64_t out_off = ((static_cast<int64_t>(b) * f.kv_heads + kv_head) * f.seqlen_k + k0) * D;
  const float dk_scale[2] = {f.scale, f.scale}, one[2] = {1.f, 1.f};
  store_warp_rows<T, D>(dk, dk_scale, staged, warp_row0, static_cast<T*>(p.bwd.dk) + out_off, D, f.seqlen_k - k0,
                        lane);
  store_warp_rows<T, D>(dv, one, staged + kTile * D, warp_row0, static_cast<T*>(p.bwd.dv) + out_off, D,
                        f.seqlen_k - k0, lane);
}

// The dQ kernels' epilogue for one warp: dQ (times the softmax scale) rows from warp_row0 of the row
// tile at q0, below q_end, staged through `staged`.
template <class T, int D, class Params>
__device__ __forceinline__ void store_dq_rows(const Params& p, int b, int h, int q0, int q_end, int warp_row0,
                                              int lane, const float (&dq)[D / 8][4], T* staged) {
  const BlockSparseFwdParams& f = p.bwd.fwd;
  const float dq_scale[2] = {f.scale, f.scale};
  T* out = static_cast<T*>(p.bwd.dq) + (static_cast<int64_t>(b) * f.heads + h) * f.seqlen_q * D +
           static_cast<int64_t>(q0) * D;
  store_warp_rows<T, D>(dq, dq_scale, staged, warp_row0, out, D, q_end - q0, lane);
}

template <class T, int kHeadDim_>
struct DkDvTraits {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kTile = 64;  // keys of a CTA; queries of one stage
  static constexpr int kWarps = kTile / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowBytes = kHeadDim * static_cast<int>(sizeof(T));
  static constexpr int kTileBytes = kTile * kRowBytes;
  // K | V | Q stage 0 | Q stage 1 | dO stage 0 | dO stage 1 | lse2 x 2 stages | delta x 2 stages
  static constexpr int kRowStatsOffset = 6 * kTileBytes;
  static constexpr int kSmemBytes = kRowStatsOffset + 4 * kTile * static_cast<int>(sizeof(float));
  // dK and dV accumulators (kHeadDim / 2 floats per thread) plus two 16 x 64 score tiles: 2 CTAs
  // per SM leave 255 registers per thread; asking for 3 at head dim 64 (168) makes ptxas spill.
  static constexpr int kMinBlocksPerSm = 2;
  static_assert(sizeof(T) == 2 && kHeadDim % 64 == 0, "16-bit inputs, rows of whole 128-byte lines");
};

template <class T, int kHeadDim_, int kBlockQ_>
struct DqTraits {
  using Element = T;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockQ = kBlockQ_;
  static constexpr int kKeyTile = 64;
  static constexpr int kWarps = kBlockQ / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowBytes = kHeadDim * static_cast<int>(sizeof(T));
  static constexpr int kQBytes = kBlockQ * kRowBytes;
  static constexpr int kTileBytes = kKeyTile * kRowBytes;
  // Q | dO | K stage 0 | K stage 1 | V stage 0 | V stage 1
  static constexpr int kSmemBytes = 2 * kQBytes + 4 * kTileBytes;
  static constexpr int kMinBlocksPerSm = (kHeadDim == 64 ? 12 : 8) / kWarps;
  static_assert(sizeof(T) == 2 && kHeadDim % 64 == 0, "16-bit inputs, rows of whole 128-byte lines");
  static_assert(kBlockQ % 16 == 0 && kWarps <= 8, "a warp owns 16 query rows; at most 8 warps");
};

// Queries [start, start + len) of head `head`; 0 < len <= kTile.
struct QueryTile {
  int head;
  int start;
  int len;
};

// Tile-list policy of the dK/dV kernel: for key block kb of kv head `kv_head`, every query head of
// that kv head in turn, and per head the query blocks of the key-major plan, each walked as
// block_q / kTile tiles clipped to seqlen_q. Uniform across the CTA, like IndexListTiles.
template <int kTile>
class KeyMajorQueryTiles {
 public:
  using Tile = QueryTile;

  __device__ __forceinline__ KeyMajorQueryTiles(const BlockSparseBwdCudaParams& p, int b,
                                                int kv_head, int kb)
      : p_(p), b_(b), kb_(kb) {
    const int group = p.bwd.fwd.heads / p.bwd.fwd.kv_heads;
    head_ = kv_head * group;
    head_end_ = head_ + group;
    open_head();
  }

  __device__ __forceinline__ bool next(QueryTile& tile) {
    const BlockSparseFwdParams& f = p_.bwd.fwd;
    for (;;) {
      while (pos_ < end_) {
        if (sub_ * kTile < f.block_q) {
          const int start = __ldg(list_ + pos_) * f.block_q + sub_ * kTile;
          if (start < f.seqlen_q) {
            ++sub_;
            tile.head = head_;
            tile.start = start;
            tile.len = min(kTile, f.seqlen_q - start);
            return true;
          }
        }
        ++pos_;
        sub_ = 0;
      }
      if (++head_ >= head_end_) return false;
      open_head();
    }
  }

 private:
  __device__ __forceinline__ void open_head() {
    const KeyMajorPlan& plan = p_.plan;
    const int32_t* offsets =
        plan.q_offsets + b_ * plan.off_batch_stride + head_ * plan.off_head_stride + kb_;
    pos_ = __ldg(offsets);
    end_ = __ldg(offsets + 1);
    list_ = plan.q_list + b_ * plan.list_batch_stride + head_ * plan.list_head_stride;
    sub_ = 0;
  }

  const BlockSparseBwdCudaParams& p_;
  int b_, kb_;
  int head_, head_end_;
  const int32_t* list_;
  int pos_, end_;  // entries [pos_, end_) of list_ are left for head_
  int sub_;        // next tile within query block list_[pos_]
};

// A query tile of the variable-block dK/dV kernel: queries [start, start + len) of head `head`
// (0 < len <= kTile), and the keys [key_begin, key_end) of the CTA's key tile (relative to its first
// key) that lie in the key block these queries select; the tile's other keys get no gradient from them.
struct VarQueryTile {
  int head;
  int start;
  int len;
  int key_begin, key_end;
};

// Tile-list policy of the variable-block dK/dV kernel for the key tile [k0, k0 + kTile) of kv head
// `kv_head` (clipped to seqlen_k): for every query head of the kv head in turn, every key block of
// that head that meets the tile (ascending; the first found by binary search in the head's key
// offsets, or k0 / block_k for uniform key blocks), and per key block the query blocks of the
// key-major plan, each walked as kTile-query tiles of its token range. Uniform across the CTA. Plan
// entries and offsets taken on trust stay in range: block ids from the key-major lists are clamped
// by the runner, token ranges here (query_tokens_clamped / key_tokens_clamped).
template <int kTile>
class VarKeyMajorQueryTiles {
 public:
  using Tile = VarQueryTile;

  GENACCEL_HOST_DEVICE __forceinline__ VarKeyMajorQueryTiles(const BlockSparseBwdCudaParams& p, int b, int kv_head, int k0)
      : p_(p),
        b_(b),
        k0_(k0),
        k1_(static_cast<int>(min(static_cast<int64_t>(k0) + kTile, static_cast<int64_t>(p.bwd.fwd.seqlen_k)))) {
    const int group = p.bwd.fwd.heads / p.bwd.fwd.kv_heads;
    head_ = kv_head * group;
    head_end_ = head_ + group;
    open_head();
  }

  GENACCEL_HOST_DEVICE __forceinline__ bool next(VarQueryTile& tile) {
    const BlockSparseFwdParams& f = p_.bwd.fwd;
    for (;;) {
      if (q_cur_ < q_end_) {
        tile.head = head_;
        tile.start = q_cur_;
        tile.len = min(kTile, q_end_ - q_cur_);
        tile.key_begin = key_begin_;
        tile.key_end = key_end_;
        q_cur_ += tile.len;
        return true;
      }
      if (pos_ < end_) {  // the next query block that lists the open key block
        const TokenRange rows = query_tokens_clamped(f, b_, head_, load_plan(list_ + pos_++));
        q_cur_ = rows.begin;
        q_end_ = rows.end;
        continue;
      }
      if (open_block(block_ + 1)) continue;
      if (++head_ >= head_end_) return false;
      open_head();
    }
  }

 private:
  // The first key block of head_ that ends after k0: the tile's first block, skipping empty ones.
  GENACCEL_HOST_DEVICE __forceinline__ int first_block() const {
    const BlockSparseFwdParams& f = p_.bwd.fwd;
    if (f.k_offsets == nullptr) return k0_ / f.block_k;
    const int32_t* o = f.k_offsets + b_ * f.koff_batch_stride + head_ * f.koff_head_stride;
    int lo = 0, hi = f.num_k_blocks;  // the first c in [lo, hi) with o[c + 1] > k0, else hi
    while (lo < hi) {
      const int mid = lo + (hi - lo) / 2;
      if (load_plan(o + mid + 1) > k0_)
        hi = mid;
      else
        lo = mid + 1;
    }
    return lo;
  }

  GENACCEL_HOST_DEVICE __forceinline__ void open_head() {
    q_cur_ = q_end_ = 0;
    open_block(first_block());
  }

  // Opens key block kb of head_: its keys within the tile and its query blocks. False (nothing left
  // to open in this head) when kb is past the last block or starts past the tile.
  GENACCEL_HOST_DEVICE __forceinline__ bool open_block(int kb) {
    const BlockSparseFwdParams& f = p_.bwd.fwd;
    block_ = kb;
    pos_ = end_ = 0;
    if (kb < 0 || kb >= f.num_k_blocks) return false;
    const TokenRange keys = key_tokens_clamped(f, b_, head_, kb, kb + 1);
    if (keys.begin >= k1_) return false;
    key_begin_ = max(keys.begin, k0_) - k0_;
    key_end_ = min(keys.end, k1_) - k0_;
    if (key_begin_ < key_end_) {  // an empty block (or one ending at k0) has no queries to walk
      const KeyMajorPlan& plan = p_.plan;
      const int32_t* offsets = plan.q_offsets + b_ * plan.off_batch_stride + head_ * plan.off_head_stride + kb;
      pos_ = load_plan(offsets);
      end_ = load_plan(offsets + 1);
      list_ = plan.q_list + b_ * plan.list_batch_stride + head_ * plan.list_head_stride;
    }
    return true;
  }

  const BlockSparseBwdCudaParams& p_;
  int b_, k0_, k1_;
  int head_, head_end_;
  int block_ = 0;                     // the open key block of head_
  int key_begin_ = 0, key_end_ = 0;   // its keys in the tile, relative to k0
  const int32_t* list_ = nullptr;
  int pos_ = 0, end_ = 0;             // entries [pos_, end_) of list_ are left for the open key block
  int q_cur_ = 0, q_end_ = 0;         // queries [q_cur_, q_end_) of the open query block are left
};

// What the two dK/dV kernels (mma.sync here, wgmma in block_sparse_bwd_sm90.cuh) set up alike:
// the rows of their 64-key tile in k and v, the shared-memory carve K | V | Q stage 0 | Q stage 1 |
// dO stage 0 | dO stage 1 | lse2 x 2 stages | delta x 2 stages (Traits: kTile, kTileBytes,
// kRowStatsOffset), and where a query tile's rows of q and dO start.
template <class Traits>
struct DkDvTile {
  using T = typename Traits::Element;
  const T* k;
  const T* v;
  uint32_t smem_k, smem_v, smem_q, smem_do;  // shared addresses; Q and dO of stage s at + s * kTileBytes
  float* lse2_s;                             // [2][kTile]
  float* delta_s;                            // [2][kTile]

  __device__ __forceinline__ DkDvTile(const BlockSparseFwdParams& f, char* smem, int b, int kv_head, int k0)
      : k(static_cast<const T*>(f.k) + b * f.k_batch_stride + kv_head * f.k_head_stride + k0 * f.k_row_stride),
        v(static_cast<const T*>(f.v) + b * f.v_batch_stride + kv_head * f.v_head_stride + k0 * f.v_row_stride),
        smem_k(ptx::smem_address(smem)),
        smem_v(smem_k + Traits::kTileBytes),
        smem_q(smem_v + Traits::kTileBytes),
        smem_do(smem_q + 2 * Traits::kTileBytes),
        lse2_s(reinterpret_cast<float*>(smem + Traits::kRowStatsOffset)),
        delta_s(lse2_s + 2 * Traits::kTile) {}

  // Query tile t's first rows in q and in dO (batch b); Tile is QueryTile or VarQueryTile.
  template <class Tile>
  __device__ __forceinline__ static const T* q_rows(const BlockSparseBwdCudaParams& p, int b, const Tile& t) {
    const BlockSparseFwdParams& f = p.bwd.fwd;
    return static_cast<const T*>(f.q) + b * f.q_batch_stride + t.head * f.q_head_stride + t.start * f.q_row_stride;
  }
  template <class Tile>
  __device__ __forceinline__ static const T* do_rows(const BlockSparseBwdCudaParams& p, int b, const Tile& t) {
    return static_cast<const T*>(p.bwd.dout) + b * p.bwd.do_batch_stride + t.head * p.bwd.do_head_stride +
           t.start * p.bwd.do_row_stride;
  }
};

// The work of one dK/dV CTA: the 64-key tile at k0 of kv head kv_head, batch b, over the query tiles
// of the policy make_tiles() returns (KeyMajorQueryTiles, or VarKeyMajorQueryTiles with kMaskKeys:
// each tile's keys outside [key_begin, key_end) get P = dS = 0). `smem` holds Traits::kSmemBytes bytes.
template <class Traits, bool kMaskKeys, class MakeTiles>
__device__ __forceinline__ void dkdv_tile(const BlockSparseBwdCudaParams& p, int b, int kv_head, int k0,
                                          MakeTiles&& make_tiles, char* smem) {
  using T = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kTile = Traits::kTile;
  constexpr int kThreads = Traits::kThreads;
  constexpr int kRowBytes = Traits::kRowBytes;
  constexpr int kTileBytes = Traits::kTileBytes;
  const BlockSparseFwdParams& f = p.bwd.fwd;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_row0 = warp * 16;

  const DkDvTile<Traits> kt(f, smem, b, kv_head, k0);

  float dk[D / 8][4], dv[D / 8][4];
  zero(dk);
  zero(dv);

  auto tiles = make_tiles();
  typename decltype(tiles)::Tile tile;
  if (tiles.next(tile)) {
    const auto load_queries = [&](const auto& t, int stage) {
      load_rows_async<kTile, D, kThreads>(kt.smem_q + stage * kTileBytes, kt.q_rows(p, b, t), f.q_row_stride, 0,
                                          t.len, tid);
      load_rows_async<kTile, D, kThreads>(kt.smem_do + stage * kTileBytes, kt.do_rows(p, b, t),
                                          p.bwd.do_row_stride, 0, t.len, tid);
      load_query_stats<kTile>(p, b, t, tid, kt.lse2_s + stage * kTile, kt.delta_s + stage * kTile);
    };
    // Each warp loads (and alone reads) its own 16 key rows of K and V.
    load_rows_async<16, D, 32>(kt.smem_k, kt.k, f.k_row_stride, warp_row0, f.seqlen_k - k0, lane);
    load_rows_async<16, D, 32>(kt.smem_v, kt.v, f.v_row_stride, warp_row0, f.seqlen_k - k0, lane);
    ptx::cp_async_commit();
    load_queries(tile, 0);
    ptx::cp_async_commit();

    const LaneOffsets<kRowBytes> lo(lane);
    const float scale_log2 = f.scale * kLog2e;
    for_each_tile_double_buffered(tiles, tile, load_queries, [&](const auto& t, int stage) {
      // Variable-size key blocks: this warp's 16 keys may all lie outside the queries' key block
      // (no barrier inside: the loop's barriers are around this call).
      [[maybe_unused]] int key_lo = 0, key_hi = 16;
      if constexpr (kMaskKeys) {
        key_lo = t.key_begin - warp_row0;
        key_hi = t.key_end - warp_row0;
        if (key_hi <= 0 || key_lo >= 16) return;
      }
      const uint32_t q_stage = kt.smem_q + stage * kTileBytes;
      const uint32_t do_stage = kt.smem_do + stage * kTileBytes;
      const float* lse2 = kt.lse2_s + stage * kTile;
      const float* delta = kt.delta_s + stage * kTile;

      // P^T (keys x queries) = exp2(K Q^T * scale * log2(e) - lse2[query]).
      float s[kTile / 8][4];
      zero(s);
      mma_rows_bt<T, kRowBytes, D / 16>(s, kt.smem_k + warp_row0 * kRowBytes, q_stage, lo);
      transposed_probabilities(s, scale_log2, lse2, lane);
      if constexpr (kMaskKeys) zero_rows_outside(s, key_lo, key_hi, lane);

      // dP^T = V dO^T, then dS^T = P^T * (dP^T - delta[query]).
      float ds[kTile / 8][4];
      zero(ds);
      mma_rows_bt<T, kRowBytes, D / 16>(ds, kt.smem_v + warp_row0 * kRowBytes, do_stage, lo);
      mma_acc_b<T, kRowBytes>(dv, s, do_stage, lo);  // dV += P^T dO
      transposed_dscores(ds, s, delta, lane);
      if constexpr (kMaskKeys) zero_rows_outside(ds, key_lo, key_hi, lane);
      mma_acc_b<T, kRowBytes>(dk, ds, q_stage, lo);  // dK += dS^T Q
    });
  }

  // Staged through this warp's own K and V rows, which no other warp reads.
  store_dkdv_rows<T, D, kTile>(p, b, kv_head, k0, warp_row0, lane, dk, dv, reinterpret_cast<T*>(smem));
}

// grid (ceil(seqlen_k / 64), kv_heads, batch).
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    block_sparse_bwd_dkdv_kernel(const __grid_constant__ BlockSparseBwdCudaParams p) {
  extern __shared__ __align__(128) char smem[];
  const int kv_head = blockIdx.y, b = blockIdx.z;
  const int k0 = blockIdx.x * Traits::kTile;
  dkdv_tile<Traits, false>(
      p, b, kv_head, k0, [&] { return KeyMajorQueryTiles<Traits::kTile>(p, b, kv_head, k0 / p.bwd.fwd.block_k); },
      smem);
}

// Variable-size blocks: the same grid (ceil(seqlen_k / 64), kv_heads, batch), the query tiles of
// VarKeyMajorQueryTiles.
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    block_sparse_bwd_dkdv_varblock_kernel(const __grid_constant__ BlockSparseBwdCudaParams p) {
  extern __shared__ __align__(128) char smem[];
  const int kv_head = blockIdx.y, b = blockIdx.z;
  const int k0 = blockIdx.x * Traits::kTile;
  dkdv_tile<Traits, true>(p, b, kv_head, k0, [&] { return VarKeyMajorQueryTiles<Traits::kTile>(p, b, kv_head, k0); },
                          smem);
}

// The work of one dQ CTA: the kBlockQ query rows from q0 (below q_end) of head h, batch b, over the
// key tiles of the policy make_tiles() returns. `smem` holds Traits::kSmemBytes bytes.
template <class Traits, class MakeTiles>
__device__ __forceinline__ void dq_rows(const BlockSparseBwdCudaParams& p, int b, int h, int q0, int q_end,
                                        MakeTiles&& make_tiles, char* smem) {
  using T = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  constexpr int kTile = Traits::kKeyTile;
  constexpr int kThreads = Traits::kThreads;
  constexpr int kRowBytes = Traits::kRowBytes;
  const BlockSparseFwdParams& f = p.bwd.fwd;

  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int warp_row0 = warp * 16;
  const int kv_head = h / (f.heads / f.kv_heads);

  const T* q = static_cast<const T*>(f.q) + b * f.q_batch_stride + h * f.q_head_stride +
               q0 * f.q_row_stride;
  const T* dout = static_cast<const T*>(p.bwd.dout) + b * p.bwd.do_batch_stride +
                  h * p.bwd.do_head_stride + q0 * p.bwd.do_row_stride;
  const T* k = static_cast<const T*>(f.k) + b * f.k_batch_stride + kv_head * f.k_head_stride;
  const T* v = static_cast<const T*>(f.v) + b * f.v_batch_stride + kv_head * f.v_head_stride;

  const uint32_t smem_q = ptx::smem_address(smem);
  const uint32_t smem_do = smem_q + Traits::kQBytes;
  const uint32_t smem_k = smem_do + Traits::kQBytes;  // 2 stages
  const uint32_t smem_v = smem_k + 2 * Traits::kTileBytes;  // 2 stages

  float dq[D / 8][4];
  zero(dq);

  auto tiles = make_tiles();
  KeyTile tile;
  if (tiles.next(tile)) {
    const auto load_kv = [&](const KeyTile& t, int stage) {
      load_key_tile<kTile, D, kThreads>(smem_k, smem_v, k, f.k_row_stride, v, f.v_row_stride, t,
                                        stage, tid);
    };
    // Each warp loads (and alone reads) its own 16 rows of Q and dO.
    load_rows_async<16, D, 32>(smem_q, q, f.q_row_stride, warp_row0, q_end - q0, lane);
    load_rows_async<16, D, 32>(smem_do, dout, p.bwd.do_row_stride, warp_row0, q_end - q0, lane);
    ptx::cp_async_commit();
    load_kv(tile, 0);
    ptx::cp_async_commit();

    float lse2[2], delta[2];
    load_row_stats(p, b, h, q0, q_end, warp_row0, lane, lse2, delta);

    const LaneOffsets<kRowBytes> lo(lane);
    const float scale_log2 = f.scale * kLog2e;
    for_each_tile_double_buffered(tiles, tile, load_kv, [&](const KeyTile& t, int stage) {
      const uint32_t k_stage = smem_k + stage * Traits::kTileBytes;
      const uint32_t v_stage = smem_v + stage * Traits::kTileBytes;

      // P = exp2(Q K^T * scale * log2(e) - lse2[row]), 0 past the tile's keys; element c is row c / 2.
      float s[kTile / 8][4];
      zero(s);
      mma_rows_bt<T, kRowBytes, D / 16>(s, smem_q + warp_row0 * kRowBytes, k_stage, lo);
      row_probabilities(s, scale_log2, lse2, t.len, lane);

      // dS = P * (dO V^T - delta[row]); dQ += dS K.
      float ds[kTile / 8][4];
      zero(ds);
      mma_rows_bt<T, kRowBytes, D / 16>(ds, smem_do + warp_row0 * kRowBytes, v_stage, lo);
      row_dscores(ds, s, delta);
      mma_acc_b<T, kRowBytes>(dq, ds, k_stage, lo);
    });
  }

  // Staged through this warp's own Q rows.
  store_dq_rows<T, D>(p, b, h, q0, q_end, warp_row0, lane, dq, reinterpret_cast<T*>(smem));
}

// grid (num_q_blocks, heads, batch), like the forward.
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    block_sparse_bwd_dq_kernel(const __grid_constant__ BlockSparseBwdCudaParams p) {
  extern __shared__ __align__(128) char smem[];
  const int qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  dq_rows<Traits>(
      p, b, h, qb * Traits::kBlockQ, p.bwd.fwd.seqlen_q,
      [&] { return IndexListTiles<Traits::kKeyTile>(p.bwd.fwd, b, h, qb); }, smem);
}

// Variable-size blocks: grid (num_q_blocks * tiles_per_block, heads, batch) and row tiles as the
// variable-block forward (block_sparse_fwd_varblock_kernel).
template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, Traits::kMinBlocksPerSm)
    block_sparse_bwd_dq_varblock_kernel(const __grid_constant__ BlockSparseBwdCudaParams p, int tiles_per_block) {
  extern __shared__ __align__(128) char smem[];
  const int h = blockIdx.y, b = blockIdx.z;
  const VarRowTile<Traits::kBlockQ> rt(p.bwd.fwd, b, h, blockIdx.x, tiles_per_block);
  if (rt.empty()) return;
  dq_rows<Traits>(
      p, b, h, rt.begin, rt.end, [&] { return VarBlockTiles<Traits::kKeyTile>(p.bwd.fwd, b, h, rt.qb); }, smem);
}

}  // namespace genaccel::attention
