// The CUDA block-sparse attention forward and backward as tensor functions: alignment copies,
// head-dim padding, the key-major plan, allocation and stream handling around the torch-free
// launchers fwd.cu / bwd.cu. Used by the block-sparse and the SLA ops.
#include "cuda/attention/block_sparse/run.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <cstdint>

#include "cuda/attention/block_sparse/bwd.h"
#include "cuda/attention/block_sparse/fwd.h"
#include "cuda/common/torch_util.h"
#include "ops/attention/block_sparse.h"

namespace genaccel::ops {

namespace {

// The kernel loads rows in 16-byte pieces: pointers 16-byte aligned and batch/head/row strides
// multiples of 8 elements. Views that are not (sliced, oddly strided) are copied once.
at::Tensor vector_aligned(const at::Tensor& t) {
  auto c = last_dim_contiguous(t);
  const bool ok = reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 == 0 &&
                  c.stride(0) % 8 == 0 && c.stride(1) % 8 == 0 && c.stride(2) % 8 == 0;
  return ok ? c : c.clone(at::MemoryFormat::Contiguous);  // contiguous() would keep a misaligned start
}

// The kernels exist for head dims 64 and 128. A smaller head dim D runs on the next of them with
// q, k, v (and dout) zero-padded to it, a copy: the padded columns add nothing to q.k, carry zeros
// through P.V and the gradients, and are cut off the results. Above 128 the op raises.
struct KernelHeadDim {
  int64_t D, padded;
  KernelHeadDim(const at::Tensor& q, const char* op) : D(q.size(3)), padded(q.size(3) <= 64 ? 64 : 128) {
    TORCH_CHECK(D <= 128, op, " (CUDA): head dims above 128 are not supported yet, got ", D,
                " (the CPU kernels take up to 256)");
  }
  // x (..., D) as the kernel reads it: padded to `padded` columns, or vector_aligned.
  at::Tensor rows(const at::Tensor& x) const {
    // contiguous(): constant_pad_nd keeps a channels-last layout, whose last dim is strided.
    return D == padded ? vector_aligned(x) : at::constant_pad_nd(x, {0, padded - D}).contiguous();
  }
  // A result (..., padded) cut back to (..., D), contiguous.
  at::Tensor cut(const at::Tensor& x) const { return D == padded ? x : x.narrow(3, 0, D).contiguous(); }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> run_block_sparse_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& kv_indices_in, const at::Tensor& kv_counts_in, int64_t block_q,
    int64_t block_k, double scale, attention::Backend backend, const char* op, const BlockOffsets& offsets_in) {
  c10::cuda::CUDAGuard guard(q_in.device());
  const KernelHeadDim head_dim(q_in, op);
  auto q = head_dim.rows(q_in), k = head_dim.rows(k_in), v = head_dim.rows(v_in);
  auto kv_indices = kv_indices_in.contiguous(), kv_counts = kv_counts_in.contiguous();
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {head_dim.cut(out), lse.fill_(-INFINITY)};
  const BlockOffsets offsets = offsets_in.contiguous();
  auto p = make_block_sparse_fwd_params(q, k, v, kv_indices, kv_counts, out, lse, block_q, block_k,
                                        scale, offsets);
  const DType dtype = to_dtype(q.scalar_type());
  const char* why = cuda::block_sparse_fwd_unsupported(p, dtype, backend);
  TORCH_CHECK(why == nullptr, op, " (CUDA): ", why ? why : "");
  const int err = cuda::block_sparse_fwd(p, dtype, backend, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, op, " (CUDA): kernel launch failed with cudaError ", err);
  return {head_dim.cut(out), lse};
}


std::tuple<at::Tensor, at::Tensor, at::Tensor> run_block_sparse_bwd_cuda(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& delta_in, const at::Tensor& lse_in, const at::Tensor& kv_indices_in,
    const at::Tensor& kv_counts_in, int64_t block_q, int64_t block_k, double scale, attention::Backend backend,
    const char* op, const KeyMajor& key_major, const BlockOffsets& offsets_in) {
  c10::cuda::CUDAGuard guard(q_in.device());
  if (q_in.numel() == 0 || k_in.numel() == 0)
    return {at::zeros(q_in.sizes(), q_in.options()), at::zeros(k_in.sizes(), k_in.options()),
            at::zeros(v_in.sizes(), v_in.options())};
  const KernelHeadDim head_dim(q_in, op);
  auto q = head_dim.rows(q_in), k = head_dim.rows(k_in), v = head_dim.rows(v_in);
  auto dout = head_dim.rows(dout_in.scalar_type() == q.scalar_type() ? dout_in : dout_in.to(q.scalar_type()));
  auto delta = delta_in.contiguous(), lse = lse_in.contiguous();
  auto kv_indices = kv_indices_in.contiguous(), kv_counts = kv_counts_in.contiguous();
  auto dq = at::empty(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  const BlockOffsets offsets = offsets_in.contiguous();
  attention::BlockSparseBwdCudaParams p{};
  p.bwd = make_block_sparse_bwd_params(dout, q, k, v, delta, lse, kv_indices, kv_counts, dq, dk, dv,
                                       block_q, block_k, scale, offsets);
  const DType dtype = to_dtype(q.scalar_type());
  const char* why = cuda::block_sparse_bwd_unsupported(p, dtype, backend);
  TORCH_CHECK(why == nullptr, op, " (CUDA): ", why ? why : "");
  const int64_t Tk = p.bwd.fwd.num_k_blocks;  // the offsets' key blocks, or ceil(Nk / block_k)
  // A given key-major plan is taken on trust (checked by the op when asked), but clamped into range:
  // a wrong one gives wrong gradients, not an illegal address. Tiny tensors, no host sync.
  auto [q_offsets, q_list] =
      key_major.offsets.defined()
          ? std::make_tuple(std::get<0>(key_major.offsets.clamp(0, key_major.queries.size(-1)).cummax(-1))
                                .to(at::kInt).contiguous(),
                            key_major.queries.clamp(0, kv_indices.size(2) - 1).contiguous())
          : key_major_plan(kv_indices, kv_counts, Tk);
  p.plan.q_offsets = q_offsets.const_data_ptr<int32_t>();
  p.plan.q_list = q_list.const_data_ptr<int32_t>();
  p.plan.off_batch_stride = q_offsets.size(0) == 1 ? 0 : q_offsets.stride(0);
  p.plan.off_head_stride = q_offsets.size(1) == 1 ? 0 : q_offsets.stride(1);
  p.plan.list_batch_stride = q_list.size(0) == 1 ? 0 : q_list.stride(0);
  p.plan.list_head_stride = q_list.size(1) == 1 ? 0 : q_list.stride(1);
  const int err = cuda::block_sparse_bwd(p, dtype, backend, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, op, " (CUDA): kernel launch failed with cudaError ", err);
  return {head_dim.cut(dq), head_dim.cut(dk), head_dim.cut(dv)};
}

}  // namespace genaccel::ops
