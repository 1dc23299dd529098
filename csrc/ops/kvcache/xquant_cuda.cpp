// CUDA registration of the XQuant ops (kernels: csrc/cuda/kvcache/xquant/quantize.cu, matmul.cu;
// schema, checks and the CPU / Meta registrations: csrc/ops/kvcache/xquant.cpp). No op syncs with
// the host (the checks read shapes only).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/common/torch_util.h"
#include "cuda/kvcache/xquant/matmul.h"
#include "cuda/kvcache/xquant/quantize.h"
#include "ops/kvcache/xquant.h"

namespace genaccel::ops {
namespace {
constexpr const char* kQuantizeOp = "xquant_quantize";
constexpr const char* kDequantizeOp = "xquant_dequantize";
constexpr const char* kMatmulOp = "xquant_matmul";
constexpr const char* kWeightedSumOp = "xquant_weighted_sum";

std::tuple<at::Tensor, at::Tensor, at::Tensor> xquant_quantize_cuda(const at::Tensor& x_in, int64_t bits,
                                                                    int64_t group_size, bool fp16_zero) {
  check_xquant_quantize_op(x_in, bits, group_size);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  auto [codes, scales, zeros] = empty_xquant_quantize_outputs(x, bits, group_size, fp16_zero);
  if (x.numel() == 0) return {codes, scales, zeros};
  // The unpacked b-bit zero points, (rows, groups), packed into zeros by the launcher's second kernel.
  at::Tensor zero_codes;
  if (!fp16_zero) zero_codes = at::empty({scales.size(0), scales.size(1)}, x.options().dtype(at::kByte));
  auto p = xquant_quantize_params(x, bits, group_size, fp16_zero, codes, scales, zeros);
  p.zero_codes = fp16_zero ? nullptr : zero_codes.mutable_data_ptr<uint8_t>();
  check_launch(cuda::xquant_quantize_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), "quantize", kQuantizeOp);
  return {codes, scales, zeros};
}

at::Tensor xquant_dequantize_cuda(const at::Tensor& codes_in, const at::Tensor& scales_in, const at::Tensor& zeros_in,
                                  int64_t bits, int64_t group_size, int64_t cols, at::ScalarType dtype) {
  check_xquant_dequantize_op(codes_in, scales_in, zeros_in, bits, group_size, cols, dtype);
  c10::cuda::CUDAGuard guard(codes_in.device());
  auto codes = codes_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  auto out = at::empty({codes.size(0), cols}, codes.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const auto p = xquant_dequantize_params(codes, scales, zeros, bits, group_size, out);
  check_launch(cuda::xquant_dequantize_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), "dequantize",
               kDequantizeOp);
  return out;
}

at::Tensor xquant_matmul_cuda(const at::Tensor& codes_in, const at::Tensor& scales_in, const at::Tensor& zeros_in,
                              int64_t bits, int64_t group_size, int64_t cols, const at::Tensor& weight_in,
                              const std::optional<at::Tensor>& bias_in) {
  check_xquant_matmul_op(codes_in, scales_in, zeros_in, bits, group_size, cols, weight_in, bias_in);
  c10::cuda::CUDAGuard guard(codes_in.device());
  auto codes = codes_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  auto weight = weight_in.contiguous();
  std::optional<at::Tensor> bias;
  if (bias_in) bias = bias_in->contiguous();
  auto out = at::empty({codes.size(0), weight.size(0)}, weight.options());
  if (out.numel() == 0) return out;
  const auto p = xquant_matmul_params(xquant_codes(codes, scales, zeros, bits, group_size, cols), weight, bias, out);
  check_launch(cuda::xquant_matmul_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), "matmul", kMatmulOp);
  return out;
}

at::Tensor xquant_weighted_sum_cuda(const at::Tensor& a_in, const at::Tensor& codes_in, const at::Tensor& scales_in,
                                    const at::Tensor& zeros_in, int64_t bits, int64_t group_size, int64_t cols) {
  check_xquant_weighted_sum_op(a_in, codes_in, scales_in, zeros_in, bits, group_size, cols);
  c10::cuda::CUDAGuard guard(codes_in.device());
  auto codes = codes_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  auto a = a_in.contiguous();
  auto out = at::empty({a.size(0), a.size(1), cols}, a.options());
  if (out.numel() == 0) return out;
  const auto p = xquant_weighted_sum_params(xquant_codes(codes, scales, zeros, bits, group_size, cols), a, out);
  check_launch(cuda::xquant_weighted_sum_cuda(p, c10::cuda::getCurrentCUDAStream().stream()), "weighted_sum",
               kWeightedSumOp);
  return out;
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("xquant_quantize", &genaccel::ops::xquant_quantize_cuda);
  m.impl("xquant_dequantize", &genaccel::ops::xquant_dequantize_cuda);
  m.impl("xquant_matmul", &genaccel::ops::xquant_matmul_cuda);
  m.impl("xquant_weighted_sum", &genaccel::ops::xquant_weighted_sum_cuda);
}
