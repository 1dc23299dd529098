#pragma once
#include "genaccel/attention/block_sparse/params.h"

namespace genaccel::cpu {

// Block-sparse attention backward over float32 tensors (FlashAttention-2 scheme: probabilities are
// recomputed from the saved lse). Threads take (batch, kv head) groups of query blocks: a thread
// that runs a whole group adds straight into that kv head's dK/dV; groups are split between threads
// (each part into a per-thread buffer, added in under a lock) only as far as load balance needs.
void block_sparse_bwd_f32(const attention::BlockSparseBwdParams& p);

}  // namespace genaccel::cpu
