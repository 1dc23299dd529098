#pragma once
#include "genaccel/attention/block_sparse_params.h"

namespace genaccel::cpu {

// Block-sparse attention backward over float32 tensors (FlashAttention-2 scheme: probabilities are
// recomputed from the saved lse). Threads over (batch, head, query block); dK/dV are accumulated in
// per-thread buffers and summed at the end, so no two threads write the same memory.
void block_sparse_bwd_f32(const attention::BlockSparseBwdParams& p);

}  // namespace genaccel::cpu
