#pragma once
#include "genaccel/attention/block_sparse/params.h"

namespace genaccel::cpu {

// Block-sparse attention forward over float32 q/k/v (last dim contiguous). Threads over
// (batch, head, query block); each query block walks its planned key blocks with an online softmax.
void block_sparse_fwd_f32(const attention::BlockSparseFwdParams& p);

}  // namespace genaccel::cpu
