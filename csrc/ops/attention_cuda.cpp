// CUDA registration of the attention ops: checks, allocation and stream handling around the
// torch-free launchers in csrc/cuda/attention.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

#include "cuda/attention/block_sparse_fwd.h"
#include "ops/attention.h"
#include "ops/attention_cuda.h"

namespace genaccel::ops {
namespace {

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

// The kernel loads rows in 16-byte pieces: pointers 16-byte aligned and batch/head/row strides
// multiples of 8 elements. Views that are not (sliced, oddly strided) are copied once.
at::Tensor vector_aligned(const at::Tensor& t) {
  auto c = last_dim_contiguous(t);
  const bool ok = reinterpret_cast<uintptr_t>(c.const_data_ptr()) % 16 == 0 &&
                  c.stride(0) % 8 == 0 && c.stride(1) % 8 == 0 && c.stride(2) % 8 == 0;
  return ok ? c : c.clone(at::MemoryFormat::Contiguous);  // contiguous() would keep a misaligned start
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> run_block_sparse_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& kv_indices_in, const at::Tensor& kv_counts_in, int64_t block_q,
    int64_t block_k, double scale, const char* op) {
  c10::cuda::CUDAGuard guard(q_in.device());
  auto q = vector_aligned(q_in), k = vector_aligned(k_in), v = vector_aligned(v_in);
  auto kv_indices = kv_indices_in.contiguous(), kv_counts = kv_counts_in.contiguous();
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse.fill_(-INFINITY)};
  auto p = make_block_sparse_fwd_params(q, k, v, kv_indices, kv_counts, out, lse, block_q, block_k,
                                        scale);
  const DType dtype = to_dtype(q.scalar_type());
  const char* why = cuda::block_sparse_fwd_unsupported(p, dtype);
  TORCH_CHECK(why == nullptr, op, " (CUDA): ", why ? why : "");
  const int err = cuda::block_sparse_fwd(p, dtype, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, op, " (CUDA): kernel launch failed with cudaError ", err);
  return {out, lse};
}

namespace {

std::tuple<at::Tensor, at::Tensor> block_sparse_attn_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale) {
  check_block_sparse_fwd_inputs(q, k, v, kv_indices, kv_counts, block_q, block_k);
  TORCH_CHECK(std::isfinite(scale), "block_sparse_attn_fwd: scale must be finite, got ", scale);
  return run_block_sparse_fwd_cuda(q, k, v, kv_indices, kv_counts, block_q, block_k, scale,
                                   "block_sparse_attn_fwd");
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("block_sparse_attn_fwd", &genaccel::ops::block_sparse_attn_fwd_cuda);
}
