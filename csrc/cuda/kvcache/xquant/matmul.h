// Torch-free launchers of the CUDA kernels of ops xquant_matmul / xquant_weighted_sum: XQuant's fused
// products, which multiply the quantized X (layout: python/genaccel/kvcache/xquant/reference.py) without
// ever storing it dequantized in global memory (params: include/genaccel/kvcache/xquant/params.h).
// Each returns the cudaError_t of its launch (0 = ok; cudaErrorInvalidValue for bad params).
#pragma once
#include <cstdint>

#include "genaccel/kvcache/xquant/params.h"

namespace genaccel::cuda {

// out (x.rows, n) = dequantize(x) (x.rows, x.k) @ weight (n, x.k)^T (+ bias), float32 accumulation, out
// in w_dtype. For float16 / bfloat16 weights the A operand is dequantize(x) rounded to w_dtype (as
// dequantize(x).to(w.dtype) @ w.T); float32 weights give an exact float32 product (no TF32). x.k == 0
// writes bias (or zeros).
int xquant_matmul_cuda(const XquantMatmulParams& p, void* stream);

// out (batch, m, x.k) = a (batch, m, tokens) @ dequantize(x) viewed as (batch, tokens, x.k), with
// x.rows = batch * tokens; float32 accumulation, out in a_dtype. For float16 / bfloat16 a the B
// operand is dequantize(x) rounded to a_dtype; float32 a is exact float32. tokens == 0 writes zeros.
int xquant_weighted_sum_cuda(const XquantWeightedSumParams& p, void* stream);

}  // namespace genaccel::cuda
