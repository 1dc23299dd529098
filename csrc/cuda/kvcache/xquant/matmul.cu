// XQuant's fused products on CUDA (ops xquant_matmul / xquant_weighted_sum): GEMMs whose quantized
// operand X is dequantized tile by tile on its way into shared memory, so that the dequantized X never
// exists in global memory (the cache stays b-bit; that is XQuant's point).
// - The dequantized values are the dequantizer's (quantize.cu) bit for bit: s (q - z) or m + s q in
//   float32 with the _rn intrinsics. A thread dequantizes whole words of 8 codes (`bits` bytes, all of
//   one group since group_size is a multiple of 8): one word is one 16-byte chunk of a 16-bit tile.
// - 16-bit operands (float16 / bfloat16 weight or attention weights): 128 threads, 64 x 64 shared tiles
//   in the swizzled layout of tile_mma.cuh (conflict-free ldmatrix), double-buffered
//   (for_each_tile_double_buffered), mma.sync m16n8k16 with float32 accumulators. The dequantized X is
//   rounded to the other operand's type first, as torch's dequantize(x).to(dtype) would be. The 16-bit
//   operand comes in by cp.async where its rows are 16-byte aligned (zero-filled past the edges), by
//   plain loads otherwise; the next tile's copies are issued before its codes are dequantized, so the
//   two overlap.
// - float32 operands: exact float32 is wanted (not TF32), so a plain register-blocked SIMT kernel of the
//   same tiling, float32 FMAs, single-buffered: the float32 path is the reference-grade one, not the
//   fast one.
// - matmul: a CTA owns 64 rows x 64 columns of out and walks k (64 at a time; 32 in float32); each of
//   the 4 warps owns 16 rows, so a warp's A fragment is its own rows and the W tile is shared.
// - weighted_sum: a CTA owns (batch, 16 / 32 / 64 rows of m, 64 columns of k) and walks all the tokens
//   (64 at a time; 32 in float32). The reduction runs along the rows of the dequantized tile (the B
//   operand, read with ldmatrix .trans); the warps split the 64 columns, 16 each, so that decode's few
//   rows of m (the row tile is chosen from m) cost no idle warps, and one CTA per column tile
//   dequantizes each code once when m <= 64.
// - Grids are 1-D and grid-stride over the tiles: any row count, no grid.y / grid.z limit; every
//   offset is int64.
// - Edges are zero-filled in shared memory (rows, columns, the reduction dim, a k that ends mid-word),
//   never left uninitialised: 0 * NaN would leak into valid outputs.
#include "cuda/kvcache/xquant/matmul.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "genaccel/common/sm80_mma.cuh"
#include "genaccel/common/tile_mma.cuh"
#include "cuda/kvcache/xquant/codes.cuh"

