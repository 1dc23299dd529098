// SLA's linear branch on CUDA (linear_branch.cpp): O^l and its gradients for every (batch, kv head)
// pair, in chunks of pairs bounded by the GENACCEL_SLA_CHUNK_BYTES knob, on the current stream.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAEvent.h>

#include <optional>

#include "genaccel/attention/sla/params.h"
#include "genaccel/common/dtype.h"

namespace genaccel::ops {

// The projection weight as a contiguous float32 tensor, or an undefined one without projection.
at::Tensor float32_projection(const std::optional<at::Tensor>& proj_weight);

// O^l (O^l W^T with a projection `proj`, float32 D x D, else undefined) into out_linear (B, H, Nq, D)
// and its denominator into denom (B, H, Nq), both contiguous; q, k, v contiguous and checked, codes
// (B|1, H|1, Tq, Tk) int8.
void sla_linear_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& codes,
                             int64_t Tq, int64_t block_q, int64_t block_k, attention::SlaFeatureMap fmap,
                             bool all_keys, const at::Tensor& proj, MatmulPrecision precision,
                             const at::Tensor& out_linear, const at::Tensor& denom);

// Adds the linear branch's gradients into dq, dk, dv (contiguous, in the dtypes of q, k, v, holding
// the sparse branch's gradients once `sparse_done` has fired) and, with a projection, into d_proj
// (float32 D x D): grad (= dO^l) and out (= O^l) contiguous in the dtype of q, denom (B, H, Nq).
void sla_linear_backward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad,
                              const at::Tensor& out, const at::Tensor& denom, const at::Tensor& codes, int64_t Tq,
                              int64_t block_q, int64_t block_k, attention::SlaFeatureMap fmap, bool all_keys,
                              const at::Tensor& proj, MatmulPrecision precision, const at::Tensor& dq,
                              const at::Tensor& dk, const at::Tensor& dv, const at::Tensor& d_proj,
                              at::cuda::CUDAEvent& sparse_done);

}  // namespace genaccel::ops
