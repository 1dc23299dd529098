// The chunk-causal 3-D convolution of DC-AE-V on CUDA (op dcae_chunk_causal_conv3d; the rule is in
// include/genaccel/autoencoder/dcae/params.h): an implicit GEMM y[co, n] = sum_k W[co, k] X[k, n] with
// M = Cout, N = output positions n = ((b T + t) H + h) W + w and K = Cin kt kh kw, k = ((ci kt + dt) kh +
// dh) kw + dw: the weight's own row-major order, so W is read as stored.
// - X is never materialised: each thread owns one position of the CTA's tile and gathers its stretch of
//   the K column from x (or the cache) under the bounds / chunk predicate, so the halo costs neither a
//   padded copy of x nor an im2col buffer. Every zero (spatial padding, the right halo past the chunk,
//   the left halo without a cache, k past K, positions past N) is written into shared memory, never left
//   uninitialised: 0 * NaN would leak into valid outputs.
// - 16-bit dtypes: 128 threads, a 64 (Cout) x 64 (positions) CTA tile, K steps of 64 so that an operand
//   row is one 128-byte row of tile_mma.cuh's swizzled layout (conflict-free ldmatrix), 4 warps of
//   32 x 32, mma.sync m16n8k16 with float32 accumulators. Two shared stages: the next step's global loads
//   are held in registers while this step's mma run, then stored to the other stage (one barrier a step).
// - float32: exact float32 is wanted (not TF32), so a plain register-blocked SIMT kernel on the same
//   64 x 64 tile, K steps of 32, single-buffered, float32 FMAs.
// - Grids are 1-D and grid-stride over the tiles (the m tiles of one n tile are consecutive, so they
//   share the gathered x from L2); every offset is int64.
#include "cuda/autoencoder/dcae/conv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "genaccel/common/float_convert.cuh"
#include "genaccel/common/sm80_mma.cuh"
#include "genaccel/common/tile_mma.cuh"

namespace genaccel::cuda {
namespace {

namespace ptx = genaccel::attention::ptx;
using attention::LaneOffsets;
using attention::swizzled_offset;

constexpr int kThreads = 128;  // 4 warps
constexpr int kTileM = 64;     // output channels of a CTA tile
constexpr int kTileN = 64;     // output positions of a CTA tile
constexpr int kMmaK = 64;      // K step of the 16-bit kernel: one 128-byte swizzled row
constexpr int kRowBytes = kMmaK * 2;
constexpr int kChunks = kMmaK / 8;  // 16-byte chunks per shared row
constexpr int kTileElems = kTileM * kMmaK;
constexpr int kSimtK = 32;     // K step of the float32 kernel
constexpr int64_t kMaxKernel = 1024;  // keeps kt kh kw in an int; the op allows far less
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // the loops are grid-stride: any count is covered

static_assert(kTileM == kTileN, "the 16-bit kernel's two operand tiles share one shape");
static_assert(kThreads == 2 * kTileN, "two threads gather each position's K stretch");

unsigned blocks_for(int64_t tiles) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(tiles, kMaxBlocks)));
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
bool aligned4(const void* p) { return reinterpret_cast<uintptr_t>(p) % 4 == 0; }

// The params with the derived sizes the kernels need, computed once on the host.
struct ConvGeometry {
  const void* x;
  const void* cache;  // or null
  const void* weight;
  const void* bias;   // or null
  void* y;
  int64_t cin, cout, frames, height, width, chunk;
  int kt, kh, kw, taps;  // taps = kt kh kw
  int pt, ph, pw;        // half-kernels: temporal (= the cache's frames), height, width
  int64_t hw, thw;       // pixels of a frame, of a (b, c) volume
  int64_t k, n;          // the GEMM's K (cin taps) and N (batch thw)
  int64_t m_tiles, tiles;
};

// One output position of a tile and what its gather needs; `valid` is false past N (all zeros).
struct Position {
  int64_t x_base, cache_base;  // offsets of (b, ci = 0) in x and in the cache
  int64_t t, h, w, chunk_end;  // chunk_end: the first frame of the next chunk, never read
  bool valid;
};

