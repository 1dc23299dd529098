// CUDA registration of svg2_kmeans, svg2_permute and svg2_unpermute (kernels:
// csrc/cuda/attention/svg2/{kmeans,permute}.cu). svg2_kmeans never syncs with the host; the permute
// ops sync once to check perm's values when check_perm is true.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/attention/svg2/kmeans.h"
#include "cuda/attention/svg2/permute.h"
#include "cuda/common/torch_util.h"
#include "ops/attention/block_sparse.h"
#include "ops/attention/svg2.h"

namespace genaccel::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> svg2_kmeans_cuda(const at::Tensor& x_in,
                                                                           const at::Tensor& init_in, int64_t iters,
                                                                           double tol) {
  check_svg2_kmeans_op(x_in, init_in, iters, tol);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = last_dim_contiguous(x_in);
  auto init = init_in.contiguous();
  auto [labels, centroids, counts, iters_run] = empty_svg2_kmeans_outputs(x, init);
  const int64_t B = x.size(0), H = x.size(1), C = init.size(2), D = x.size(3);
  if (B * H == 0) return {labels, centroids, counts, iters_run};
  auto sums = at::empty({B * H * C * D}, init.options());
  auto state = at::empty({3 * B * H}, labels.options());
  cuda::Svg2KmeansCudaParams p{};
  p.x = x.const_data_ptr();
  p.x_dtype = to_dtype(x.scalar_type());
  p.x_batch_stride = x.stride(0), p.x_head_stride = x.stride(1), p.x_row_stride = x.stride(2);
  p.init = init.const_data_ptr<float>();
  p.centroids = centroids.mutable_data_ptr<float>();
  p.labels = labels.mutable_data_ptr<int32_t>();
  p.counts = counts.mutable_data_ptr<int32_t>();
  p.iters_run = iters_run.mutable_data_ptr<int32_t>();
  p.sums = sums.mutable_data_ptr<float>();
  p.state = state.mutable_data_ptr<int32_t>();
  p.batch = B, p.heads = H, p.n = x.size(2), p.c = C, p.d = D;
  p.iters = iters;
  p.tol = static_cast<float>(tol);
  check_launch(cuda::svg2_kmeans(p, c10::cuda::getCurrentCUDAStream().stream()), "k-means", "svg2_kmeans");
  return {labels, centroids, counts, iters_run};
}

// Raises naming op and perm unless every (batch, head) row of perm is a permutation of 0..N-1 (one
// host sync).
void check_perm_values_cuda(const at::Tensor& perm, const char* op) {
  if (perm.numel() == 0) return;
  const int64_t N = perm.size(2);
  auto p = perm.reshape({-1, N}).to(at::kLong);
  auto in_range = p.ge(0).logical_and_(p.lt(N));
  auto seen = at::zeros({p.size(0), N + 1}, perm.options());
  seen.scatter_add_(1, at::where(in_range, p, N), at::ones_like(perm).reshape({-1, N}));
  const bool ok = in_range.all().logical_and_(seen.narrow(1, 0, N).eq(1).all()).item<bool>();
  TORCH_CHECK(ok, op, ": perm must hold a permutation of 0..N-1 (N = ", N,
              ") per (batch, head): an entry lies outside [0, N) or repeats");
}

at::Tensor move_rows_cuda(const at::Tensor& x_in, const at::Tensor& perm_in, bool check_perm, bool scatter,
                          const char* op, const char* name) {
  check_svg2_permute_op(x_in, perm_in, op, name);
  c10::cuda::CUDAGuard guard(x_in.device());
  auto perm = perm_in.contiguous();
  if (check_perm) check_perm_values_cuda(perm, op);
  auto x = last_dim_contiguous(x_in);
  // Zeros for the scatter: rows an unchecked, invalid perm misses stay 0 rather than uninitialised.
  const auto options = x.options().memory_format(at::MemoryFormat::Contiguous);
  auto out = scatter ? at::zeros(x.sizes(), options) : at::empty(x.sizes(), options);
  if (out.numel() == 0) return out;
  check_launch(cuda::svg2_move_rows(x.const_data_ptr(), x.stride(0), x.stride(1), x.stride(2), out.mutable_data_ptr(),
                                    perm.const_data_ptr<int32_t>(), x.size(0), x.size(1), x.size(2), x.size(3),
                                    static_cast<int>(x.element_size()), scatter,
                                    c10::cuda::getCurrentCUDAStream().stream()),
               "row permutation", op);
  return out;
}

at::Tensor svg2_permute_cuda(const at::Tensor& x, const at::Tensor& perm, bool check_perm) {
  return move_rows_cuda(x, perm, check_perm, false, "svg2_permute", "x");
}
at::Tensor svg2_unpermute_cuda(const at::Tensor& y, const at::Tensor& perm, bool check_perm) {
  return move_rows_cuda(y, perm, check_perm, true, "svg2_unpermute", "y");
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("svg2_kmeans", &genaccel::ops::svg2_kmeans_cuda);
  m.impl("svg2_permute", &genaccel::ops::svg2_permute_cuda);
  m.impl("svg2_unpermute", &genaccel::ops::svg2_unpermute_cuda);
}
