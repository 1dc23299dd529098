// The CUDA block-sparse attention forward and backward as tensor functions, for the ops built on
// them (SLA).
#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

#include "genaccel/attention/block_sparse/params.h"
#include "ops/attention/block_sparse.h"

namespace genaccel::ops {

// out, lse of block_sparse_attn_fwd on CUDA tensors whose inputs were already checked
// (check_block_sparse_fwd_inputs); `op` names the calling op in errors. Copies misaligned views
// once, pads head dims below 128 other than 64 to the kernels' (a copy); raises when the kernels do
// not support the dtype, head dim (above 128), block sizes or backend. With variable-size block
// offsets (either side) the variable-block kernels run: mma.sync only (backend 'sm90' raises).
std::tuple<at::Tensor, at::Tensor> run_block_sparse_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, attention::Backend backend,
    const char* op, const BlockOffsets& offsets = {});

// dq, dk, dv (in the dtypes of q, k, v) of block_sparse_attn_bwd on CUDA tensors whose inputs were
// already checked (check_block_sparse_attn_bwd_inputs or an op's own checks); `op` and offsets as
// above. The key-major plan is built from kv_indices unless given.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_block_sparse_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& delta, const at::Tensor& lse, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, attention::Backend backend,
    const char* op, const KeyMajor& key_major = {}, const BlockOffsets& offsets = {});

}  // namespace genaccel::ops