__device__ __forceinline__ Position position(const ConvGeometry& g, int64_t n) {
  Position q;
  q.valid = n < g.n;
  const int64_t nn = q.valid ? n : 0;
  const int64_t b = nn / g.thw, s = nn % g.thw, pixel = s % g.hw;
  q.t = s / g.hw;
  q.h = pixel / g.width;
  q.w = pixel % g.width;
  q.chunk_end = (q.t / g.chunk + 1) * g.chunk;
  q.x_base = b * g.cin * g.thw;
  q.cache_base = b * g.cin * g.pt * g.hw;
  return q;
}

// The (ci, dt, dh, dw) of a reduction index, walked one k at a time: a thread's K stretch is
// consecutive, so only its first index needs divisions. ci >= cin means k >= K.
struct Tap {
  int64_t ci;
  int dt, dh, dw;

  __device__ __forceinline__ Tap(const ConvGeometry& g, int64_t k) {
    ci = k / g.taps;
    const int r = static_cast<int>(k % g.taps), khw = g.kh * g.kw;
    dt = r / khw;
    dh = r % khw / g.kw;
    dw = r % g.kw;
  }

  __device__ __forceinline__ void advance(const ConvGeometry& g) {
    if (++dw < g.kw) return;
    dw = 0;
    if (++dh < g.kh) return;
    dh = 0;
    if (++dt < g.kt) return;
    dt = 0;
    ++ci;
  }
};

// X[k, n]: input frame tt = t + dt - pt of the position's chunk (zero from the chunk's end on), from x
// for tt >= 0 and from cache frame tt + pt before it (zero without a cache); zero off the frame.
// S is the raw element (uint16_t for the 16-bit dtypes, whose +0 is all-zero bits, or float).
template <class S>
__device__ __forceinline__ S gather(const ConvGeometry& g, const Position& q, const Tap& tap) {
  const int64_t tt = q.t + tap.dt - g.pt, hh = q.h + tap.dh - g.ph, ww = q.w + tap.dw - g.pw;
  if (!q.valid || tap.ci >= g.cin || tt >= q.chunk_end || hh < 0 || hh >= g.height || ww < 0 || ww >= g.width)
    return S(0);
  const int64_t pixel = hh * g.width + ww;
  if (tt >= 0) return static_cast<const S*>(g.x)[q.x_base + (tap.ci * g.frames + tt) * g.hw + pixel];
  if (g.cache == nullptr) return S(0);
  return static_cast<const S*>(g.cache)[q.cache_base + (tap.ci * g.pt + tt + g.pt) * g.hw + pixel];
}

// y offset of output channel co at position n (y is (batch, cout, frames, height, width)).
__device__ __forceinline__ int64_t y_offset(const ConvGeometry& g, int64_t co, int64_t n) {
  return (n / g.thw * g.cout + co) * g.thw + n % g.thw;
}

// ---------------------------------------------------------------------------------------------------
// 16-bit: shared tiles are [64 rows][64 k] swizzled (tile_mma.cuh), rows = output channels (weight) or
// positions (x), so both operands are "k along the row" and the product is A B^T as in mma_rows_bt.

// Rows [m0, m0 + 64) x k [k0, k0 + 64) of the weight (cout, K) into registers: 4 chunks a thread, 8
// consecutive threads per row (its 128 contiguous bytes). With `vec` (K a multiple of 8, weight 16-byte
// aligned, so a chunk is all in or all out) one 16-byte load a chunk, else element loads.
__device__ __forceinline__ void load_weight(uint4 (&r)[kTileElems / 8 / kThreads], const ConvGeometry& g,
                                            int64_t m0, int64_t k0, bool vec, int tid) {
  const uint16_t* w = static_cast<const uint16_t*>(g.weight);
#pragma unroll
  for (int it = 0; it < kTileElems / 8 / kThreads; ++it) {
    const int idx = it * kThreads + tid;
    const int64_t co = m0 + idx / kChunks, k = k0 + (idx % kChunks) * 8;
    const bool valid_row = co < g.cout;
    if (vec) {
      r[it] = valid_row && k < g.k ? *reinterpret_cast<const uint4*>(w + co * g.k + k) : make_uint4(0, 0, 0, 0);
    } else {
      uint32_t v[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const uint32_t lo = valid_row && k + 2 * e < g.k ? w[co * g.k + k + 2 * e] : 0u;
        const uint32_t hi = valid_row && k + 2 * e + 1 < g.k ? w[co * g.k + k + 2 * e + 1] : 0u;
        v[e] = lo | (hi << 16);
      }
      r[it] = make_uint4(v[0], v[1], v[2], v[3]);
    }
  }
}

