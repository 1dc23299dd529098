// LiteMLA, the ReLU linear attention of DC-AE, on CUDA (op dcae_lite_mla; the maths: include/genaccel/
// autoencoder/dcae/params.h). One kernel, a CTA per (batch * head, block of R value rows), 256 threads,
// float32 throughout (16-bit inputs are widened on load, out is rounded once):
// - state: the CTA walks every position in tiles of kTileM, staging k' = ReLU(k) (all d rows) and its R
//   rows of v in shared memory, each thread accumulating an A x B block of S[i][j] = sum_m v[i][m] k'[j][m]
//   in registers. The key sums ksum[j] = sum_m k'[j][m] (the ones-row of [V; 1]) come from the staging:
//   the thread that stages (j, lane m) keeps a running sum, reduced across the warp at the end.
// - output: the same CTA walks the positions again in tiles of kTileN, staging q' = ReLU(q) in chunks
//   of kChunkJ rows; each thread owns 2A rows x kCols positions of numerators sum_j S[i][j] q'[j][n],
//   the 8 warps split the denominator's sum_j ksum[j] q'[j][n] by j mod 8, and out = num / (den + eps).
// There is no workspace (the launcher has no allocator), so the state lives only in the CTA that made
// it; nothing is atomic, so the result is deterministic. R = 16 A rows per CTA: d <= 64 is one CTA per
// head; larger d is split into row blocks that each reread k' and q' (correct, not tuned). Shared memory
// stays under 48 KB at d = 256. Every offset is int64.
#include "cuda/autoencoder/dcae/conv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "genaccel/common/float_convert.cuh"

