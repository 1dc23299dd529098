// CUDA registration of xquant_quantize and xquant_dequantize (kernels: csrc/cuda/kvcache/xquant/quantize.cu;
// schema, checks and the CPU / Meta registrations: csrc/ops/kvcache/xquant.cpp). Neither op syncs with
// the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/common/torch_util.h"
#include "cuda/kvcache/xquant/quantize.h"
#include "ops/kvcache/xquant.h"

namespace genaccel::ops {
namespace {
constexpr const char* kQuantizeOp = "xquant_quantize";
constexpr const char* kDequantizeOp = "xquant_dequantize";

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

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("xquant_quantize", &genaccel::ops::xquant_quantize_cuda);
  m.impl("xquant_dequantize", &genaccel::ops::xquant_dequantize_cuda);
}