__device__ __forceinline__ void store_weight(uint16_t* tile, const uint4 (&r)[kTileElems / 8 / kThreads], int tid) {
#pragma unroll
  for (int it = 0; it < kTileElems / 8 / kThreads; ++it) {
    const int idx = it * kThreads + tid;
    *reinterpret_cast<uint4*>(tile + swizzled_offset<kMmaK>(idx / kChunks, idx % kChunks)) = r[it];
  }
}

// k [k_begin, k_begin + 32) of the thread's position into registers (4 chunks of 8). Consecutive threads
// hold consecutive positions, so each load of a warp reads mostly consecutive x elements.
__device__ __forceinline__ void load_x(uint4 (&r)[kChunks / 2], const ConvGeometry& g, const Position& q,
                                       int64_t k_begin) {
  Tap tap(g, k_begin);
#pragma unroll
  for (int c = 0; c < kChunks / 2; ++c) {
    uint32_t v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t lo = gather<uint16_t>(g, q, tap);
      tap.advance(g);
      const uint32_t hi = gather<uint16_t>(g, q, tap);
      tap.advance(g);
      v[e] = lo | (hi << 16);
    }
    r[c] = make_uint4(v[0], v[1], v[2], v[3]);
  }
}

// Columns n, n + 1 (n even) of output channel co; a paired 32-bit store where `paired` (thw even, so both
// are in one batch and adjacent in y, and y 4-byte aligned).
template <class T>
__device__ __forceinline__ void store_pair(T* y, const ConvGeometry& g, int64_t co, int64_t n, float v0, float v1,
                                           bool paired) {
  if (n >= g.n) return;
  if (paired) {
    *reinterpret_cast<uint32_t*>(y + y_offset(g, co, n)) = ptx::pack2<T>(v0, v1);
    return;
  }
  y[y_offset(g, co, n)] = from_float<T>(v0);
  if (n + 1 < g.n) y[y_offset(g, co, n + 1)] = from_float<T>(v1);
}

