// Swizzled shared-memory tiles and the warp-level GEMMs over them that the attention kernels are
// made of (forward and backward). Torch-free; sm_80 / sm_90a.
//
// A tile is [rows][kHeadDim] 16-bit elements, row-major, with the 16-byte chunk index of each row
// XORed by (row % 8). A warp computes on 16 rows at a time; accumulators are m16n8 float32 tiles in
// the mma.sync C layout: lane l holds rows l/4 and l/4 + 8, columns 2*(l%4) + {0,1} of each n8 tile
// (elements [0..1] and [2..3] of its 4 values).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "genaccel/common/sm80_mma.cuh"

namespace genaccel::attention {

// Element offset of (row, 16-byte chunk) in a swizzled tile. ldmatrix reads eight rows at one chunk
// position per 8x8 matrix and a row is a multiple of 128 bytes, so without the XOR all eight
// addresses would hit the same four banks; with it they cover all 32. The same holds for the
// 16-byte cp.async writes, which eight consecutive threads issue along one row.
template <int kHeadDim>
__device__ __forceinline__ int swizzled_offset(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// Copies rows [row_begin, row_begin + kRows) of a [*][kHeadDim] global tile into a shared tile with
// cp.async, 16 bytes at a time, `kThreads` threads cooperating; chunk c of row r lands at byte
// offset(r, c) of `smem_tile`. Rows at or past `valid_rows` are zero-filled and their global memory is
// never touched. Row 0 of `gmem` must be a valid row: it is the (unread) source address of the
// zero-filled copies.
template <int kRows, int kHeadDim, int kThreads, class T, class Offset>
__device__ __forceinline__ void copy_rows_async(uint32_t smem_tile, const T* gmem, int64_t row_stride, int row_begin,
                                                int valid_rows, int thread, Offset offset) {
  constexpr int kChunks = kHeadDim / 8;
  static_assert(kRows * kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int it = 0; it < kRows * kChunks / kThreads; ++it) {
    const int idx = it * kThreads + thread;
    const int row = row_begin + idx / kChunks;
    const int chunk = idx % kChunks;
    const bool valid = row < valid_rows;
    const T* src = valid ? gmem + row * row_stride + chunk * 8 : gmem;
    ptx::cp_async_16(smem_tile + offset(row, chunk), src, valid);
  }
}

// copy_rows_async into the swizzled [rows][kHeadDim] tile above.
template <int kRows, int kHeadDim, int kThreads, class T>
__device__ __forceinline__ void load_rows_async(uint32_t smem_tile, const T* gmem,
                                                int64_t row_stride, int row_begin, int valid_rows,
                                                int thread) {
  copy_rows_async<kRows, kHeadDim, kThreads>(smem_tile, gmem, row_stride, row_begin, valid_rows, thread,
                                             [](int row, int chunk) {
                                               return static_cast<uint32_t>(swizzled_offset<kHeadDim>(row, chunk) *
                                                                            sizeof(T));
                                             });
}

struct NoFence {
  __device__ __forceinline__ void operator()() const {}
};

// The double-buffered walk over a tile list shared by the attention kernels. `first` (from
// tiles.next) has had its copies issued into stage 0 and committed; then for each tile, the next
// tile's copies go into the other stage (load(tile, stage) issues them) while compute(tile, stage)
// works on this one. The barriers: before compute, every thread's copies of the stage are visible;
// after it, no warp still reads the stage that the next iteration refills. Copies committed before
// `first`'s (e.g. a CTA's own rows) are complete before the first compute. `publish` runs in every
// thread between its wait for the copies and the barrier (Hopper's wgmma reads shared memory through
// the async proxy, which needs a proxy fence there).
template <class Tiles, class Tile, class Load, class Compute, class Publish = NoFence>
__device__ __forceinline__ void for_each_tile_double_buffered(Tiles& tiles, Tile tile, Load&& load,
                                                              Compute&& compute, Publish publish = {}) {
  for (int stage = 0;; stage ^= 1) {
    Tile next_tile;
    const bool more = tiles.next(next_tile);
    if (more) {
      load(next_tile, stage ^ 1);
      ptx::cp_async_commit();
      ptx::cp_async_wait<1>();
    } else {
      ptx::cp_async_wait<0>();
    }
    publish();
    __syncthreads();
    compute(tile, stage);
    if (!more) break;
    __syncthreads();
    tile = next_tile;
  }
}

// This lane's ldmatrix addresses within a tile (byte offsets from row 0 for k-step / column pair 0).
// Every row any lane addresses is congruent to lane mod 8, so its swizzle is lane % 8; the chunk
// index of step i is 2 * i + (a bit of the lane), and since a row base has zero low 7 bits the whole
// step offset is `offset ^ (i * 32 bytes)`.
//   as_rows: lanes 0-15 rows 0-15 at chunk 2i, lanes 16-31 rows 0-15 at chunk 2i + 1, i.e.
//     registers {rows 0-7 | rows 8-15} x {chunk lo | chunk hi}: an A operand (16 rows x 16 k), or,
//     with ldmatrix .trans, a B operand whose k dimension runs along the rows (two n8 tiles).
//   as_cols: lanes 0-7 rows 0-7 chunk lo, 8-15 rows 0-7 chunk hi, 16-23 rows 8-15 chunk lo, 24-31
//     rows 8-15 chunk hi: a B operand whose n dimension runs along the rows, {b0, b1} of n8 tile 0,
//     then of n8 tile 1.
template <int kRowBytes>
struct LaneOffsets {
  uint32_t as_rows;
  uint32_t as_cols;

  __device__ __forceinline__ explicit LaneOffsets(int lane) {
    const uint32_t swz = lane & 7;
    as_rows = (lane & 15) * kRowBytes + (((lane >> 4) ^ swz) << 4);
    as_cols = ((lane & 7) + ((lane >> 4) << 3)) * kRowBytes + ((((lane >> 3) & 1) ^ swz) << 4);
  }
};

// A operand fragments of 16 rows x (16 * kKSteps) columns of a tile; `rows` is the shared address
// of the first of the 16 rows.
template <int kRowBytes, int kKSteps>
__device__ __forceinline__ void load_a_fragments(uint32_t (&a)[kKSteps][4], uint32_t rows,
                                                 const LaneOffsets<kRowBytes>& lo) {
#pragma unroll
  for (int i = 0; i < kKSteps; ++i) ptx::ldmatrix_x4(a[i], rows + (lo.as_rows ^ (i << 5)));
}

// c[16 x 8*kNTiles] += A B^T, A given as fragments (16 x 16*kKSteps), B the first 8 * kNTiles rows of
// the tile at `b_rows` (its rows are the n dimension, its columns the k dimension).
template <class T, int kRowBytes, int kKSteps, int kNTiles>
__device__ __forceinline__ void mma_a_bt(float (&c)[kNTiles][4], const uint32_t (&a)[kKSteps][4],
                                         uint32_t b_rows, const LaneOffsets<kRowBytes>& lo) {
#pragma unroll
  for (int i = 0; i < kKSteps; ++i) {
#pragma unroll
    for (int n = 0; n < kNTiles / 2; ++n) {
      uint32_t b[4];
      ptx::ldmatrix_x4(b, b_rows + n * 16 * kRowBytes + (lo.as_cols ^ (i << 5)));
      ptx::Mma16816<T>::run(c[2 * n], a[i], b[0], b[1]);
      ptx::Mma16816<T>::run(c[2 * n + 1], a[i], b[2], b[3]);
    }
  }
}

// Same, with A read from 16 rows of a tile (at `a_rows`) one k-step at a time rather than held in
// registers for the whole product.
template <class T, int kRowBytes, int kKSteps, int kNTiles>
__device__ __forceinline__ void mma_rows_bt(float (&c)[kNTiles][4], uint32_t a_rows, uint32_t b_rows,
                                            const LaneOffsets<kRowBytes>& lo) {
#pragma unroll
  for (int i = 0; i < kKSteps; ++i) {
    uint32_t a[1][4];
    ptx::ldmatrix_x4(a[0], a_rows + (lo.as_rows ^ (i << 5)));
#pragma unroll
    for (int n = 0; n < kNTiles / 2; ++n) {
      uint32_t b[4];
      ptx::ldmatrix_x4(b, b_rows + n * 16 * kRowBytes + (lo.as_cols ^ (i << 5)));
      ptx::Mma16816<T>::run(c[2 * n], a[0], b[0], b[1]);
      ptx::Mma16816<T>::run(c[2 * n + 1], a[0], b[2], b[3]);
    }
  }
}

// acc[16 x 8*kDTiles] += P B with P a float32 accumulator (16 x 8*kPTiles, C layout, rounded to T
// here; kPTiles n8 tiles = kPTiles / 2 k16 steps) and B the first 8 * kPTiles rows of the tile at `b_rows` (its rows are the k dimension).
// The C layout of two adjacent n8 tiles is the A layout of one k16 step, so P only needs rounding
// and packing, never a trip through shared memory.
template <class T, int kRowBytes, int kPTiles, int kDTiles>
__device__ __forceinline__ void mma_acc_b(float (&acc)[kDTiles][4], const float (&p)[kPTiles][4],
                                          uint32_t b_rows, const LaneOffsets<kRowBytes>& lo) {
  static_assert(kPTiles % 2 == 0 && kDTiles % 2 == 0, "whole k16 steps and n8 tile pairs");
#pragma unroll
  for (int i = 0; i < kPTiles / 2; ++i) {
    const uint32_t pa[4] = {ptx::pack2<T>(p[2 * i][0], p[2 * i][1]),
                            ptx::pack2<T>(p[2 * i][2], p[2 * i][3]),
                            ptx::pack2<T>(p[2 * i + 1][0], p[2 * i + 1][1]),
                            ptx::pack2<T>(p[2 * i + 1][2], p[2 * i + 1][3])};
#pragma unroll
    for (int d = 0; d < kDTiles / 2; ++d) {
      uint32_t b[4];
      ptx::ldmatrix_x4_trans(b, b_rows + i * 16 * kRowBytes + (lo.as_rows ^ (d << 5)));
      ptx::Mma16816<T>::run(acc[2 * d], pa, b[0], b[1]);
      ptx::Mma16816<T>::run(acc[2 * d + 1], pa, b[2], b[3]);
    }
  }
}

template <int kNTiles>
__device__ __forceinline__ void zero(float (&c)[kNTiles][4]) {
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
}

// Writes a warp's 16 x kHeadDim accumulator, row r multiplied by row_scale[r] (r = 0: rows l/4,
// r = 1: rows l/4 + 8), as T to global rows: tile row `warp_row0 + i` goes to `out + (warp_row0 + i) *
// row_stride` when below `valid_rows`. It is staged through the same rows of the swizzled tile
// `staged`, which only this warp may be using, so that global stores are whole 16-byte chunks.
template <class T, int kHeadDim>
__device__ __forceinline__ void store_warp_rows(const float (&acc)[kHeadDim / 8][4],
                                                const float (&row_scale)[2], T* staged, int warp_row0,
                                                T* out, int64_t row_stride, int valid_rows, int lane) {
  __syncwarp();  // the warp's last ldmatrix reads of these rows precede the writes
  const int lane_row = warp_row0 + lane / 4;
#pragma unroll
  for (int j = 0; j < kHeadDim / 8; ++j) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = lane_row + 8 * r;
      *reinterpret_cast<uint32_t*>(staged + swizzled_offset<kHeadDim>(row, j) + 2 * (lane & 3)) =
          ptx::pack2<T>(acc[j][2 * r] * row_scale[r], acc[j][2 * r + 1] * row_scale[r]);
    }
  }
  __syncwarp();
  constexpr int kChunks = kHeadDim / 8;
#pragma unroll
  for (int it = 0; it < 16 * kChunks / 32; ++it) {
    const int idx = it * 32 + lane;
    const int row = warp_row0 + idx / kChunks;
    const int chunk = idx % kChunks;
    if (row < valid_rows)
      *reinterpret_cast<uint4*>(out + row * row_stride + chunk * 8) =
          *reinterpret_cast<const uint4*>(staged + swizzled_offset<kHeadDim>(row, chunk));
  }
}

}  // namespace genaccel::attention
