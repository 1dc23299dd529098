// CUDA registration of sla_fwd, sla_bwd and sla_select_blocks. The sparse branch is the block-sparse
// attention kernels over the critical blocks (csrc/cuda/attention/block_sparse/run.cpp); the linear
// branch (csrc/cuda/attention/sla/linear_branch.cpp) runs on a second stream beside it (SideStream).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "cuda/attention/block_sparse/run.h"
#include "cuda/attention/sla/linear_branch.h"
#include "cuda/attention/sla/linear_rows.h"
#include "cuda/attention/sla/select_blocks.h"
#include "cuda/common/debug_knobs.h"
#include "cuda/common/side_stream.h"
#include "cuda/common/torch_util.h"
#include "ops/attention/block_sparse.h"
#include "ops/attention/sla.h"

namespace genaccel::ops {
namespace {

constexpr const char* kOp = "sla_fwd";
constexpr const char* kBwdOp = "sla_bwd";

// The linear branch's row kernels take head dims 32, 64, 96 and 128 (the sparse branch pads those
// below 128 to its kernels' 64 or 128).
void check_row_head_dim(const at::Tensor& q, const char* op) {
  TORCH_CHECK(cuda::sla_row_head_dim(q.size(3)), op, " (CUDA): the linear branch's kernels take head dims 32, 64, 96 "
              "and 128, got ", q.size(3), " (the CPU kernels take any head dim up to 256)");
}

std::tuple<at::Tensor, at::Tensor> sla_select_blocks_cuda(const at::Tensor& scores_in, int64_t n_critical,
                                                         int64_t n_negligible) {
  check_sla_select_blocks_inputs(scores_in, n_critical, n_negligible);
  c10::cuda::CUDAGuard guard(scores_in.device());
  auto scores = scores_in.contiguous();
  const int64_t tk = scores.size(3), rows = scores.numel() / tk;
  auto [codes, indices] = empty_select_blocks_outputs(scores, n_critical);
  const int64_t scratch_keys = cuda::sla_block_select_scratch(rows, tk);
  auto scratch = at::empty({scratch_keys}, scores.options().dtype(at::kLong));
  check_launch(cuda::sla_block_select(scores.const_data_ptr<float>(), rows, tk, n_critical, n_negligible,
                                      codes.mutable_data_ptr<int8_t>(), indices.mutable_data_ptr<int32_t>(),
                                      scratch_keys > 0 ? static_cast<uint64_t*>(scratch.data_ptr()) : nullptr,
                                      c10::cuda::getCurrentCUDAStream().stream()),
               "block selection", "sla_select_blocks");
  return {codes, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& codes,
    const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q, int64_t block_k,
    double scale, c10::string_view feature_map_name, bool linear_over_all_keys,
    const std::optional<at::Tensor>& proj_weight, bool check_plan, c10::string_view precision_name,
    c10::string_view backend_name) {
  const NoAutocast no_autocast;
  const auto [fmap, precision, backend] =
      check_sla_fwd_op(q_in, k_in, v_in, codes, kv_indices, kv_counts, block_q, block_k, scale, feature_map_name,
                       proj_weight, check_plan, precision_name, backend_name);
  check_row_head_dim(q_in, kOp);
  c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t B = q_in.size(0), H = q_in.size(1), Nq = q_in.size(2), D = q_in.size(3);
  auto out_linear = at::empty({B, H, Nq, D}, q_in.options());
  auto denom = at::empty({B, H, Nq}, q_in.options().dtype(at::kFloat));
  const auto sparse = [&] {
    return run_block_sparse_fwd_cuda(q_in, k_in, v_in, kv_indices, kv_counts, block_q, block_k, scale, backend, kOp);
  };
  if (out_linear.numel() == 0 || k_in.size(2) == 0) {
    out_linear.zero_();
    denom.fill_(linear_over_all_keys ? kSlaAllKeysEps : 0.f);
    auto [out_sparse, lse] = sparse();
    return {out_sparse, lse, out_linear, denom};
  }
  cuda::SideStream side(q_in.device().index(), !cuda::debug_knobs().sla_one_stream);
  auto [out_sparse, lse] = sparse();
  {
    const auto on_side = side.guard();
    sla_linear_forward_cuda(q_in.contiguous(), k_in.contiguous(), v_in.contiguous(), codes, kv_indices.size(2),
                            block_q, block_k, fmap, linear_over_all_keys, float32_projection(proj_weight), precision,
                            out_linear, denom);
  }
  side.join();
  return {out_sparse, lse, out_linear, denom};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_bwd_cuda(
    const at::Tensor& grad_sparse, const at::Tensor& grad_linear, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& codes, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
    const at::Tensor& out_sparse, const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& out_linear,
    const at::Tensor& denom, int64_t block_q, int64_t block_k, double scale, c10::string_view feature_map_name,
    bool linear_over_all_keys, const std::optional<at::Tensor>& proj_weight, bool check_plan,
    c10::string_view precision_name, c10::string_view backend_name) {
  const NoAutocast no_autocast;
  const auto [fmap, precision, backend] =
      check_sla_bwd_op(grad_sparse, grad_linear, q_in, k_in, v_in, codes, kv_indices, kv_counts, out_sparse, lse,
                       delta, out_linear, denom, block_q, block_k, scale, feature_map_name, proj_weight, check_plan,
                       precision_name, backend_name);
  check_row_head_dim(q_in, kBwdOp);
  c10::cuda::CUDAGuard guard(q_in.device());
  const auto proj = float32_projection(proj_weight);
  auto d_proj = proj.defined() ? at::zeros_like(proj) : no_proj_weight_grad(q_in);
  const auto with_d_proj = [&](std::tuple<at::Tensor, at::Tensor, at::Tensor> grads) {
    auto& [dq, dk, dv] = grads;
    return std::make_tuple(dq, dk, dv, proj.defined() ? d_proj.to(proj_weight->scalar_type()) : d_proj);
  };
  const auto sparse = [&] {
    return run_block_sparse_bwd_cuda(grad_sparse, q_in, k_in, v_in, delta, lse, kv_indices, kv_counts, block_q,
                                     block_k, scale, backend, kBwdOp);
  };
  if (q_in.numel() == 0 || k_in.numel() == 0) return with_d_proj(sparse());
  // Sparse branch on the caller's stream; its outputs are fresh contiguous tensors that the linear
  // branch, computed meanwhile on the side stream, adds into once they are complete (declared
  // before `side`, see SideStream).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  cuda::SideStream side(q_in.device().index(), !cuda::debug_knobs().sla_one_stream);
  grads = sparse();
  auto& [dq, dk, dv] = grads;
  c10::cuda::CUDAEvent sparse_done;
  sparse_done.record(c10::cuda::getCurrentCUDAStream());
  {
    const auto on_side = side.guard();
    const auto dt = q_in.scalar_type();  // shared by k and v (checked)
    auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    auto grad = grad_linear.to(dt).contiguous(), out = out_linear.to(dt).contiguous();
    sla_linear_backward_cuda(q, k, v, grad, out, denom.contiguous(), codes, kv_indices.size(2), block_q, block_k, fmap,
                             linear_over_all_keys, proj, precision, dq, dk, dv, d_proj, sparse_done);
  }
  side.join();
  return with_d_proj(std::move(grads));
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("sla_fwd", &genaccel::ops::sla_fwd_cuda);
  m.impl("sla_bwd", &genaccel::ops::sla_bwd_cuda);
  m.impl("sla_select_blocks", &genaccel::ops::sla_select_blocks_cuda);
}
