// CUDA registration of the block-sparse attention ops: checks, then the runners of
// csrc/cuda/attention/block_sparse/run.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "cuda/attention/block_sparse/delta.h"
#include "cuda/attention/block_sparse/run.h"
#include "cuda/common/torch_util.h"
#include "ops/attention/block_sparse.h"

namespace genaccel::ops {

namespace {

at::Tensor attention_delta_cuda(const at::Tensor& dout_in, const at::Tensor& out_in) {
  check_attention_delta_inputs(dout_in, out_in);
  c10::cuda::CUDAGuard guard(out_in.device());
  // Mixed dtypes are rare (autograd hands out gradients in the output's dtype): both widened then.
  const bool same = dout_in.scalar_type() == out_in.scalar_type();
  auto dout = last_dim_contiguous(same ? dout_in : dout_in.to(at::kFloat));
  auto out = last_dim_contiguous(same ? out_in : out_in.to(at::kFloat));
  auto delta = at::empty({out.size(0), out.size(1), out.size(2)}, out.options().dtype(at::kFloat));
  const int err = cuda::attention_delta(make_attention_delta_params(dout, out, delta), to_dtype(out.scalar_type()),
                                        c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "attention_delta (CUDA): kernel launch failed with cudaError ", err);
  return delta;
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attn_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, bool check_plan,
    c10::string_view backend, const std::optional<at::Tensor>& q_block_offsets,
    const std::optional<at::Tensor>& k_block_offsets, const std::optional<at::Tensor>& key_major_offsets,
    const std::optional<at::Tensor>& key_major_queries) {
  // Variable-size blocks run on the mma.sync kernels' variable-block instances; backend 'sm90' refuses
  // them (cuda::block_sparse_fwd_unsupported).
  const auto offsets = BlockOffsets::of(q_block_offsets, k_block_offsets);
  const auto parsed = check_block_sparse_attn_fwd_op(q, k, v, kv_indices, kv_counts, block_q, block_k, scale,
                                                     check_plan, backend, offsets,
                                                     KeyMajor::of(key_major_offsets, key_major_queries));
  return run_block_sparse_fwd_cuda(q, k, v, kv_indices, kv_counts, block_q, block_k, scale, parsed,
                                   "block_sparse_attn_fwd", offsets);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attn_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& delta, const at::Tensor& lse, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, bool check_plan,
    c10::string_view backend, const std::optional<at::Tensor>& q_block_offsets,
    const std::optional<at::Tensor>& k_block_offsets, const std::optional<at::Tensor>& key_major_offsets,
    const std::optional<at::Tensor>& key_major_queries) {
  const auto offsets = BlockOffsets::of(q_block_offsets, k_block_offsets);
  const auto key_major = KeyMajor::of(key_major_offsets, key_major_queries);
  const auto parsed = check_block_sparse_attn_bwd_op(dout, q, k, v, delta, lse, kv_indices, kv_counts, block_q,
                                                     block_k, scale, check_plan, backend, offsets, key_major);
  return run_block_sparse_bwd_cuda(dout, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale, parsed,
                                   "block_sparse_attn_bwd", key_major, offsets);
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("attention_delta", &genaccel::ops::attention_delta_cuda);
  m.impl("block_sparse_attn_fwd", &genaccel::ops::block_sparse_attn_fwd_cuda);
  m.impl("block_sparse_attn_bwd", &genaccel::ops::block_sparse_attn_bwd_cuda);
  m.impl("block_sparse_key_major_plan", &genaccel::ops::block_sparse_key_major_plan);
}