// y tile (m0, n0): warp (wm, wn) owns channels m0 + 32 wm .. + 31 (2 m16 tiles) x positions n0 + 32 wn ..
// + 31 (4 n8 tiles).
template <class T>
__global__ void __launch_bounds__(kThreads) conv_mma_kernel(const __grid_constant__ ConvGeometry g, bool w_vec,
                                                            bool paired) {
  // [stage][weight | x][kTileElems]
  __shared__ __align__(128) uint16_t smem[2][2][kTileElems];
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;
  // The thread's gather: position row n_row of the x tile, k half k_half (chunks 4 k_half .. 4 k_half + 3).
  const int n_row = tid % kTileN, k_half = tid / kTileN;
  const LaneOffsets<kRowBytes> lo(lane);
  const int64_t k_steps = ceil_div(g.k, kMmaK);
  const T* bias = static_cast<const T*>(g.bias);
  T* y = static_cast<T*>(g.y);

  for (int64_t tile = blockIdx.x; tile < g.tiles; tile += gridDim.x) {
    const int64_t m0 = tile % g.m_tiles * kTileM, n0 = tile / g.m_tiles * kTileN;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i) attention::zero(acc[i]);
    if (k_steps > 0) {
      const Position q = position(g, n0 + n_row);
      uint4 wr[kTileElems / 8 / kThreads], xr[kChunks / 2];
      const auto load = [&](int64_t k0) {
        load_weight(wr, g, m0, k0, w_vec, tid);
        load_x(xr, g, q, k0 + k_half * (kMmaK / 2));
      };
      const auto store = [&](int stage) {
        store_weight(smem[stage][0], wr, tid);
#pragma unroll
        for (int c = 0; c < kChunks / 2; ++c)
          *reinterpret_cast<uint4*>(smem[stage][1] + swizzled_offset<kMmaK>(n_row, k_half * (kChunks / 2) + c)) = xr[c];
      };
      // The previous tile's last step ended on a barrier, so stage 0 is free.
      load(0);
      store(0);
      __syncthreads();
      for (int64_t step = 0; step < k_steps; ++step) {
        const int stage = static_cast<int>(step & 1);
        const bool more = step + 1 < k_steps;
        if (more) load((step + 1) * kMmaK);  // in flight during this step's mma
        const uint32_t ws = ptx::smem_address(smem[stage][0]) + wm * 32 * kRowBytes;
        const uint32_t xs = ptx::smem_address(smem[stage][1]) + wn * 32 * kRowBytes;
#pragma unroll
        for (int i = 0; i < kMmaK / 16; ++i) {
          uint32_t a[2][4], b[2][4];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) ptx::ldmatrix_x4(a[mi], ws + mi * 16 * kRowBytes + (lo.as_rows ^ (i << 5)));
#pragma unroll
          for (int np = 0; np < 2; ++np) ptx::ldmatrix_x4(b[np], xs + np * 16 * kRowBytes + (lo.as_cols ^ (i << 5)));
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
            for (int np = 0; np < 2; ++np) {
              ptx::Mma16816<T>::run(acc[mi][2 * np], a[mi], b[np][0], b[np][1]);
              ptx::Mma16816<T>::run(acc[mi][2 * np + 1], a[mi], b[np][2], b[np][3]);
            }
          }
        }
        // The other stage was last read in the previous step, before its closing barrier.
        if (more) store(stage ^ 1);
        __syncthreads();
      }
    }
    // Accumulator (C layout): channels lane / 4 (+ 8), positions 8 j + 2 (lane % 4) + {0, 1}.
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t co = m0 + wm * 32 + mi * 16 + lane / 4 + 8 * h;
        if (co >= g.cout) continue;
        const float bv = bias != nullptr ? to_float(bias[co]) : 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t n = n0 + wn * 32 + 8 * j + 2 * (lane & 3);
          float v0 = acc[mi][j][2 * h], v1 = acc[mi][j][2 * h + 1];
          if (bias != nullptr) {
            v0 = __fadd_rn(v0, bv);
            v1 = __fadd_rn(v1, bv);
          }
          store_pair(y, g, co, n, v0, v1, paired);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// float32: SIMT, 128 threads as 8 x 16; thread (ty, tx) accumulates channels ty + 8 i, positions tx + 16 j
// of the tile. Shared tiles are [k][channel or position]; the weight tile is padded by one because its
// stores walk k across a warp (conflict-free).