namespace genaccel::cuda {
namespace {

constexpr int kThreads = 256;   // 8 warps; the state pass sees them as a 16 x 16 grid
constexpr int kWarps = kThreads / 32;
constexpr int kTileM = 32;      // positions per state tile: one per lane when staging
constexpr int kStrideM = kTileM + 4;  // padded row of a state tile: float4-aligned, conflict-free reads
constexpr int kTileN = 64;      // positions per output tile
constexpr int kCols = kTileN / 32;  // output positions per thread (lane, lane + 32)
constexpr int kChunkJ = 32;     // q' rows staged at a time (a multiple of kWarps)
constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // the (batch, head) loop is grid-stride

static_assert(kChunkJ % kWarps == 0, "the denominator split j mod kWarps must survive the chunking");
static_assert(kTileM % 4 == 0 && kStrideM % 4 == 0, "state tiles are read as float4");

// The shared floats of a config: the state tiles (k' of 16 B rows, v of 16 A rows), which the output
// pass reuses for S (16 A x d) and the q' chunk once the state pass is over; then ksum and the
// denominator partials.
template <int A, int B>
struct Smem {
  static constexpr int kRows = 16 * A;  // R: value rows of a CTA
  static constexpr int kDCap = 16 * B;  // the largest d of the config
  static constexpr int kStateTiles = (kDCap + kRows) * kStrideM;
  static constexpr int kQOffset = kRows * kDCap;  // q' chunk after S
  static constexpr int kRegion = std::max(kStateTiles, kQOffset + kChunkJ * kTileN);
  static constexpr int kFloats = kRegion + kDCap + kWarps * kTileN;
  static_assert(kFloats * 4 <= 48 * 1024, "static shared memory is capped at 48 KB");
  static_assert(kRegion % 4 == 0 && kQOffset % 4 == 0, "float4-aligned sub-arrays");
};

// ReLU that keeps NaN (as torch.relu does): fmaxf(NaN, 0) would return 0.
__device__ __forceinline__ float relu(float x) { return x < 0.f ? 0.f : x; }

struct MlaGeometry {
  const void* qkv;
  void* out;
  int64_t items;  // batch * heads
  int64_t n;      // positions
  int d;          // head_dim
  float eps;
};

// A = value rows per thread in the state pass (R = 16 A), B = k' columns per thread (d <= 16 B).
template <class T, int A, int B>
__global__ void __launch_bounds__(kThreads) lite_mla_kernel(const __grid_constant__ MlaGeometry g) {
  using S = Smem<A, B>;
  constexpr int R = S::kRows;
  __shared__ float4 smem4[S::kFloats / 4];
  float* smem = reinterpret_cast<float*>(smem4);
  float* ks = smem;                          // state pass: k' tile (16 B, kStrideM)
  float* vs = smem + S::kDCap * kStrideM;    // state pass: v tile (R, kStrideM)
  float* st = smem;                          // output pass: S (R, d), over the dead state tiles
  float* qs = smem + S::kQOffset;            // output pass: q' chunk (kChunkJ, kTileN)
  float* ksum = smem + S::kRegion;           // (d)
  float* red = ksum + S::kDCap;              // denominator partials (kWarps, kTileN)

  const int d = g.d;
  const int64_t n = g.n;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tr = tid / 16, tc = tid % 16;    // the state pass's 16 x 16 thread grid
  const int r0 = static_cast<int>(blockIdx.y) * R;  // the CTA's first value row
  const T* qkv = static_cast<const T*>(g.qkv);
  T* out = static_cast<T*>(g.out);

  for (int64_t item = blockIdx.x; item < g.items; item += gridDim.x) {
    const T* q = qkv + item * 3 * d * n;  // item = b heads + h: a head's q, k, v are consecutive
    const T* k = q + static_cast<int64_t>(d) * n;
    const T* v = k + static_cast<int64_t>(d) * n;
    T* o = out + item * d * n;

    // ---- state pass ----
    float acc[A][B];
    float kpart[2 * B];  // running sums of the k' this thread stages: rows warp + 8 s, lane m
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
      for (int b = 0; b < B; ++b) acc[a][b] = 0.f;
#pragma unroll
    for (int s = 0; s < 2 * B; ++s) kpart[s] = 0.f;

    for (int64_t m0 = 0; m0 < n; m0 += kTileM) {
      const int64_t m = m0 + lane;
      const bool valid = m < n;
      // Every padded slot (rows past d or R, positions past n) is written as 0, never left stale.
#pragma unroll
      for (int s = 0; s < 2 * B; ++s) {
        const int j = warp + kWarps * s;
        const float x = (valid && j < d) ? relu(to_float(k[j * n + m])) : 0.f;
        ks[j * kStrideM + lane] = x;
        kpart[s] += x;
      }
#pragma unroll
      for (int s = 0; s < 2 * A; ++s) {
        const int i = warp + kWarps * s, row = r0 + i;
        vs[i * kStrideM + lane] = (valid && row < d) ? to_float(v[row * n + m]) : 0.f;
      }
      __syncthreads();
#pragma unroll
      for (int mm = 0; mm < kTileM; mm += 4) {
        float4 kv[B], vv[A];
#pragma unroll
        for (int b = 0; b < B; ++b) kv[b] = *reinterpret_cast<const float4*>(ks + (tc + 16 * b) * kStrideM + mm);
#pragma unroll
        for (int a = 0; a < A; ++a) vv[a] = *reinterpret_cast<const float4*>(vs + (tr + 16 * a) * kStrideM + mm);
#pragma unroll
        for (int a = 0; a < A; ++a)
#pragma unroll
          for (int b = 0; b < B; ++b) {
            float t = acc[a][b];
            t = fmaf(vv[a].x, kv[b].x, t);
            t = fmaf(vv[a].y, kv[b].y, t);
            t = fmaf(vv[a].z, kv[b].z, t);
            t = fmaf(vv[a].w, kv[b].w, t);
            acc[a][b] = t;
          }
      }
      __syncthreads();  // the tiles are rewritten next (or become S and q')
    }

    // S over the dead state tiles (the loop's last barrier ordered every read of them before this);
    // rows past d hold zeros (their v was staged as 0), so the output pass reads no stale shared.
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
      for (int b = 0; b < B; ++b) {
        const int j = tc + 16 * b;
        if (j < d) st[(tr + 16 * a) * d + j] = acc[a][b];
      }
#pragma unroll
    for (int s = 0; s < 2 * B; ++s) {
      float x = kpart[s];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
      const int j = warp + kWarps * s;
      if (lane == 0 && j < d) ksum[j] = x;
    }
    // (The first barrier of the output pass publishes S and ksum.)

    // ---- output pass ----
    for (int64_t n0 = 0; n0 < n; n0 += kTileN) {
      float num[2 * A][kCols], den[kCols];
#pragma unroll
      for (int a = 0; a < 2 * A; ++a)
#pragma unroll
        for (int c = 0; c < kCols; ++c) num[a][c] = 0.f;
#pragma unroll
      for (int c = 0; c < kCols; ++c) den[c] = 0.f;

      for (int j0 = 0; j0 < d; j0 += kChunkJ) {
        const int jc = min(kChunkJ, d - j0);
#pragma unroll
        for (int s = 0; s < kChunkJ * kTileN / kThreads; ++s) {
          const int e = tid + kThreads * s, jj = e / kTileN, col = e % kTileN;
          const int64_t pos = n0 + col;
          qs[e] = (jj < jc && pos < n) ? relu(to_float(q[(j0 + jj) * n + pos])) : 0.f;
        }
        __syncthreads();
        // Rows warp + 8 a of the block: the S reads are warp-uniform broadcasts.
#pragma unroll 4
        for (int j = 0; j < jc; ++j) {
          float qv[kCols];
#pragma unroll
          for (int c = 0; c < kCols; ++c) qv[c] = qs[j * kTileN + lane + 32 * c];
#pragma unroll
          for (int a = 0; a < 2 * A; ++a) {
            const float sv = st[(warp + kWarps * a) * d + j0 + j];
#pragma unroll
            for (int c = 0; c < kCols; ++c) num[a][c] = fmaf(sv, qv[c], num[a][c]);
          }
        }
        // j0 is a multiple of kWarps, so warp w sums the j = w mod 8 of the whole head.
        for (int j = warp; j < jc; j += kWarps) {
          const float kv = ksum[j0 + j];
#pragma unroll
          for (int c = 0; c < kCols; ++c) den[c] = fmaf(kv, qs[j * kTileN + lane + 32 * c], den[c]);
        }
        __syncthreads();  // qs is restaged next
      }
#pragma unroll
      for (int c = 0; c < kCols; ++c) red[warp * kTileN + lane + 32 * c] = den[c];
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int col = lane + 32 * c;
        const int64_t pos = n0 + col;
        // The partials in a fixed order (deterministic), then eps in float32 (1e-15 is no 16-bit value).
        float dsum = red[col];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) dsum = __fadd_rn(dsum, red[w * kTileN + col]);
        const float denom = __fadd_rn(dsum, g.eps);
        if (pos >= n) continue;
#pragma unroll
        for (int a = 0; a < 2 * A; ++a) {
          const int row = r0 + warp + kWarps * a;
          if (row < d) o[row * n + pos] = from_float<T>(__fdiv_rn(num[a][c], denom));
        }
      }
      // red is rewritten only after the next tile's barriers; S, ksum and qs were last read above.
    }
    __syncthreads();  // the next item restages over S, q', ksum and red
  }
}

