// CPU kernels of ops xquant_quantize / xquant_dequantize (XQuant's group quantizer; the layout and the
// rules: python/genaccel/kvcache/xquant/reference.py; params: include/genaccel/kvcache/xquant/params.h).
#pragma once
#include "genaccel/kvcache/xquant/params.h"

namespace genaccel::cpu {

void xquant_quantize(const XquantQuantizeParams& p);
void xquant_dequantize(const XquantDequantizeParams& p);

}  // namespace genaccel::cpu
