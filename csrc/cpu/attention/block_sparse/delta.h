// CPU kernel of op attention_delta (the block-sparse and SLA backwards' row term).
#pragma once
#include "genaccel/attention/block_sparse/params.h"

namespace genaccel::cpu {

// p.delta = rowsum(p.dout * p.out) for float32 dout and out.
void attention_delta_f32(const attention::AttentionDeltaParams& p);

}  // namespace genaccel::cpu
