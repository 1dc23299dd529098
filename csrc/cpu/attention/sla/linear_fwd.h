#pragma once
#include "genaccel/attention/sla/params.h"

namespace genaccel::cpu {

// SLA linear branch over float32 inputs: O^l_i = phi(Q_i) H_i / (phi(Q_i) . Z_i) with H_i, Z_i the
// sums of phi(K_j)^T V_j and colsum phi(K_j) over the marginal key blocks of query block i, in
// float32: by pre-aggregation (total minus critical minus negligible) when most blocks are marginal,
// else summed directly. A row whose denominator is not positive gets O^l = 0.
void sla_linear_fwd_f32(const attention::SlaLinearFwdParams& p);

}  // namespace genaccel::cpu
