// Torch-free launcher of the CUDA kernels of op svg2_kmeans. Returns the cudaError_t of its launches
// (0 = ok); never syncs with the host.
#pragma once
#include <cstdint>

#include "genaccel/common/dtype.h"

namespace genaccel::cuda {

struct Svg2KmeansCudaParams {
  const void* x;  // (B, H, N, D) of x_dtype, last dim contiguous (element strides below)
  DType x_dtype;
  int64_t x_batch_stride, x_head_stride, x_row_stride;
  const float* init;   // (B, H, C, D) float32, contiguous
  float* centroids;    // (B, H, C, D) float32, contiguous: written
  int32_t* labels;     // (B, H, N): written
  int32_t* counts;     // (B, H, C): written
  int32_t* iters_run;  // (B, H): written
  // Workspace: sums (B * H * C * D floats) and state (3 * B * H int32: poisoned, done, the largest
  // squared centroid move of the iteration as float bits).
  float* sums;
  int32_t* state;
  int64_t batch, heads, n, c, d;
  int64_t iters;
  float tol;
};

// The rules of the CPU kernel (csrc/cpu/attention/svg2/kmeans.h): Lloyd iterations per (batch, head)
// with a device-side "done" flag per (batch, head) that later kernels read and skip on, then a final
// assignment against the returned centroids and counts as its histogram; non-finite (batch, head)s
// get labels -1, centroids NaN, counts 0. Needs 1 <= c <= n, d <= 512.
int svg2_kmeans(const Svg2KmeansCudaParams& p, void* stream);

}  // namespace genaccel::cuda
