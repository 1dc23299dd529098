// Torch-free launcher of the CUDA kernel of op attention_delta.
#pragma once
#include "genaccel/attention/block_sparse/params.h"

namespace genaccel::cuda {

// p.delta = rowsum(p.dout * p.out) in float32, dout and out in `dtype`. Returns the cudaError_t of
// the launch (0 = ok).
int attention_delta(const attention::AttentionDeltaParams& p, DType dtype, void* stream);

}  // namespace genaccel::cuda
