// SVG2 k-means on CUDA, written plainly (not tuned on a GPU yet; CHANGELOG.md):
// - assign: one thread block per (batch, head, tile of 128 tokens), one token per thread; centroids
//   pass through shared memory 16 at a time with their squared norms, and each thread keeps a running
//   argmin of ||c||^2 - 2 x.c (||x||^2 is the same for every centroid of a token), so the N x C
//   distance matrix is never written;
// - update: atomicAdd of every token's row into its cluster's float32 sum (and of 1 into its count),
//   then a finalize kernel per (batch, head, centroid) forms the means (empty clusters keep theirs)
//   and folds the squared move into a per-(batch, head) maximum, and a converge kernel sets the
//   (batch, head)'s done flag when the move is below tol.
// The kernels of every later iteration read the flags and return at once for finished (batch, head)s:
// the iteration loop never waits for the host.
#include "cuda/attention/svg2/kmeans.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "genaccel/common/float_convert.cuh"

namespace genaccel::cuda {
namespace {

constexpr int kAssignThreads = 128;  // tokens per assign block
constexpr int kTileCentroids = 16;   // centroids per shared-memory tile
constexpr int kAccumTokens = 32;     // tokens per accumulate block
constexpr int kThreads = 256;
constexpr unsigned kMaxGridY = 65535;

struct State {
  int32_t* poisoned;
  int32_t* done;
  float* shift;  // the largest squared move of the iteration (non-negative: its bits order like ints)
};

template <class T>
__device__ __forceinline__ const T* head_rows(const Svg2KmeansCudaParams& p, int64_t bh) {
  return static_cast<const T*>(p.x) + (bh / p.heads) * p.x_batch_stride + (bh % p.heads) * p.x_head_stride;
}

// poisoned[bh] = 1 when x[bh] or init[bh] holds a NaN or an infinity.
template <class T>
__global__ void __launch_bounds__(kThreads) finite_kernel(Svg2KmeansCudaParams p, State s) {
  const int64_t bh_count = p.batch * p.heads;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    const T* x = head_rows<T>(p, bh);
    const int64_t elems = p.n * p.d;
    bool bad = false;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < elems;
         e += static_cast<int64_t>(gridDim.x) * kThreads)
      bad |= !isfinite(to_float(x[(e / p.d) * p.x_row_stride + e % p.d]));
    const float* c = p.init + bh * p.c * p.d;
    for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < p.c * p.d;
         e += static_cast<int64_t>(gridDim.x) * kThreads)
      bad |= !isfinite(c[e]);
    if (bad) s.poisoned[bh] = 1;
  }
}

