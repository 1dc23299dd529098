// Torch-free params of the XQuant group-quantizer kernels, shared by the CPU kernels
// (csrc/cpu/kvcache/xquant/quantize.cpp) and the CUDA ones (csrc/cuda/kvcache/xquant/quantize.cu).
// The layout and the rules: python/genaccel/kvcache/xquant/reference.py.
#pragma once
#include <cstdint>

#include "genaccel/common/dtype.h"

namespace genaccel {

struct XquantQuantizeParams {
  const void* x;          // (rows, k), last dim contiguous, row stride x_row_stride elements
  DType x_dtype;
  int64_t x_row_stride;
  int64_t rows, k, bits, group_size;  // bits in {2, 3, 4, 8}, group_size a multiple of 8
  bool fp16_zero;         // zeros as float16 offsets (rows, groups), else packed b-bit (rows, zero_row_bytes)
  uint8_t* codes;         // (rows, code_row_bytes) contiguous
  uint16_t* scales;       // (rows, groups) float16 bits, contiguous
  void* zeros;
  uint8_t* zero_codes;    // CUDA only: (rows, groups) scratch of the unpacked zero points, unless fp16_zero
  int64_t code_row_bytes, groups, zero_row_bytes;
};

// Quantized rows (rows, k) as xquant_quantize stores them, groups along k: the operand the
// dequantizer and the fused products read.
struct XquantCodes {
  const uint8_t* codes;   // (rows, code_row_bytes) contiguous
  const uint16_t* scales; // (rows, groups) float16 bits, contiguous
  const void* zeros;      // (rows, zero_row_bytes) uint8 or (rows, groups) float16 bits, contiguous
  bool fp16_zero;
  int64_t rows, k, bits, group_size, code_row_bytes, groups, zero_row_bytes;
};

struct XquantDequantizeParams {
  XquantCodes x;
  void* out;              // (x.rows, x.k) contiguous
  DType out_dtype;
};

// out (x.rows, n) = dequantize(x) @ weight^T (+ bias), float32 accumulation; the dequantized x is
// never stored whole (tiles of it, inside the GEMM).
struct XquantMatmulParams {
  XquantCodes x;
  const void* weight;     // (n, x.k) contiguous, w_dtype
  const void* bias;       // (n,) of w_dtype, or null
  DType w_dtype;
  int64_t n;
  void* out;              // (x.rows, n) contiguous, w_dtype
};

// out (batch, m, x.k) = a (batch, m, tokens) @ dequantize(x) viewed as (batch, tokens, x.k), with
// x.rows = batch * tokens; float32 accumulation. The attention-weighted sum of cached X rows: the
// "absorbed" value path (sum_j a_j X_j first, W_v after).
struct XquantWeightedSumParams {
  XquantCodes x;
  const void* a;          // (batch, m, tokens) contiguous, a_dtype
  DType a_dtype;
  int64_t batch, m, tokens;
  void* out;              // (batch, m, x.k) contiguous, a_dtype
};

}  // namespace genaccel
