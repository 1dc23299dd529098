// Elementwise CUDA kernels of SLA's linear branch: the bf16 part split that lets a bf16 tensor-core
// GEMM sum float32 operands exactly, the per-token rows around the GEMMs (feature maps, augmented V,
// the backward's row terms and the gradient through phi) and the final normalisation O^l = num / den.
#include "cuda/attention/sla/linear_rows.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "genaccel/common/dispatch.h"
#include "genaccel/common/float_convert.cuh"

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

// The same, four columns per thread (cols % 4 == 0, x 16-byte and out 8-byte aligned): one 16-byte
// load and one 8-byte store per part, for the wide D * (D + 4) rows of SLA's per-block sums.
template <int kParts>
__global__ void split_bf16_rows_vec4_kernel(const float4* __restrict__ x, uint2* __restrict__ out,
                                            int64_t plane4, int64_t n4) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n4; i += int64_t{gridDim.x} * kThreads) {
    const int64_t b = i / plane4, rc = i - b * plane4;
    float4 rest = x[i];
    uint2* dst = out + b * kParts * plane4 + rc;
#pragma unroll
    for (int p = 0; p < kParts; ++p) {
      const __nv_bfloat162 lo = __floats2bfloat162_rn(rest.x, rest.y), hi = __floats2bfloat162_rn(rest.z, rest.w);
      dst[p * plane4] = make_uint2(*reinterpret_cast<const unsigned*>(&lo), *reinterpret_cast<const unsigned*>(&hi));
      const float2 l = __bfloat1622float2(lo), h = __bfloat1622float2(hi);
      rest.x -= l.x, rest.y -= l.y, rest.z -= h.x, rest.w -= h.y;
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

// One thread per four columns of a row (dim % 4 == 0; the CUDA path has D 32, 64, 96 or 128): 16-byte
// loads, 8-byte stores. num rows are `quad_stride` quads apart; the denominator is column dim.
template <class T>
__global__ void normalize_kernel(const float4* __restrict__ num, uint2* __restrict__ out,
                                 float* __restrict__ denom, int64_t rows, int64_t padded_rows,
                                 int64_t quads, int64_t quad_stride, float eps, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n; i += int64_t{gridDim.x} * kThreads) {
    const int64_t row = i / quads, c = i - row * quads;   // row of (groups, rows)
    const int64_t g = row / rows, r = row - g * rows;
    const int64_t src = (g * padded_rows + r) * quad_stride;
    const float d = reinterpret_cast<const float*>(num + src)[4 * quads] + eps;
    const float s = d > 0.f ? 1.f / d : (isnan(d) ? d : 0.f);  // no marginal key: 0; NaN stays NaN
    const float4 x = num[src + c];
    out[i] = Pack4<T>::make(x.x * s, x.y * s, x.z * s, x.w * s);
    if (c == 0) denom[row] = d;
  }
}

// ---- Per-token rows: one warp per row, each lane holding E = D / 32 consecutive features. ----

constexpr int kRowWarps = 8;

__device__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

template <int E, class T>
__device__ void load_lane(const T* __restrict__ row, int lane, float (&x)[E]) {
#pragma unroll
  for (int e = 0; e < E; ++e) x[e] = to_float(row[lane * E + e]);
}

template <int E>
__device__ void store_lane(float* __restrict__ row, int lane, const float (&x)[E]) {
#pragma unroll
  for (int e = 0; e < E; ++e) row[lane * E + e] = x[e];
}

// phi(x) in place, as ATen computes it for the CPU op: softmax over the features, elu + 1, relu.
// NaN inputs stay NaN (fmaxf skips a NaN, but exp(NaN - m) is NaN again).
template <int E>
__device__ void feature_map_lane(attention::SlaFeatureMap f, float (&x)[E]) {
  if (f == attention::SlaFeatureMap::kSoftmax) {
    float m = -INFINITY, s = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) m = fmaxf(m, x[e]);
    m = warp_max(m);
#pragma unroll
    for (int e = 0; e < E; ++e) s += (x[e] = expf(x[e] - m));
    s = 1.f / warp_sum(s);
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] *= s;
  } else if (f == attention::SlaFeatureMap::kElu) {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = x[e] > 0.f ? x[e] + 1.f : expf(x[e]);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = x[e] < 0.f ? 0.f : x[e];  // relu keeping NaN
  }
}

// J_phi^T g from phi alone: softmax phi (g - <g, phi>); elu + 1 has slope 1 where phi > 1 (x > 0)
// and phi elsewhere; relu slope 1 where phi > 0.
template <int E>
__device__ void feature_map_vjp_lane(attention::SlaFeatureMap f, const float (&phi)[E], float (&g)[E]) {
  if (f == attention::SlaFeatureMap::kSoftmax) {
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < E; ++e) dot += g[e] * phi[e];
    dot = warp_sum(dot);
#pragma unroll
    for (int e = 0; e < E; ++e) g[e] = phi[e] * (g[e] - dot);
  } else if (f == attention::SlaFeatureMap::kElu) {
#pragma unroll
    for (int e = 0; e < E; ++e) g[e] *= phi[e] > 1.f ? 1.f : phi[e];
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) g[e] = phi[e] > 0.f ? g[e] : 0.f;
  }
}