template <class T>
__global__ void __launch_bounds__(kAssignThreads) assign_kernel(Svg2KmeansCudaParams p, State s, bool final_pass) {
  extern __shared__ float shared[];
  float* tile = shared;                              // kTileCentroids x d
  float* norms = shared + kTileCentroids * p.d;      // kTileCentroids
  const int64_t bh_count = p.batch * p.heads, d = p.d;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    if (s.poisoned[bh] || (!final_pass && s.done[bh])) continue;  // uniform over the block
    const int64_t t = static_cast<int64_t>(blockIdx.x) * kAssignThreads + threadIdx.x;
    const bool active = t < p.n;
    const T* x = head_rows<T>(p, bh) + (active ? t : 0) * p.x_row_stride;
    const float* cent = p.centroids + bh * p.c * d;
    float best = __int_as_float(0x7f800000);  // +inf
    int32_t best_index = 0;
    for (int64_t j0 = 0; j0 < p.c; j0 += kTileCentroids) {
      const int64_t tile_count = min(static_cast<int64_t>(kTileCentroids), p.c - j0);
      __syncthreads();  // the previous tile is no longer read
      for (int64_t e = threadIdx.x; e < kTileCentroids * d; e += kAssignThreads) {
        const int64_t j = e / d;
        tile[e] = j < tile_count ? cent[(j0 + j) * d + e % d] : 0.f;
      }
      __syncthreads();
      if (threadIdx.x < kTileCentroids) {
        float sq = 0.f;
        for (int64_t k = 0; k < d; ++k) sq = fmaf(tile[threadIdx.x * d + k], tile[threadIdx.x * d + k], sq);
        norms[threadIdx.x] = sq;
      }
      __syncthreads();
      if (active) {
        float acc[kTileCentroids];
#pragma unroll
        for (int j = 0; j < kTileCentroids; ++j) acc[j] = 0.f;
        for (int64_t k = 0; k < d; ++k) {
          const float xv = to_float(x[k]);
#pragma unroll
          for (int j = 0; j < kTileCentroids; ++j) acc[j] = fmaf(xv, tile[j * d + k], acc[j]);
        }
#pragma unroll
        for (int j = 0; j < kTileCentroids; ++j) {
          const float dist = norms[j] - 2.f * acc[j];
          if (j < tile_count && dist < best) {  // strict: the lowest index among equals stays
            best = dist;
            best_index = static_cast<int32_t>(j0 + j);
          }
        }
      }
    }
    if (active) p.labels[bh * p.n + t] = best_index;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) accumulate_kernel(Svg2KmeansCudaParams p, State s) {
  const int64_t bh_count = p.batch * p.heads, d = p.d;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    if (s.poisoned[bh] || s.done[bh]) continue;
    const T* x = head_rows<T>(p, bh);
    const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kAccumTokens;
    const int64_t tokens = min(static_cast<int64_t>(kAccumTokens), p.n - t0);
    for (int64_t e = threadIdx.x; e < tokens * d; e += kThreads) {
      const int64_t t = t0 + e / d, k = e % d;
      const int64_t label = p.labels[bh * p.n + t];
      atomicAdd(p.sums + (bh * p.c + label) * d + k, to_float(x[t * p.x_row_stride + k]));
    }
    for (int64_t i = threadIdx.x; i < tokens; i += kThreads)
      atomicAdd(p.counts + bh * p.c + p.labels[bh * p.n + t0 + i], 1);
  }
}

// One block per (batch, head, centroid): the mean (or the old centroid for an empty cluster) and
// its squared move, folded into the (batch, head)'s maximum.
__global__ void __launch_bounds__(kThreads) finalize_kernel(Svg2KmeansCudaParams p, State s) {
  __shared__ float partial[kThreads];
  const int64_t bh_count = p.batch * p.heads, d = p.d, j = blockIdx.x;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    if (s.poisoned[bh] || s.done[bh]) continue;
    const int32_t count = p.counts[bh * p.c + j];
    float moved = 0.f;
    if (count > 0) {
      float* cent = p.centroids + (bh * p.c + j) * d;
      const float* sum = p.sums + (bh * p.c + j) * d;
      for (int64_t k = threadIdx.x; k < d; k += kThreads) {
        const float v = sum[k] / static_cast<float>(count);
        const float diff = v - cent[k];
        moved = fmaf(diff, diff, moved);
        cent[k] = v;
      }
    }
    partial[threadIdx.x] = moved;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
      if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
      __syncthreads();
    }
    if (threadIdx.x == 0 && partial[0] > 0.f)
      atomicMax(reinterpret_cast<int*>(s.shift + bh), __float_as_int(partial[0]));
    __syncthreads();
  }
}

__global__ void converge_kernel(Svg2KmeansCudaParams p, State s) {
  const int64_t bh = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (bh >= p.batch * p.heads || s.poisoned[bh] || s.done[bh]) return;
  p.iters_run[bh] += 1;
  if (p.tol > 0.f && sqrtf(s.shift[bh]) < p.tol) s.done[bh] = 1;
  s.shift[bh] = 0.f;
}

// The histogram of the final labels; poisoned (batch, head)s get labels -1 and NaN centroids.
__global__ void __launch_bounds__(kThreads) count_kernel(Svg2KmeansCudaParams p, State s) {
  const int64_t bh_count = p.batch * p.heads;
  for (int64_t bh = blockIdx.y; bh < bh_count; bh += gridDim.y) {
    const bool bad = s.poisoned[bh];
    for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < p.n;
         t += static_cast<int64_t>(gridDim.x) * kThreads) {
      if (bad) p.labels[bh * p.n + t] = -1;
      else atomicAdd(p.counts + bh * p.c + p.labels[bh * p.n + t], 1);
    }
    if (bad)
      for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < p.c * p.d;
           e += static_cast<int64_t>(gridDim.x) * kThreads)
        p.centroids[bh * p.c * p.d + e] = __int_as_float(0x7fc00000);
  }
}

