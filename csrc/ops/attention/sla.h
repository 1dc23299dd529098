// Input checks and constants of the SLA ops, shared by their CPU and CUDA registrations.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <string>
#include <tuple>

#include "genaccel/attention/block_sparse/params.h"
#include "genaccel/attention/sla/params.h"
#include "genaccel/common/dtype.h"

namespace genaccel::ops {

// Held for the duration of an SLA op's kernel: the ops fix their own precisions, and autocast, still
// enabled inside a custom op's kernel, would otherwise recast the ATen calls they make (a float32
// matmul turned bf16 under CPU autocast).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// The original repository's main-branch denominator epsilon (linear_over_all_keys=True).
constexpr float kSlaAllKeysEps = 1e-5f;

// The parsed string arguments of sla_fwd / sla_bwd.
struct SlaOptions {
  attention::SlaFeatureMap feature_map;
  MatmulPrecision precision;
  attention::Backend backend;
};

// Every check of op sla_fwd's arguments, shared by its CPU, CUDA and Meta kernels: those of
// block_sparse_attn_fwd, plus the dtype, device and shape of the int8 block codes and of the
// optional projection weight, the scale and the string options (returned parsed); raises a
// c10::Error naming sla_fwd and the argument on the first violation. With check_plan false, on
// CUDA, the plan's values (codes in {-1, 0, 1}, index ranges, agreement with the codes) are taken on
// trust: checking them needs a host sync. On the CPU they are always checked (no sync there, and the
// CPU kernels index with them unguarded); on the meta device never (there are no values).
SlaOptions check_sla_fwd_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& codes,
                            const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q,
                            int64_t block_k, double scale, c10::string_view feature_map,
                            const std::optional<at::Tensor>& proj_weight, bool check_plan,
                            c10::string_view precision, c10::string_view backend);

// Likewise for sla_bwd: those of sla_fwd, plus the gradients and saved outputs, lse, delta and denom.
SlaOptions check_sla_bwd_op(
    const at::Tensor& grad_sparse, const at::Tensor& grad_linear, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& codes, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
    const at::Tensor& out_sparse, const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& out_linear,
    const at::Tensor& denom, int64_t block_q, int64_t block_k, double scale, c10::string_view feature_map,
    const std::optional<at::Tensor>& proj_weight, bool check_plan, c10::string_view precision,
    c10::string_view backend);

// d_proj_weight when sla_bwd has no projection: an empty float32 tensor on q's device.
at::Tensor no_proj_weight_grad(const at::Tensor& q);

// The ops' `feature_map` argument ("softmax", "elu" or "relu"); raises naming `op` otherwise.
attention::SlaFeatureMap parse_sla_feature_map(const std::string& name, const char* op);

// Checks the inputs of sla_select_blocks: scores a 4-D float32 tensor with Tk >= 1 blocks per row
// (under 2^30), 1 <= n_critical and 0 <= n_negligible <= Tk - n_critical.
void check_sla_select_blocks_inputs(const at::Tensor& scores, int64_t n_critical, int64_t n_negligible);

// The outputs of sla_select_blocks for (checked, contiguous) scores: codes int8 shaped like scores,
// kv_indices int32 (B, H, Tq, n_critical); uninitialised.
std::tuple<at::Tensor, at::Tensor> empty_select_blocks_outputs(const at::Tensor& scores, int64_t n_critical);

// The ops' `precision` argument ("tf32" or "fp32": how the CUDA linear branch's GEMMs run; the CPU
// computes in float32 always); raises naming `op` otherwise.
MatmulPrecision parse_sla_precision(c10::string_view precision, const char* op);

}  // namespace genaccel::ops
