#pragma once
#include "genaccel/attention/sla/params.h"

namespace genaccel::cpu {

// Backward of SLA's linear branch over float32 inputs (the forward is sla_linear_fwd_f32): writes
// d_phi_q and d_phi_k and adds the branch's dV into dv. Pre-aggregated like the forward: H_i, Z_i
// and the scatter dh_j = sum_{i: j marginal} dH_i each use a total and a correction over the
// non-marginal blocks (or a direct sum when few are marginal). Memory: O((Tq + Tk) D^2) per call
// plus per-thread tiles; never the (Tq, Tk) pairs.
void sla_linear_bwd_f32(const attention::SlaLinearBwdParams& p);

}  // namespace genaccel::cpu