unsigned grid_y(int64_t bh) { return static_cast<unsigned>(std::min<int64_t>(bh, kMaxGridY)); }
unsigned blocks_for(int64_t n, int64_t per, int64_t cap = 0x7FFFFFFF) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + per - 1) / per, cap)));
}

template <class T>
int run(const Svg2KmeansCudaParams& p, cudaStream_t stream) {
  const int64_t bh = p.batch * p.heads;
  const State s{p.state, p.state + bh, reinterpret_cast<float*>(p.state + 2 * bh)};
  cudaError_t err;
#define GENACCEL_SVG2_CHECK(call)                    \
  if ((err = (call)) != cudaSuccess) return err;
#define GENACCEL_SVG2_LAUNCHED()                     \
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  GENACCEL_SVG2_CHECK(cudaMemsetAsync(p.state, 0, 3 * bh * sizeof(int32_t), stream));
  GENACCEL_SVG2_CHECK(cudaMemsetAsync(p.iters_run, 0, bh * sizeof(int32_t), stream));
  GENACCEL_SVG2_CHECK(cudaMemcpyAsync(p.centroids, p.init, bh * p.c * p.d * sizeof(float),
                                      cudaMemcpyDeviceToDevice, stream));
  const dim3 finite_grid(blocks_for(std::max(p.n * p.d, p.c * p.d), kThreads, 1024), grid_y(bh));
  finite_kernel<T><<<finite_grid, kThreads, 0, stream>>>(p, s);
  GENACCEL_SVG2_LAUNCHED();
  const dim3 assign_grid(blocks_for(p.n, kAssignThreads), grid_y(bh));
  const size_t assign_smem = (kTileCentroids * p.d + kTileCentroids) * sizeof(float);
  const dim3 accum_grid(blocks_for(p.n, kAccumTokens), grid_y(bh));
  const dim3 finalize_grid(static_cast<unsigned>(p.c), grid_y(bh));
  const unsigned converge_blocks = blocks_for(bh, kThreads);
  for (int64_t it = 0; it < p.iters; ++it) {
    assign_kernel<T><<<assign_grid, kAssignThreads, assign_smem, stream>>>(p, s, false);
    GENACCEL_SVG2_LAUNCHED();
    GENACCEL_SVG2_CHECK(cudaMemsetAsync(p.sums, 0, bh * p.c * p.d * sizeof(float), stream));
    GENACCEL_SVG2_CHECK(cudaMemsetAsync(p.counts, 0, bh * p.c * sizeof(int32_t), stream));
    accumulate_kernel<T><<<accum_grid, kThreads, 0, stream>>>(p, s);
    GENACCEL_SVG2_LAUNCHED();
    finalize_kernel<<<finalize_grid, kThreads, 0, stream>>>(p, s);
    GENACCEL_SVG2_LAUNCHED();
    converge_kernel<<<converge_blocks, kThreads, 0, stream>>>(p, s);
    GENACCEL_SVG2_LAUNCHED();
  }
  assign_kernel<T><<<assign_grid, kAssignThreads, assign_smem, stream>>>(p, s, true);
  GENACCEL_SVG2_LAUNCHED();
  GENACCEL_SVG2_CHECK(cudaMemsetAsync(p.counts, 0, bh * p.c * sizeof(int32_t), stream));
  count_kernel<<<dim3(blocks_for(std::max(p.n, p.c * p.d), kThreads, 4096), grid_y(bh)), kThreads, 0, stream>>>(p, s);
  GENACCEL_SVG2_LAUNCHED();
#undef GENACCEL_SVG2_CHECK
#undef GENACCEL_SVG2_LAUNCHED
  return cudaSuccess;
}

}  // namespace

int svg2_kmeans(const Svg2KmeansCudaParams& p, void* stream_ptr) {
  if (p.c < 1 || p.c > p.n || p.d < 0 || p.d > 512 || p.iters < 0 || p.c > 0x7FFFFFFF) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.x_dtype) {
    case DType::kFloat16: return run<__half>(p, stream);
    case DType::kBFloat16: return run<__nv_bfloat16>(p, stream);
    default: return run<float>(p, stream);
  }
}

}  // namespace genaccel::cuda
