// Input checks of the SVG2 ops (k-means over tokens, cluster permutation), shared by their CPU, CUDA
// and Meta registrations (csrc/ops/attention/svg2.cpp, svg2_cuda.cpp).
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace genaccel::ops {

// The largest head dim the SVG2 k-means kernels take (the CUDA assign kernel stages 16 centroids of
// D floats in shared memory).
constexpr int64_t kSvg2MaxHeadDim = 512;

// Every check of op svg2_kmeans, on symbolic sizes: x 4-D (B, H, N, D) float32/bfloat16/float16 with
// D <= kSvg2MaxHeadDim, B * H and N below 2^31; init_centroids float32 (B, H, C, D) on x's device with
// 1 <= C <= N; 0 <= iters < 2^31; tol finite in float32. Raises naming svg2_kmeans and the argument.
void check_svg2_kmeans_op(const at::Tensor& x, const at::Tensor& init_centroids, int64_t iters, double tol);

// The outputs of svg2_kmeans, uninitialised: labels int32 (B, H, N), centroids float32 (B, H, C, D),
// counts int32 (B, H, C), iters_run int32 (B, H).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_svg2_kmeans_outputs(const at::Tensor& x,
                                                                                    const at::Tensor& init_centroids);

// The shape checks of svg2_permute / svg2_unpermute (op names the op, name its data argument, "x" or
// "y"): a 4-D (B, H, N, D) float32/float64/bfloat16/float16 tensor and perm int32 (B, H, N) on its
// device, B * H and N below 2^31. The values of perm (a permutation of 0..N-1 per (batch, head)) are
// checked by the kernels' callers: always on the CPU, on CUDA when check_perm (one host sync).
void check_svg2_permute_op(const at::Tensor& x, const at::Tensor& perm, const char* op, const char* name);

}  // namespace genaccel::ops
