// float32 GEMMs through cuBLAS on torch's current stream and handle, for the host-side runners of
// every family.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "genaccel/common/dtype.h"

namespace genaccel::cuda {

// A row-major float32 matrix operand of gemm_f32: element (i, j) at data[i * ld + j] (of its
// transpose with `transposed`), batch entries batch_stride floats apart.
struct Matrix {
  const float* data;
  int64_t ld;
  bool transposed = false;
  int64_t batch_stride = 0;
};

// c = op(a) op(b) + beta c, row-major, `batch` times: op(a) M x K, op(b) K x N, c M x N with leading
// dim ldc, batch entries c_stride apart; float32 accumulation, operands on TF32 tensor cores
// (MatmulPrecision::kTF32: rounded to 2^-11) or exact float32 (kFloat32; TF32 then only where
// torch.backends.cuda.matmul allows it). `what` names the caller in errors.
void gemm_f32(int64_t batch, int64_t M, int64_t N, int64_t K, Matrix a, Matrix b, float* c, int64_t ldc,
              int64_t c_stride, float beta, MatmulPrecision precision, const char* what);

// Batched op(a) op(b) of contiguous float32 tensors (gemm_f32): a is (batch, M, K), or (batch, K, M)
// with ta; b is (batch, K, N), or (batch, N, K) with tb.
at::Tensor bmm_f32(const at::Tensor& a, bool ta, const at::Tensor& b, bool tb, MatmulPrecision precision,
                   const char* what);

}  // namespace genaccel::cuda
