// Torch-free launchers of the CUDA kernels of ops xquant_quantize / xquant_dequantize (XQuant's group
// quantizer; the layout and the rules: python/genaccel/kvcache/xquant/reference.py, the arithmetic:
// csrc/cpu/kvcache/xquant/quantize.cpp, which these kernels reproduce). Each returns the cudaError_t of
// its launches (0 = ok).
#pragma once
#include <cstdint>

#include "genaccel/kvcache/xquant/params.h"

namespace genaccel::cuda {

// zero_codes must be set unless fp16_zero (the unpacked zero points, packed into `zeros` by a second kernel).
int xquant_quantize_cuda(const XquantQuantizeParams& p, void* stream);

int xquant_dequantize_cuda(const XquantDequantizeParams& p, void* stream);

}  // namespace genaccel::cuda
