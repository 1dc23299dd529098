#include "cuda/common/blas.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <limits>

namespace genaccel::cuda {

void gemm_f32(int64_t batch, int64_t M, int64_t N, int64_t K, Matrix a, Matrix b, float* c, int64_t ldc,
              int64_t c_stride, float beta, MatmulPrecision precision, const char* what) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(batch <= kIntMax && M <= kIntMax && N <= kIntMax && K <= kIntMax && a.ld <= kIntMax &&
                  b.ld <= kIntMax && ldc <= kIntMax,
              what, " (CUDA): a GEMM is too large for cuBLAS: ", batch, " x ", M, " x ", N, " x ", K);
  TORCH_INTERNAL_ASSERT(a.ld >= (a.transposed ? M : K) && b.ld >= (b.transposed ? K : N) && ldc >= N);
  if (batch == 0 || M == 0 || N == 0) return;
  const auto compute = precision == MatmulPrecision::kFloat32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
  const float alpha = 1.f;
  // Row-major c (M x N) is column-major c^T (N x M) = op(b)^T op(a)^T, so cuBLAS takes b first.
  TORCH_CUDABLAS_CHECK(cublasGemmStridedBatchedEx(
      at::cuda::getCurrentCUDABlasHandle(), b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
      a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
      &alpha, b.data, CUDA_R_32F, static_cast<int>(b.ld), b.batch_stride, a.data, CUDA_R_32F,
      static_cast<int>(a.ld), a.batch_stride, &beta, c, CUDA_R_32F, static_cast<int>(ldc), c_stride,
      static_cast<int>(batch), compute, CUBLAS_GEMM_DEFAULT));
}

at::Tensor bmm_f32(const at::Tensor& a, bool ta, const at::Tensor& b, bool tb, MatmulPrecision precision,
                   const char* what) {
  TORCH_INTERNAL_ASSERT(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.is_contiguous() &&
                        b.is_contiguous() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat);
  const int64_t batch = a.size(0), M = a.size(ta ? 2 : 1), K = a.size(ta ? 1 : 2), N = b.size(tb ? 1 : 2);
  TORCH_INTERNAL_ASSERT(b.size(tb ? 2 : 1) == K);
  auto c = at::empty({batch, M, N}, a.options());
  if (c.numel() == 0) return c;
  if (K == 0) return c.zero_();
  gemm_f32(batch, M, N, K, {a.const_data_ptr<float>(), ta ? M : K, ta, M * K},
           {b.const_data_ptr<float>(), tb ? K : N, tb, K * N}, c.mutable_data_ptr<float>(), N, M * N, 0.f, precision,
           what);
  return c;
}

}  // namespace genaccel::cuda
