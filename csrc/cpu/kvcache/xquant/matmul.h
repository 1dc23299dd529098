// CPU kernels of ops xquant_matmul / xquant_weighted_sum: the products of XQuant's rematerialisation
// (params: include/genaccel/kvcache/xquant/params.h). Float32 operands and output only: the op
// registration converts 16-bit weights / attention weights (never the quantized X) first.
#pragma once
#include "genaccel/kvcache/xquant/params.h"

namespace genaccel::cpu {

void xquant_matmul(const XquantMatmulParams& p);
void xquant_weighted_sum(const XquantWeightedSumParams& p);

}  // namespace genaccel::cpu
