// Input checks and constants of the SLA ops, shared by their CPU and CUDA registrations.
#pragma once
#include <ATen/core/Tensor.h>

namespace genaccel::ops {

// The original repository's main-branch denominator epsilon (linear_over_all_keys=True).
constexpr float kSlaAllKeysEps = 1e-5f;

// Checks the inputs of sla_fwd (those of block_sparse_attn_fwd, plus phi_q/phi_k shapes, dtypes and
// devices and the shape of the int8 block codes) and raises a c10::Error on the first violation.
void check_sla_fwd_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& phi_q, const at::Tensor& phi_k, const at::Tensor& codes,
                          const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q,
                          int64_t block_k);

}  // namespace genaccel::ops
