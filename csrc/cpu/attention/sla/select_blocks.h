// CPU kernel of op sla_select_blocks (SLA's per-row block classification).
#pragma once
#include <cstdint>

namespace genaccel::cpu {

// scores (rows, tk) float32, contiguous -> codes (rows, tk) int8 (1 for the n_crit largest keys of a
// row, -1 for the n_neg smallest, else 0; genaccel/attention/sla_block_select.h) and indices
// (rows, n_crit) int32: the critical block ids of each row, ascending. Needs 1 <= n_crit and
// n_crit + n_neg <= tk.
void sla_block_select(const float* scores, int64_t rows, int64_t tk, int64_t n_crit, int64_t n_neg,
                      int8_t* codes, int32_t* indices);

}  // namespace genaccel::cpu
