// CUDA registration of the DC-AE ops (kernels: csrc/cuda/autoencoder/dcae/conv.cu, shuffle.cu,
// lite_mla.cu; schema, checks and the CPU / Meta registrations: csrc/ops/autoencoder/dcae.cpp). No op
// syncs with the host (the checks read shapes only).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/autoencoder/dcae/conv.h"
#include "cuda/common/torch_util.h"
#include "ops/autoencoder/dcae.h"

namespace genaccel::ops {
namespace {
constexpr const char* kConvOp = "dcae_chunk_causal_conv3d";
constexpr const char* kToChannelOp = "dcae_space_to_channel";
constexpr const char* kToSpaceOp = "dcae_channel_to_space";
constexpr const char* kLiteMlaOp = "dcae_lite_mla";

at::Tensor dcae_chunk_causal_conv3d_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                         const std::optional<at::Tensor>& bias_in, int64_t chunk_size,
                                         const std::optional<at::Tensor>& cache_in) {
  check_dcae_chunk_causal_conv3d_op(x_in, weight_in, bias_in, chunk_size, cache_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous(), weight = weight_in.contiguous();
  std::optional<at::Tensor> bias, cache;
  if (bias_in) bias = bias_in->contiguous();
  if (cache_in) cache = cache_in->contiguous();
  auto y = at::empty({x.size(0), weight.size(0), x.size(2), x.size(3), x.size(4)}, x.options());
  if (y.numel() == 0) return y;
  const auto p = dcae_chunk_conv_params(x, weight, bias, chunk_size, cache, y);
  check_launch(cuda::dcae_chunk_causal_conv3d_cuda(p, c10::cuda::getCurrentCUDAStream().stream()),
               "chunk_causal_conv3d", kConvOp);
  return y;
}

at::Tensor dcae_shuffle_cuda(const char* op, const at::Tensor& x_in, int64_t r, int64_t rt, int64_t out_channels,
                             bool to_channel) {
  check_dcae_shuffle_op(op, x_in, r, rt, out_channels, to_channel);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  auto y = at::empty_symint(dcae_shuffle_out_shape(x, r, rt, out_channels, to_channel), x.options());
  if (y.numel() == 0) return y;
  const auto p = dcae_shuffle_params(x, y, r, rt, to_channel);
  check_launch(cuda::dcae_shuffle_cuda(p, to_channel, c10::cuda::getCurrentCUDAStream().stream()),
               to_channel ? "space_to_channel" : "channel_to_space", op);
  return y;
}

at::Tensor dcae_space_to_channel_cuda(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels) {
  return dcae_shuffle_cuda(kToChannelOp, x, r, rt, out_channels, true);
}

at::Tensor dcae_channel_to_space_cuda(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels) {
  return dcae_shuffle_cuda(kToSpaceOp, x, r, rt, out_channels, false);
}

at::Tensor dcae_lite_mla_cuda(const at::Tensor& qkv_in, int64_t head_dim, double eps) {
  check_dcae_lite_mla_op(qkv_in, head_dim, eps);
  c10::cuda::CUDAGuard guard(qkv_in.device());
  auto qkv = qkv_in.contiguous();
  auto out = at::empty({qkv.size(0), qkv.size(1) / 3, qkv.size(2), qkv.size(3)}, qkv.options());
  if (out.numel() == 0) return out;
  const auto p = dcae_lite_mla_params(qkv, head_dim, eps, out);
  check_launch(cuda::dcae_lite_mla_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), "lite_mla", kLiteMlaOp);
  return out;
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("dcae_chunk_causal_conv3d", &genaccel::ops::dcae_chunk_causal_conv3d_cuda);
  m.impl("dcae_space_to_channel", &genaccel::ops::dcae_space_to_channel_cuda);
  m.impl("dcae_channel_to_space", &genaccel::ops::dcae_channel_to_space_cuda);
  m.impl("dcae_lite_mla", &genaccel::ops::dcae_lite_mla_cuda);
}