template <class T, int A, int B>
int launch_config(const MlaGeometry& g, cudaStream_t stream) {
  constexpr int R = Smem<A, B>::kRows;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(g.items, kMaxBlocks)),
                  static_cast<unsigned>((g.d + R - 1) / R));
  lite_mla_kernel<T, A, B><<<grid, kThreads, 0, stream>>>(g);
  return cudaGetLastError();
}

// The config by d: d <= 64 in one CTA per head (R >= d), then 32- and 16-row blocks.
template <class T>
int launch(const MlaGeometry& g, cudaStream_t stream) {
  if (g.d <= 16) return launch_config<T, 1, 1>(g, stream);
  if (g.d <= 32) return launch_config<T, 2, 2>(g, stream);
  if (g.d <= 64) return launch_config<T, 4, 4>(g, stream);
  if (g.d <= 128) return launch_config<T, 2, 8>(g, stream);
  return launch_config<T, 1, 16>(g, stream);
}

}  // namespace

int dcae_lite_mla_cuda(const DcaeLiteMlaParams& p, void* stream_ptr) {
  if (p.batch < 0 || p.heads < 0 || p.n < 0 || p.head_dim < 1 || p.head_dim > kMaxHeadDim) return cudaErrorInvalidValue;
  if (!std::isfinite(p.eps) || p.eps < 0.f) return cudaErrorInvalidValue;
  const int64_t items = p.batch * p.heads;
  if (items == 0 || p.n == 0) return cudaSuccess;
  if (p.qkv == nullptr || p.out == nullptr) return cudaErrorInvalidValue;
  MlaGeometry g{};
  g.qkv = p.qkv, g.out = p.out, g.items = items, g.n = p.n, g.d = static_cast<int>(p.head_dim), g.eps = p.eps;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.dtype) {
    case DType::kFloat32: return launch<float>(g, stream);
    case DType::kFloat16: return launch<__half>(g, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(g, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace genaccel::cuda
