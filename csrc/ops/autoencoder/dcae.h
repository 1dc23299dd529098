// Input checks of the DC-AE ops (chunk-causal conv3d, the space <-> channel shortcuts), shared by their
// CPU, CUDA and Meta registrations (csrc/ops/autoencoder/dcae.cpp, dcae_cuda.cpp). The maths:
// python/genaccel/autoencoder/dcae/reference.py.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "genaccel/autoencoder/dcae/params.h"

namespace genaccel::ops {

// Every check of op dcae_chunk_causal_conv3d, on symbolic sizes: x 5-D (B, Cin, T, H, W) float32 /
// bfloat16 / float16; weight (Cout, Cin, kt, kh, kw) of x's dtype and device, kt, kh, kw odd; bias None or
// (Cout,); chunk_size >= 1 dividing T and >= p = (kt - 1) / 2; cache None or (B, Cin, p, H, W). Raises
// naming dcae_chunk_causal_conv3d and the argument.
void check_dcae_chunk_causal_conv3d_op(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t chunk_size,
                                       const std::optional<at::Tensor>& cache);

// The kernels' params for checked contiguous tensors and y (B, Cout, T, H, W) contiguous.
DcaeChunkConvParams dcae_chunk_conv_params(const at::Tensor& x, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, int64_t chunk_size,
                                           const std::optional<at::Tensor>& cache, at::Tensor& y);

// Every check of ops dcae_space_to_channel (to_channel) and dcae_channel_to_space: x 4-D (B, C, H, W)
// with rt == 1, or 5-D (B, C, T, H, W), float32 / bfloat16 / float16; r, rt >= 1; space_to_channel: H, W
// multiples of r, T of rt, out_channels >= 1 dividing C * rt * r * r; channel_to_space: C dividing
// out_channels * rt * r * r. Raises naming `op` and the argument.
void check_dcae_shuffle_op(const char* op, const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels,
                           bool to_channel);

// The output shape of a checked shuffle op.
std::vector<c10::SymInt> dcae_shuffle_out_shape(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels,
                                                bool to_channel);

// The kernels' params for a checked contiguous x and y of dcae_shuffle_out_shape.
DcaeShuffleParams dcae_shuffle_params(const at::Tensor& x, at::Tensor& y, int64_t r, int64_t rt, bool to_channel);

// Every check of op dcae_lite_mla: qkv 4-D (B, 3 heads head_dim, H, W) float32 / bfloat16 / float16,
// head_dim in [1, 256] dividing its channels by 3 head_dim, eps finite and >= 0. Raises naming
// dcae_lite_mla and the argument.
void check_dcae_lite_mla_op(const at::Tensor& qkv, int64_t head_dim, double eps);

// The kernels' params for a checked contiguous qkv and out (B, heads head_dim, H, W).
DcaeLiteMlaParams dcae_lite_mla_params(const at::Tensor& qkv, int64_t head_dim, double eps, at::Tensor& out);

}  // namespace genaccel::ops
