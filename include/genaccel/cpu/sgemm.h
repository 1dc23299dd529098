// Row-major float32 matrix products for the CPU kernels, on the BLAS sgemm_ that libtorch_cpu
// exports (MKL in x86 wheels) -- the routine torch's own cpublas::gemm<float> calls, which is not
// itself exported. Called from inside at::parallel_for, where the BLAS runs single-threaded.
#pragma once
#include <cstdint>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c, const int* ldc);

namespace genaccel::cpu {

// C (m x n, ldc) = alpha * A (m x k, lda) * B (n x k, ldb)^T, all row-major.
inline void sgemm_abt(int m, int n, int k, float alpha, const float* a, int64_t lda, const float* b,
                      int64_t ldb, float* c, int64_t ldc) {
  // Row-major C = A B^T is column-major C^T = B A^T: B read transposed, A as is.
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  const float beta = 0.f;
  sgemm_("T", "N", &n, &m, &k, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
}

// C (m x n, ldc) += A (m x k, lda) * B (k x n, ldb), all row-major.
inline void sgemm_ab_acc(int m, int n, int k, const float* a, int64_t lda, const float* b,
                         int64_t ldb, float* c, int64_t ldc) {
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  const float one = 1.f;
  sgemm_("N", "N", &n, &m, &k, &one, b, &ildb, a, &ilda, &one, c, &ildc);
}

}  // namespace genaccel::cpu
