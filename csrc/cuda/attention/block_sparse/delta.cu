// delta = rowsum(dout * out) in float32, the row term of the attention backwards, in one pass over
// dout and out (widening them to float32 first, as torch ops would, costs three more passes).
// Eight lanes share a row, so a warp covers four rows; each lane reads 16 bytes at a time when the
// rows allow it.
#include "cuda/attention/block_sparse/delta.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "genaccel/common/float_convert.cuh"

namespace genaccel::cuda {
namespace {

using attention::AttentionDeltaParams;

constexpr int kThreads = 256;
constexpr int kLanesPerRow = 8;
constexpr int kRowsPerWarp = 32 / kLanesPerRow;
constexpr int64_t kMaxBlocks = 65536;  // the loop below strides over the rest

// Sum of the products of the 16 bytes at a and b (kPerVec elements).
template <class T>
__device__ __forceinline__ float dot16(const T* a, const T* b) {
  constexpr int kPerVec = 16 / sizeof(T);
  const uint4 va = *reinterpret_cast<const uint4*>(a), vb = *reinterpret_cast<const uint4*>(b);
  const T* ea = reinterpret_cast<const T*>(&va);
  const T* eb = reinterpret_cast<const T*>(&vb);
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < kPerVec; ++j) s += to_float(ea[j]) * to_float(eb[j]);
  return s;
}

template <class T, bool kVector>
__global__ void __launch_bounds__(kThreads) attention_delta_kernel(const AttentionDeltaParams p) {
  constexpr int kPerVec = 16 / sizeof(T);
  const int64_t total = p.batch * p.heads * p.rows;
  const int lane = threadIdx.x % 32, sub = lane % kLanesPerRow;
  const int64_t warps = int64_t{gridDim.x} * (kThreads / 32);
  // The loop bound is uniform across the warp, so every lane reaches the shuffles.
  for (int64_t w = blockIdx.x * int64_t{kThreads / 32} + threadIdx.x / 32; w * kRowsPerWarp < total; w += warps) {
    const int64_t r = w * kRowsPerWarp + lane / kLanesPerRow;
    float acc = 0.f;
    if (r < total) {
      const int64_t n = r % p.rows, bh = r / p.rows, h = bh % p.heads, b = bh / p.heads;
      const T* d = static_cast<const T*>(p.dout) + b * p.do_batch_stride + h * p.do_head_stride + n * p.do_row_stride;
      const T* o = static_cast<const T*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride + n * p.o_row_stride;
      if constexpr (kVector) {
        for (int64_t c = sub * kPerVec; c < p.dim; c += kLanesPerRow * kPerVec) acc += dot16(d + c, o + c);
      } else {
        for (int64_t c = sub; c < p.dim; c += kLanesPerRow) acc += to_float(d[c]) * to_float(o[c]);
      }
    }
#pragma unroll
    for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
    if (r < total && sub == 0) p.delta[r] = acc;
  }
}

// 16-byte loads need 16-byte aligned rows: base pointers aligned, the dim and every stride a
// multiple of the elements per 16 bytes.
template <class T>
bool vector_rows(const AttentionDeltaParams& p) {
  constexpr int64_t e = 16 / sizeof(T);
  return reinterpret_cast<uintptr_t>(p.dout) % 16 == 0 && reinterpret_cast<uintptr_t>(p.out) % 16 == 0 &&
         p.dim % e == 0 && p.do_batch_stride % e == 0 && p.do_head_stride % e == 0 && p.do_row_stride % e == 0 &&
         p.o_batch_stride % e == 0 && p.o_head_stride % e == 0 && p.o_row_stride % e == 0;
}

template <class T>
int launch(const AttentionDeltaParams& p, cudaStream_t stream) {
  const int64_t total = p.batch * p.heads * p.rows;
  const int64_t rows_per_block = int64_t{kThreads / 32} * kRowsPerWarp;
  const auto blocks = static_cast<unsigned>(std::min((total + rows_per_block - 1) / rows_per_block, kMaxBlocks));
  if (vector_rows<T>(p))
    attention_delta_kernel<T, true><<<blocks, kThreads, 0, stream>>>(p);
  else
    attention_delta_kernel<T, false><<<blocks, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int attention_delta(const AttentionDeltaParams& p, DType dtype, void* stream) {
  if (p.batch * p.heads * p.rows == 0) return cudaSuccess;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kBFloat16: return launch<__nv_bfloat16>(p, s);
    case DType::kFloat16: return launch<__half>(p, s);
    default: return launch<float>(p, s);
  }
}

}  // namespace genaccel::cuda