namespace genaccel::cuda {
namespace {

namespace ptx = genaccel::attention::ptx;
using namespace xquant;  // codes.cuh
using attention::LaneOffsets;
using attention::swizzled_offset;

constexpr int kThreads = 128;  // 4 warps
constexpr int kTile = 64;      // rows and columns of a 16-bit shared tile
constexpr int kChunks = kTile / 8;  // 16-byte chunks (= code words) per tile row
constexpr int kRowBytes = kTile * 2;
constexpr int kTileElems = kTile * kTile;
constexpr int kSimtK = 32;     // reduction step of the float32 kernels
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // the loops are grid-stride: any count is covered

unsigned blocks_for(int64_t tiles) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(tiles, kMaxBlocks)));
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The codes' row sizes cover k: every read below stays inside the rows the params describe.
bool valid_codes(const XquantCodes& x) {
  if (x.rows < 0 || x.k < 0) return false;
  if (x.rows == 0 || x.k == 0) return true;
  if (x.codes == nullptr || x.scales == nullptr || x.zeros == nullptr) return false;
  if (x.code_row_bytes < ceil_div(x.k * x.bits, 8) || x.groups < ceil_div(x.k, x.group_size)) return false;
  return x.fp16_zero || x.zero_row_bytes >= ceil_div(x.groups * x.bits, 8);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
bool aligned4(const void* p) { return reinterpret_cast<uintptr_t>(p) % 4 == 0; }

// ---------------------------------------------------------------------------------------------------
// 16-bit tiles: [kTile][kTile] elements (or [kRows][kTile]), 128-byte rows, swizzled as tile_mma.cuh's.

// Rows [row0, row0 + kTile) x columns [c0, c0 + kTile) of x, dequantized and rounded to T, into the tile:
// a thread per word, 8 consecutive threads per row (their code bytes are contiguous).
template <class T>
__device__ __forceinline__ void dequantize_tile(uint16_t* tile, const XquantCodes& x, int64_t row0,
                                                int64_t valid_rows, int64_t c0, int tid) {
  static_assert(kTile * kChunks % kThreads == 0, "every thread dequantizes the same number of words");
#pragma unroll
  for (int it = 0; it < kTile * kChunks / kThreads; ++it) {
    const int idx = it * kThreads + tid;
    const int row = idx / kChunks, chunk = idx % kChunks;
    float v[8];
    dequantize_word(x, row < valid_rows, row0 + row, c0 + chunk * 8, v);
    *reinterpret_cast<uint4*>(tile + swizzled_offset<kTile>(row, chunk)) =
        make_uint4(ptx::pack2<T>(v[0], v[1]), ptx::pack2<T>(v[2], v[3]), ptx::pack2<T>(v[4], v[5]),
                   ptx::pack2<T>(v[6], v[7]));
  }
}

// Rows [0, kRows) x columns [0, kTile) of the row-major 16-bit matrix at g (row stride ld elements) into
// the tile; elements at or past (valid_rows, valid_cols) are zeros and are never read. g (row 0, column
// 0 of the tile) must be a valid element. With `async` (g 16-byte aligned, ld a multiple of 8, so a chunk
// is all in or all out) by cp.async, to be committed by the caller; else by plain loads and stores.
template <int kRows>
__device__ __forceinline__ void load_tile(uint16_t* tile, const uint16_t* g, int64_t ld, int64_t valid_rows,
                                          int64_t valid_cols, bool async, int tid) {
  static_assert(kRows * kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int it = 0; it < kRows * kChunks / kThreads; ++it) {
    const int idx = it * kThreads + tid;
    const int row = idx / kChunks, col = (idx % kChunks) * 8;
    uint16_t* dst = tile + swizzled_offset<kTile>(row, col / 8);
    const bool valid_row = row < valid_rows;
    if (async) {
      const bool valid = valid_row && col < valid_cols;
      ptx::cp_async_16(ptx::smem_address(dst), valid ? g + row * ld + col : g, valid);
    } else {
      uint32_t w[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t lo = valid_row && col + 2 * e < valid_cols ? g[row * ld + col + 2 * e] : 0u;
        const uint32_t hi = valid_row && col + 2 * e + 1 < valid_cols ? g[row * ld + col + 2 * e + 1] : 0u;
        w[e] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

// The tile walk of for_each_tile_double_buffered: starts 0, kTile, ... below len.
struct Steps {
  int64_t next_start, len;
  __device__ __forceinline__ bool next(int64_t& start) {
    if (next_start >= len) return false;
    start = next_start;
    next_start += kTile;
    return true;
  }
};

// Columns col, col + 1 (col even) of a row of out; paired 32-bit store where both exist and `paired`
// (the row length even, out 4-byte aligned).
template <class T>
__device__ __forceinline__ void store_pair(T* row, int64_t col, int64_t cols, float v0, float v1, bool paired) {
  if (paired && col + 1 < cols) {
    *reinterpret_cast<uint32_t*>(row + col) = ptx::pack2<T>(v0, v1);
  } else {
    if (col < cols) row[col] = from_float<T>(v0);
    if (col + 1 < cols) row[col + 1] = from_float<T>(v1);
  }
}

// out tile (r0, n0) = dequantize(x)[r0 : r0 + 64] @ W[n0 : n0 + 64]^T: warp w owns rows 16w .. 16w + 15,
// all 64 columns (8 n8 accumulator tiles).
template <class T>
__global__ void __launch_bounds__(kThreads) matmul_mma_kernel(const __grid_constant__ XquantMatmulParams p,
                                                              int64_t n_tiles, bool w_async, bool paired) {
  // [stage][A | W][kTileElems]
  __shared__ __align__(128) uint16_t smem[2][2][kTileElems];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t rows = p.x.rows, k = p.x.k, n = p.n;
  const int64_t tiles = ceil_div(rows, kTile) * n_tiles;
  const uint16_t* w = static_cast<const uint16_t*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  T* out = static_cast<T*>(p.out);
  const LaneOffsets<kRowBytes> lo(lane);

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t r0 = tile / n_tiles * kTile, n0 = tile % n_tiles * kTile;
    float acc[8][4];
    attention::zero(acc);
    if (k > 0) {
      __syncthreads();  // the previous tile's reads of the shared tiles are done
      const uint16_t* w_tile = w + n0 * k;
      const auto load = [&](int64_t k0, int stage) {
        load_tile<kTile>(smem[stage][1], w_tile + k0, k, n - n0, k - k0, w_async, tid);  // copies first
        dequantize_tile<T>(smem[stage][0], p.x, r0, rows - r0, k0, tid);
      };
      Steps steps{0, k};
      int64_t first = 0;
      steps.next(first);
      load(first, 0);
      ptx::cp_async_commit();
      attention::for_each_tile_double_buffered(steps, first, load, [&](int64_t, int stage) {
        attention::mma_rows_bt<T, kRowBytes, kTile / 16>(acc, ptx::smem_address(smem[stage][0]) + warp * 16 * kRowBytes,
                                                         ptx::smem_address(smem[stage][1]), lo);
      });
    }
    // Accumulator (C layout): rows lane / 4 (+ 8), columns 8 j + 2 (lane % 4) + {0, 1}.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = r0 + warp * 16 + lane / 4 + 8 * h;
      if (row >= rows) continue;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t col = n0 + 8 * j + 2 * (lane & 3);
        float v0 = acc[j][2 * h], v1 = acc[j][2 * h + 1];
        if (bias != nullptr) {
          if (col < n) v0 = __fadd_rn(v0, to_float(bias[col]));
          if (col + 1 < n) v1 = __fadd_rn(v1, to_float(bias[col + 1]));
        }
        store_pair(out + row * n, col, n, v0, v1, paired);
      }
    }
  }
}

// out tile (b, m0, k0) = a[b, m0 : m0 + 16 kMT] @ dequantize(x)[b tokens : (b + 1) tokens, k0 : k0 + 64]:
// warp w owns columns 16 w .. 16 w + 15 (2 n8 tiles) of all 16 kMT rows (kMT m16 tiles).
template <class T, int kMT>
__global__ void __launch_bounds__(kThreads) weighted_sum_mma_kernel(const __grid_constant__ XquantWeightedSumParams p,
                                                                    int64_t m_tiles, int64_t k_tiles, bool a_async,
                                                                    bool paired) {
  constexpr int kRows = 16 * kMT;
  // [stage][X | a][kTileElems] (a uses its first kRows rows)
  __shared__ __align__(128) uint16_t smem[2][2][kTileElems];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t m = p.m, k = p.x.k, tokens = p.tokens;
  const int64_t tiles = p.batch * k_tiles * m_tiles;
  const uint16_t* a = static_cast<const uint16_t*>(p.a);
  T* out = static_cast<T*>(p.out);
  const LaneOffsets<kRowBytes> lo(lane);

  // Consecutive CTAs are the m tiles of one (batch, column tile): they read the same codes from L2.
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t b = tile / (k_tiles * m_tiles), kt = tile / m_tiles % k_tiles, mt = tile % m_tiles;
    const int64_t m0 = mt * kRows, k0 = kt * kTile;
    float acc[kMT][2][4];
#pragma unroll
    for (int i = 0; i < kMT; ++i) attention::zero(acc[i]);
    if (tokens > 0) {
      __syncthreads();  // the previous tile's reads of the shared tiles are done
      const uint16_t* a_tile = a + (b * m + m0) * tokens;
      const auto load = [&](int64_t t0, int stage) {
        load_tile<kRows>(smem[stage][1], a_tile + t0, tokens, m - m0, tokens - t0, a_async, tid);  // copies first
        dequantize_tile<T>(smem[stage][0], p.x, b * tokens + t0, tokens - t0, k0, tid);
      };
      Steps steps{0, tokens};
      int64_t first = 0;
      steps.next(first);
      load(first, 0);
      ptx::cp_async_commit();
      attention::for_each_tile_double_buffered(steps, first, load, [&](int64_t, int stage) {
        const uint32_t xs = ptx::smem_address(smem[stage][0]), as = ptx::smem_address(smem[stage][1]);
#pragma unroll
        for (int i = 0; i < kTile / 16; ++i) {  // 16 tokens per step
          uint32_t bf[4];  // tokens 16 i .. 16 i + 15 of columns 16 w .. 16 w + 15: {b0, b1} of 2 n8 tiles
          ptx::ldmatrix_x4_trans(bf, xs + i * 16 * kRowBytes + (lo.as_rows ^ (warp << 5)));
#pragma unroll
          for (int r = 0; r < kMT; ++r) {
            uint32_t af[4];
            ptx::ldmatrix_x4(af, as + r * 16 * kRowBytes + (lo.as_rows ^ (i << 5)));
            ptx::Mma16816<T>::run(acc[r][0], af, bf[0], bf[1]);
            ptx::Mma16816<T>::run(acc[r][1], af, bf[2], bf[3]);
          }
        }
      });
    }
#pragma unroll
    for (int r = 0; r < kMT; ++r) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + r * 16 + lane / 4 + 8 * h;
        if (row >= m) continue;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int64_t col = k0 + warp * 16 + 8 * j + 2 * (lane & 3);
          store_pair(out + (b * m + row) * k, col, k, acc[r][j][2 * h], acc[r][j][2 * h + 1], paired);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// float32: SIMT, 128 threads as 8 x 16; thread (ty, tx) accumulates rows ty + 8 i, columns tx + 16 j of
// the CTA's tile. Shared tiles are [reduction][row or column], padded by one where a store walks the
// reduction dim across a warp (conflict-free).

__global__ void __launch_bounds__(kThreads) matmul_f32_kernel(const __grid_constant__ XquantMatmulParams p,
                                                              int64_t n_tiles) {
  __shared__ float as[kSimtK][kTile + 1];  // [k][row]
  __shared__ float ws[kSimtK][kTile + 1];  // [k][column]
  const int tid = static_cast<int>(threadIdx.x), tx = tid % 16, ty = tid / 16;
  const int64_t rows = p.x.rows, k = p.x.k, n = p.n;
  const int64_t tiles = ceil_div(rows, kTile) * n_tiles;
  const float* w = static_cast<const float*>(p.weight);
  const float* bias = static_cast<const float*>(p.bias);
  float* out = static_cast<float*>(p.out);

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t r0 = tile / n_tiles * kTile, n0 = tile % n_tiles * kTile;
    float acc[8][4];
    attention::zero(acc);
    for (int64_t k0 = 0; k0 < k; k0 += kSimtK) {
      __syncthreads();  // the previous step's reads are done
      // A: 64 rows x 4 words; consecutive threads take consecutive rows (conflict-free stores).
#pragma unroll
      for (int it = 0; it < kTile * (kSimtK / 8) / kThreads; ++it) {
        const int idx = it * kThreads + tid;
        const int row = idx % kTile, chunk = idx / kTile;
        float v[8];
        dequantize_word(p.x, r0 + row < rows, r0 + row, k0 + chunk * 8, v);
#pragma unroll
        for (int i = 0; i < 8; ++i) as[chunk * 8 + i][row] = v[i];
      }
      // W: 64 columns x 32 k; consecutive threads take consecutive k (coalesced loads).
#pragma unroll 4
      for (int it = 0; it < kTile * kSimtK / kThreads; ++it) {
        const int idx = it * kThreads + tid;
        const int col = idx / kSimtK, kk = idx % kSimtK;
        ws[kk][col] = n0 + col < n && k0 + kk < k ? w[(n0 + col) * k + k0 + kk] : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kSimtK; ++kk) {
        float av[8], wv[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) av[i] = as[kk][ty + 8 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) wv[j] = ws[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = __fmaf_rn(av[i], wv[j], acc[i][j]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t row = r0 + ty + 8 * i;
      if (row >= rows) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t col = n0 + tx + 16 * j;
        if (col < n) out[row * n + col] = bias != nullptr ? __fadd_rn(acc[i][j], bias[col]) : acc[i][j];
      }
    }
  }
}

template <int kRows>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_f32_kernel(const __grid_constant__ XquantWeightedSumParams p, int64_t m_tiles, int64_t k_tiles) {
  constexpr int kRowsPerThread = kRows / 8;
  __shared__ float as[kSimtK][kRows + 1];  // [token][row]
  __shared__ float xs[kSimtK][kTile];      // [token][column]
  const int tid = static_cast<int>(threadIdx.x), tx = tid % 16, ty = tid / 16;
  const int64_t m = p.m, k = p.x.k, tokens = p.tokens;
  const int64_t tiles = p.batch * k_tiles * m_tiles;
  const float* a = static_cast<const float*>(p.a);
  float* out = static_cast<float*>(p.out);

  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t b = tile / (k_tiles * m_tiles), kt = tile / m_tiles % k_tiles, mt = tile % m_tiles;
    const int64_t m0 = mt * kRows, k0 = kt * kTile;
    float acc[kRowsPerThread][4];
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    for (int64_t t0 = 0; t0 < tokens; t0 += kSimtK) {
      __syncthreads();  // the previous step's reads are done
      // X: 32 tokens x 8 words, 8 consecutive threads per token (contiguous code bytes).
#pragma unroll
      for (int it = 0; it < kSimtK * kChunks / kThreads; ++it) {
        const int idx = it * kThreads + tid;
        const int t = idx / kChunks, chunk = idx % kChunks;
        float v[8];
        dequantize_word(p.x, t0 + t < tokens, b * tokens + t0 + t, k0 + chunk * 8, v);
#pragma unroll
        for (int i = 0; i < 8; ++i) xs[t][chunk * 8 + i] = v[i];
      }
      // a: kRows rows x 32 tokens; consecutive threads take consecutive tokens (coalesced loads).
#pragma unroll 4
      for (int it = 0; it < kRows * kSimtK / kThreads; ++it) {
        const int idx = it * kThreads + tid;
        const int row = idx / kSimtK, t = idx % kSimtK;
        as[t][row] = m0 + row < m && t0 + t < tokens ? a[(b * m + m0 + row) * tokens + t0 + t] : 0.f;
      }
      __syncthreads();
#pragma unroll 4
      for (int t = 0; t < kSimtK; ++t) {
        float av[kRowsPerThread], xv[4];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) av[i] = as[t][ty + 8 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) xv[j] = xs[t][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < kRowsPerThread; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = __fmaf_rn(av[i], xv[j], acc[i][j]);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i) {
      const int64_t row = m0 + ty + 8 * i;
      if (row >= m) continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t col = k0 + tx + 16 * j;
        if (col < k) out[(b * m + row) * k + col] = acc[i][j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Launchers.

template <class T>
int launch_matmul_mma(const XquantMatmulParams& p, cudaStream_t stream) {
  const int64_t n_tiles = ceil_div(p.n, kTile);
  const bool w_async = p.x.k % 8 == 0 && aligned16(p.weight);
  const bool paired = p.n % 2 == 0 && aligned4(p.out);
  matmul_mma_kernel<T><<<blocks_for(ceil_div(p.x.rows, kTile) * n_tiles), kThreads, 0, stream>>>(p, n_tiles, w_async,
                                                                                                 paired);
  return cudaGetLastError();
}

int launch_matmul_f32(const XquantMatmulParams& p, cudaStream_t stream) {
  const int64_t n_tiles = ceil_div(p.n, kTile);
  matmul_f32_kernel<<<blocks_for(ceil_div(p.x.rows, kTile) * n_tiles), kThreads, 0, stream>>>(p, n_tiles);
  return cudaGetLastError();
}

template <class T, int kMT>
int launch_weighted_sum_mma(const XquantWeightedSumParams& p, cudaStream_t stream) {
  const int64_t m_tiles = ceil_div(p.m, 16 * kMT), k_tiles = ceil_div(p.x.k, kTile);
  const bool a_async = p.tokens % 8 == 0 && aligned16(p.a);
  const bool paired = p.x.k % 2 == 0 && aligned4(p.out);
  weighted_sum_mma_kernel<T, kMT><<<blocks_for(p.batch * k_tiles * m_tiles), kThreads, 0, stream>>>(
      p, m_tiles, k_tiles, a_async, paired);
  return cudaGetLastError();
}

// The row tile from m: decode's m (heads x queries) is often at most 16 or 32.
template <class T>
int launch_weighted_sum_mma(const XquantWeightedSumParams& p, cudaStream_t stream) {
  if (p.m <= 16) return launch_weighted_sum_mma<T, 1>(p, stream);
  if (p.m <= 32) return launch_weighted_sum_mma<T, 2>(p, stream);
  return launch_weighted_sum_mma<T, 4>(p, stream);
}

template <int kRows>
int launch_weighted_sum_f32(const XquantWeightedSumParams& p, cudaStream_t stream) {
  const int64_t m_tiles = ceil_div(p.m, kRows), k_tiles = ceil_div(p.x.k, kTile);
  weighted_sum_f32_kernel<kRows><<<blocks_for(p.batch * k_tiles * m_tiles), kThreads, 0, stream>>>(p, m_tiles,
                                                                                                   k_tiles);
  return cudaGetLastError();
}

}  // namespace

int xquant_matmul_cuda(const XquantMatmulParams& p, void* stream_ptr) {
  if (!valid_layout(p.x.bits, p.x.group_size) || !valid_codes(p.x) || p.n < 0) return cudaErrorInvalidValue;
  if (p.x.rows == 0 || p.n == 0) return cudaSuccess;
  // k == 0 still launches: the output is the bias (or zeros), and no operand is read.
  if (p.out == nullptr || (p.x.k > 0 && p.weight == nullptr)) return cudaErrorInvalidValue;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.w_dtype) {
    case DType::kFloat32: return launch_matmul_f32(p, stream);
    case DType::kFloat16: return launch_matmul_mma<__half>(p, stream);
    case DType::kBFloat16: return launch_matmul_mma<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

int xquant_weighted_sum_cuda(const XquantWeightedSumParams& p, void* stream_ptr) {
  if (!valid_layout(p.x.bits, p.x.group_size) || !valid_codes(p.x)) return cudaErrorInvalidValue;
  if (p.batch < 0 || p.m < 0 || p.tokens < 0 || p.x.rows != p.batch * p.tokens) return cudaErrorInvalidValue;
  if (p.batch == 0 || p.m == 0 || p.x.k == 0) return cudaSuccess;
  // tokens == 0 still launches: the output is zeros, and no operand is read.
  if (p.out == nullptr || (p.tokens > 0 && p.a == nullptr)) return cudaErrorInvalidValue;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.a_dtype) {
    case DType::kFloat32: return p.m <= 16 ? launch_weighted_sum_f32<16>(p, stream) : launch_weighted_sum_f32<64>(p, stream);
    case DType::kFloat16: return launch_weighted_sum_mma<__half>(p, stream);
    case DType::kBFloat16: return launch_weighted_sum_mma<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace genaccel::cuda
