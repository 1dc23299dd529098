// Elementwise CUDA kernels of SLA's linear branch: the bf16 part split that lets a bf16 tensor-core
// GEMM sum float32 operands exactly, and the final normalisation O^l = num / den.
#include "cuda/attention/sla_linear.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

namespace genaccel::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65536;  // grid-stride loops cover the rest

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks); }

template <int kParts>
__global__ void split_bf16_rows_kernel(const float* __restrict__ x, __nv_bfloat16* __restrict__ out,
                                       int64_t rows, int64_t cols, int64_t n) {
  const int64_t plane = rows * cols;  // one batch entry of x
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n; i += int64_t{gridDim.x} * kThreads) {
    const int64_t b = i / plane, rc = i - b * plane;
    float rest = x[i];
    __nv_bfloat16* dst = out + b * kParts * plane + rc;
#pragma unroll
    for (int p = 0; p < kParts; ++p) {
      const __nv_bfloat16 part = __float2bfloat16_rn(rest);
      dst[p * plane] = part;
      rest -= __bfloat162float(part);
    }
  }
}

template <class T>
struct Pack4;  // four output elements stored as one 8-byte word
template <>
struct Pack4<__nv_bfloat16> {
  static __device__ uint2 make(float a, float b, float c, float d) {
    __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    return make_uint2(*reinterpret_cast<unsigned*>(&lo), *reinterpret_cast<unsigned*>(&hi));
  }
};
template <>
struct Pack4<__half> {
  static __device__ uint2 make(float a, float b, float c, float d) {
    __half2 lo = __floats2half2_rn(a, b), hi = __floats2half2_rn(c, d);
    return make_uint2(*reinterpret_cast<unsigned*>(&lo), *reinterpret_cast<unsigned*>(&hi));
  }
};

// One thread per four columns of a row (dim % 4 == 0; the CUDA path has D 64 or 128): 16-byte
// loads, 8-byte stores.
template <class T>
__global__ void normalize_kernel(const float4* __restrict__ num, const float* __restrict__ den,
                                 uint2* __restrict__ out, float* __restrict__ denom, int64_t rows,
                                 int64_t padded_rows, int64_t quads, float eps, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n; i += int64_t{gridDim.x} * kThreads) {
    const int64_t row = i / quads, c = i - row * quads;   // row of (groups, rows)
    const int64_t g = row / rows, r = row - g * rows;
    const int64_t src = g * padded_rows + r;
    const float d = den[src] + eps;
    const float s = d > 0.f ? 1.f / d : (isnan(d) ? d : 0.f);  // no marginal key: 0; NaN stays NaN
    const float4 x = num[src * quads + c];
    out[i] = Pack4<T>::make(x.x * s, x.y * s, x.z * s, x.w * s);
    if (c == 0) denom[row] = d;
  }
}

}  // namespace

int split_bf16_rows(const float* x, void* out, int64_t batch, int64_t rows, int64_t cols, int parts,
                    void* stream) {
  const int64_t n = batch * rows * cols;
  if (n == 0) return cudaSuccess;
  const auto s = static_cast<cudaStream_t>(stream);
  auto* o = static_cast<__nv_bfloat16*>(out);
  const int64_t grid = blocks_for(n);
  switch (parts) {
    case 1: split_bf16_rows_kernel<1><<<grid, kThreads, 0, s>>>(x, o, rows, cols, n); break;
    case 2: split_bf16_rows_kernel<2><<<grid, kThreads, 0, s>>>(x, o, rows, cols, n); break;
    case 3: split_bf16_rows_kernel<3><<<grid, kThreads, 0, s>>>(x, o, rows, cols, n); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

int sla_linear_normalize(const float* num, const float* den, void* out, float* denom, DType dtype,
                         int64_t groups, int64_t rows, int64_t padded_rows, int64_t dim, float eps,
                         void* stream) {
  if (dim % 4 != 0) return cudaErrorInvalidValue;
  const int64_t quads = dim / 4, n = groups * rows * quads;
  if (n == 0) return cudaSuccess;
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t grid = blocks_for(n);
  const auto* num4 = reinterpret_cast<const float4*>(num);
  auto* out4 = static_cast<uint2*>(out);
  if (dtype == DType::kBFloat16)
    normalize_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(num4, den, out4, denom, rows, padded_rows, quads, eps, n);
  else if (dtype == DType::kFloat16)
    normalize_kernel<__half><<<grid, kThreads, 0, s>>>(num4, den, out4, denom, rows, padded_rows, quads, eps, n);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace genaccel::cuda