// Zeroes a padding row of `width` floats.
__device__ void zero_row(float* __restrict__ row, int64_t width, int lane) {
  for (int64_t c = lane; c < width; c += 32) row[c] = 0.f;
}

// phi (seqs, padded_rows, D) of x (seqs, rows, D); with v also v_aug (seqs, padded_rows, width) =
// [v, 1, 0...]. Rows past `rows` are zero.
template <class T, int E>
__global__ void feature_rows_kernel(const T* __restrict__ x, const T* __restrict__ v,
                                    float* __restrict__ phi, float* __restrict__ v_aug,
                                    attention::SlaFeatureMap f, int64_t rows, int64_t padded_rows,
                                    int64_t width, int64_t total) {
  constexpr int D = 32 * E;
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t{kRowWarps} + (threadIdx.x >> 5);
  if (row >= total) return;
  const int64_t s = row / padded_rows, r = row - s * padded_rows;
  if (r >= rows) {
    zero_row(phi + row * D, D, lane);
    if (v != nullptr) zero_row(v_aug + row * width, width, lane);
    return;
  }
  const int64_t src = (s * rows + r) * D;
  float a[E];
  load_lane(x + src, lane, a);
  feature_map_lane(f, a);
  store_lane(phi + row * D, lane, a);
  if (v != nullptr) {
    load_lane(v + src, lane, a);
    store_lane(v_aug + row * width, lane, a);
    for (int64_t c = D + lane; c < width; c += 32) v_aug[row * width + c] = c == D ? 1.f : 0.f;
  }
}

// The backward's query rows: phi (seqs, padded_rows, D) and g_aug (seqs, padded_rows, width) =
// [g / den, -<g, o> / den, 0...] (zero where den <= 0: O^l was 0 there), from q, g = dO^l, o = O^l.
template <class T, int E>
__global__ void query_grad_rows_kernel(const T* __restrict__ q, const T* __restrict__ grad,
                                       const T* __restrict__ out, const float* __restrict__ denom,
                                       float* __restrict__ phi, float* __restrict__ g_aug,
                                       attention::SlaFeatureMap f, int64_t rows, int64_t padded_rows,
                                       int64_t width, int64_t total) {
  constexpr int D = 32 * E;
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t{kRowWarps} + (threadIdx.x >> 5);
  if (row >= total) return;
  const int64_t s = row / padded_rows, r = row - s * padded_rows;
  if (r >= rows) {
    zero_row(phi + row * D, D, lane);
    zero_row(g_aug + row * width, width, lane);
    return;
  }
  const int64_t src = s * rows + r;
  float a[E], o[E];
  load_lane(q + src * D, lane, a);
  feature_map_lane(f, a);
  store_lane(phi + row * D, lane, a);
  const float d = denom[src];
  const float inv = d > 0.f ? 1.f / d : 0.f;
  load_lane(grad + src * D, lane, a);
  load_lane(out + src * D, lane, o);
  float dot = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    dot += a[e] * o[e];
    a[e] *= inv;
  }
  dot = warp_sum(dot);
  store_lane(g_aug + row * width, lane, a);
  for (int64_t c = D + lane; c < width; c += 32) g_aug[row * width + c] = c == D ? -inv * dot : 0.f;
}

// out (seqs, rows, D) = base + J_phi^T dphi (or + dphi without phi), rounded once to T; dphi rows
// are `ld` floats apart in (seqs, padded_rows, ld). out may be base.
template <class T, int E, bool kVjp>
__global__ void add_grad_rows_kernel(const T* base, const float* __restrict__ phi,
                                     const float* __restrict__ dphi, int64_t ld, T* out,
                                     attention::SlaFeatureMap f, int64_t rows, int64_t padded_rows,
                                     int64_t total) {
  constexpr int D = 32 * E;
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * int64_t{kRowWarps} + (threadIdx.x >> 5);
  if (row >= total) return;
  const int64_t s = row / rows, r = row - s * rows;
  const int64_t src = s * padded_rows + r;
  float g[E], b[E];
  load_lane(dphi + src * ld, lane, g);
  if constexpr (kVjp) {
    float p[E];
    load_lane(phi + src * D, lane, p);
    feature_map_vjp_lane(f, p, g);
  }
  load_lane(base + row * D, lane, b);
#pragma unroll
  for (int e = 0; e < E; ++e) out[row * D + lane * E + e] = from_float<T>(b[e] + g[e]);
}

int64_t row_blocks(int64_t rows) { return (rows + kRowWarps - 1) / kRowWarps; }

// Calls fn(T{}, std::integral_constant<int, E>{}) for the dtype and D = 32 E in {32, 64, 96, 128}
// (sla_row_head_dim); false otherwise.
template <class Fn>
bool with_row_types(DType dtype, int64_t dim, Fn&& fn) {
  bool found = false;
  dispatch_half(dtype, [&](auto t) {
    found = dim % 32 == 0 && dispatch_int<1, 2, 3, 4>(static_cast<int>(dim / 32), [&](auto e) { fn(t, e); });
  });
  return found;
}

}  // namespace

