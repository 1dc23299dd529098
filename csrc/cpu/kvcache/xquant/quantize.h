// CPU kernels of ops xquant_quantize / xquant_dequantize (XQuant's group quantizer; the layout and the
// rules: python/genaccel/kvcache/xquant/reference.py; params: include/genaccel/kvcache/xquant/params.h).
#pragma once
#include "genaccel/kvcache/xquant/params.h"

namespace genaccel::cpu {

void xquant_quantize(const XquantQuantizeParams& p);
void xquant_dequantize(const XquantDequantizeParams& p);

// Elements [c0, c1) of row r of x dequantized to out[0, c1 - c0), as xquant_dequantize computes them;
// c0 a multiple of 8 (the fused products dequantize tiles of X with it).
void dequantize_span(const XquantCodes& x, int64_t r, int64_t c0, int64_t c1, float* out);

}  // namespace genaccel::cpu
