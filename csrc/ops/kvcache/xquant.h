// Input checks of the XQuant group-quantization ops, shared by their CPU, CUDA and Meta registrations
// (csrc/ops/kvcache/xquant.cpp, xquant_cuda.cpp). The layout: python/genaccel/kvcache/xquant/reference.py.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "genaccel/kvcache/xquant/params.h"

namespace genaccel::ops {

// The largest group the ops take (a group's codes are one kernel's work item).
constexpr int64_t kXquantMaxGroup = 1 << 16;

// Every check of op xquant_quantize, on symbolic sizes: x 2-D (rows, K) float32/bfloat16/float16 with a
// contiguous last dim or not (copied then), bits in {2, 3, 4, 8}, group_size a multiple of 8 in
// [8, kXquantMaxGroup]. Raises naming xquant_quantize and the argument.
void check_xquant_quantize_op(const at::Tensor& x, int64_t bits, int64_t group_size);

// The outputs of xquant_quantize for x (rows, K), uninitialised: codes uint8 (rows, ceil(K bits / 8)),
// scales float16 (rows, G), zeros uint8 (rows, ceil(G bits / 8)) or float16 (rows, G) with fp16_zero;
// G = ceil(K / group_size).
std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_xquant_quantize_outputs(const at::Tensor& x, int64_t bits,
                                                                             int64_t group_size, bool fp16_zero);

// Every check of op xquant_dequantize: codes, scales, zeros of the shapes and dtypes above for `cols`
// columns (zeros' dtype says which zero point: uint8 packed b-bit, float16 offsets), on one device;
// dtype float32/bfloat16/float16. Raises naming xquant_dequantize and the argument.
void check_xquant_dequantize_op(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                                int64_t bits, int64_t group_size, int64_t cols, at::ScalarType dtype);

// Every check of op xquant_matmul: the codes as for xquant_dequantize (rows, cols), weight 2-D (N, cols)
// float32/bfloat16/float16 on their device, bias None or (N,) of weight's dtype and device.
void check_xquant_matmul_op(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros, int64_t bits,
                            int64_t group_size, int64_t cols, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias);

// Every check of op xquant_weighted_sum: a 3-D (batch, M, tokens) float32/bfloat16/float16, the codes as
// for xquant_dequantize with batch * tokens rows, on a's device.
void check_xquant_weighted_sum_op(const at::Tensor& a, const at::Tensor& codes, const at::Tensor& scales,
                                  const at::Tensor& zeros, int64_t bits, int64_t group_size, int64_t cols);

// The kernels' view of checked contiguous codes, scales and zeros of (rows, cols) values.
XquantCodes xquant_codes(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros, int64_t bits,
                         int64_t group_size, int64_t cols);

// The products' params: contiguous weight (bias) / a and out of the op's output shape.
XquantMatmulParams xquant_matmul_params(const XquantCodes& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, at::Tensor& out);
XquantWeightedSumParams xquant_weighted_sum_params(const XquantCodes& x, const at::Tensor& a, at::Tensor& out);

// The kernels' params for checked tensors: x with a contiguous last dim, the outputs of
// empty_xquant_quantize_outputs (zero_codes left null: the CUDA registration sets its scratch).
XquantQuantizeParams xquant_quantize_params(const at::Tensor& x, int64_t bits, int64_t group_size, bool fp16_zero,
                                            at::Tensor& codes, at::Tensor& scales, at::Tensor& zeros);

// The same for the dequantizer: contiguous codes, scales, zeros and out (rows, cols).
XquantDequantizeParams xquant_dequantize_params(const at::Tensor& codes, const at::Tensor& scales,
                                                const at::Tensor& zeros, int64_t bits, int64_t group_size,
                                                at::Tensor& out);

}  // namespace genaccel::ops