__global__ void __launch_bounds__(kThreads) conv_f32_kernel(const __grid_constant__ ConvGeometry g) {
  __shared__ float ws[kSimtK][kTileM + 1];  // [k][channel]
  __shared__ float xs[kSimtK][kTileN];      // [k][position]
  const int tid = static_cast<int>(threadIdx.x), tx = tid % 16, ty = tid / 16;
  const int n_row = tid % kTileN, k_half = tid / kTileN;  // the thread's gather: k half k_half of each step
  const float* w = static_cast<const float*>(g.weight);
  const float* bias = static_cast<const float*>(g.bias);
  float* y = static_cast<float*>(g.y);

  for (int64_t tile = blockIdx.x; tile < g.tiles; tile += gridDim.x) {
    const int64_t m0 = tile % g.m_tiles * kTileM, n0 = tile / g.m_tiles * kTileN;
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    const Position q = position(g, n0 + n_row);
    for (int64_t k0 = 0; k0 < g.k; k0 += kSimtK) {
      __syncthreads();  // the previous step's (or tile's) reads are done
      // Weight: 64 channels x 32 k; consecutive threads take consecutive k (coalesced loads).
#pragma unroll 4
      for (int it = 0; it < kTileM * kSimtK / kThreads; ++it) {
        const int idx = it * kThreads + tid;
        const int row = idx / kSimtK, kk = idx % kSimtK;
        ws[kk][row] = m0 + row < g.cout && k0 + kk < g.k ? w[(m0 + row) * g.k + k0 + kk] : 0.f;
      }
      Tap tap(g, k0 + k_half * (kSimtK / 2));
#pragma unroll 4
      for (int j = 0; j < kSimtK / 2; ++j) {
        xs[k_half * (kSimtK / 2) + j][n_row] = gather<float>(g, q, tap);
        tap.advance(g);
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kSimtK; ++kk) {
        float av[8], xv[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) av[i] = ws[kk][ty + 8 * i];
#pragma unroll
        for (int j = 0; j < 4; ++j) xv[j] = xs[kk][tx + 16 * j];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = __fmaf_rn(av[i], xv[j], acc[i][j]);
        }
      }
    }
    // Consecutive tx are consecutive positions: coalesced stores along a channel's volume.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= g.n) continue;
      const int64_t base = y_offset(g, 0, n);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t co = m0 + ty + 8 * i;
        if (co < g.cout) y[base + co * g.thw] = bias != nullptr ? __fadd_rn(acc[i][j], bias[co]) : acc[i][j];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Launchers.

template <class T>
int launch_mma(const ConvGeometry& g, cudaStream_t stream) {
  const bool w_vec = g.k % 8 == 0 && aligned16(g.weight);
  const bool paired = g.thw % 2 == 0 && aligned4(g.y);
  conv_mma_kernel<T><<<blocks_for(g.tiles), kThreads, 0, stream>>>(g, w_vec, paired);
  return cudaGetLastError();
}

int launch_f32(const ConvGeometry& g, cudaStream_t stream) {
  conv_f32_kernel<<<blocks_for(g.tiles), kThreads, 0, stream>>>(g);
  return cudaGetLastError();
}

bool valid_kernel_extent(int64_t k) { return k >= 1 && k <= kMaxKernel && k % 2 == 1; }

}  // namespace

int dcae_chunk_causal_conv3d_cuda(const DcaeChunkConvParams& p, void* stream_ptr) {
  if (p.batch < 0 || p.cin < 0 || p.cout < 0 || p.frames < 0 || p.height < 0 || p.width < 0)
    return cudaErrorInvalidValue;
  if (!valid_kernel_extent(p.kt) || !valid_kernel_extent(p.kh) || !valid_kernel_extent(p.kw))
    return cudaErrorInvalidValue;
  const int64_t pt = (p.kt - 1) / 2;
  if (p.chunk < 1 || pt > p.chunk || p.frames % p.chunk != 0) return cudaErrorInvalidValue;
  if (p.dtype != DType::kFloat32 && p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16)
    return cudaErrorInvalidValue;
  ConvGeometry g{};
  g.hw = p.height * p.width;
  g.thw = p.frames * g.hw;
  g.n = p.batch * g.thw;
  if (g.n == 0 || p.cout == 0) return cudaSuccess;
  // cin == 0 still launches: y is the bias (or zeros), and neither x nor the weight is read.
  if (p.y == nullptr || (p.cin > 0 && (p.x == nullptr || p.weight == nullptr))) return cudaErrorInvalidValue;
  g.x = p.x, g.cache = p.cache, g.weight = p.weight, g.bias = p.bias, g.y = p.y;
  g.cin = p.cin, g.cout = p.cout, g.frames = p.frames, g.height = p.height, g.width = p.width, g.chunk = p.chunk;
  g.kt = static_cast<int>(p.kt), g.kh = static_cast<int>(p.kh), g.kw = static_cast<int>(p.kw);
  g.taps = g.kt * g.kh * g.kw;
  g.pt = static_cast<int>(pt), g.ph = (g.kh - 1) / 2, g.pw = (g.kw - 1) / 2;
  g.k = p.cin * g.taps;
  g.m_tiles = ceil_div(p.cout, kTileM);
  g.tiles = g.m_tiles * ceil_div(g.n, kTileN);
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.dtype) {
    case DType::kFloat32: return launch_f32(g, stream);
    case DType::kFloat16: return launch_mma<__half>(g, stream);
    case DType::kBFloat16: return launch_mma<__nv_bfloat16>(g, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace genaccel::cuda