template <int kParts>
void launch_split(const float* x, void* out, int64_t rows, int64_t cols, int64_t n, cudaStream_t s) {
  if (cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0) {
    split_bf16_rows_vec4_kernel<kParts><<<blocks_for(n / 4), kThreads, 0, s>>>(
        reinterpret_cast<const float4*>(x), static_cast<uint2*>(out), rows * cols / 4, n / 4);
  } else {
    split_bf16_rows_kernel<kParts><<<blocks_for(n), kThreads, 0, s>>>(x, static_cast<__nv_bfloat16*>(out), rows, cols, n);
  }
}

int split_bf16_rows(const float* x, void* out, int64_t batch, int64_t rows, int64_t cols, int parts, void* stream) {
  if (parts != 2 && parts != kSplitParts) return cudaErrorInvalidValue;
  const int64_t n = batch * rows * cols;
  if (n == 0) return cudaSuccess;
  const auto s = static_cast<cudaStream_t>(stream);
  if (parts == 2)
    launch_split<2>(x, out, rows, cols, n, s);
  else
    launch_split<kSplitParts>(x, out, rows, cols, n, s);
  return cudaGetLastError();
}

int sla_linear_normalize(const float* num, int64_t width, void* out, float* denom, DType dtype,
                         int64_t groups, int64_t rows, int64_t padded_rows, int64_t dim, float eps,
                         void* stream) {
  if (dim % 4 != 0 || width % 4 != 0 || width <= dim) return cudaErrorInvalidValue;
  const int64_t quads = dim / 4, n = groups * rows * quads;
  if (n == 0) return cudaSuccess;
  const auto s = static_cast<cudaStream_t>(stream);
  const int64_t grid = blocks_for(n);
  const auto* num4 = reinterpret_cast<const float4*>(num);
  auto* out4 = static_cast<uint2*>(out);
  if (dtype == DType::kBFloat16)
    normalize_kernel<__nv_bfloat16><<<grid, kThreads, 0, s>>>(num4, out4, denom, rows, padded_rows, quads,
                                                              width / 4, eps, n);
  else if (dtype == DType::kFloat16)
    normalize_kernel<__half><<<grid, kThreads, 0, s>>>(num4, out4, denom, rows, padded_rows, quads, width / 4,
                                                       eps, n);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

int sla_feature_rows(const void* x, const void* v, float* phi, float* v_aug, DType dtype,
                     attention::SlaFeatureMap f, int64_t seqs, int64_t rows, int64_t padded_rows,
                     int64_t dim, int64_t width, void* stream) {
  const int64_t total = seqs * padded_rows;
  if (total == 0) return cudaSuccess;
  if (padded_rows < rows || (v != nullptr && width <= dim)) return cudaErrorInvalidValue;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool ok = with_row_types(dtype, dim, [&](auto t, auto e) {
    using T = decltype(t);
    feature_rows_kernel<T, decltype(e)::value><<<row_blocks(total), 32 * kRowWarps, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(v), phi, v_aug, f, rows, padded_rows, width, total);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

int sla_query_grad_rows(const void* q, const void* grad, const void* out, const float* denom, float* phi,
                        float* g_aug, DType dtype, attention::SlaFeatureMap f, int64_t seqs, int64_t rows,
                        int64_t padded_rows, int64_t dim, int64_t width, void* stream) {
  const int64_t total = seqs * padded_rows;
  if (total == 0) return cudaSuccess;
  if (padded_rows < rows || width <= dim) return cudaErrorInvalidValue;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool ok = with_row_types(dtype, dim, [&](auto t, auto e) {
    using T = decltype(t);
    query_grad_rows_kernel<T, decltype(e)::value><<<row_blocks(total), 32 * kRowWarps, 0, s>>>(
        static_cast<const T*>(q), static_cast<const T*>(grad), static_cast<const T*>(out), denom, phi, g_aug, f,
        rows, padded_rows, width, total);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

int sla_add_grad_rows(const void* base, const float* phi, const float* dphi, int64_t ld, void* out,
                      DType dtype, attention::SlaFeatureMap f, int64_t seqs, int64_t rows, int64_t padded_rows,
                      int64_t dim, void* stream) {
  const int64_t total = seqs * rows;
  if (total == 0) return cudaSuccess;
  if (padded_rows < rows || ld < dim) return cudaErrorInvalidValue;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool ok = with_row_types(dtype, dim, [&](auto t, auto e) {
    using T = decltype(t);
    constexpr int E = decltype(e)::value;
    const auto* b = static_cast<const T*>(base);
    auto* o = static_cast<T*>(out);
    if (phi != nullptr)
      add_grad_rows_kernel<T, E, true><<<row_blocks(total), 32 * kRowWarps, 0, s>>>(b, phi, dphi, ld, o, f, rows,
                                                                                    padded_rows, total);
    else
      add_grad_rows_kernel<T, E, false><<<row_blocks(total), 32 * kRowWarps, 0, s>>>(b, phi, dphi, ld, o, f, rows,
                                                                                     padded_rows, total);
  });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace genaccel::cuda
