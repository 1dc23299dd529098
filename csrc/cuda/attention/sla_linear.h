// Torch-free launchers of the elementwise CUDA kernels of SLA's linear branch (the products
// themselves are cuBLAS GEMMs, see csrc/ops/sla_cuda.cpp). Each returns the cudaError_t of its
// launch (0 = ok).
#pragma once
#include <cstdint>

#include "genaccel/attention/block_sparse_params.h"

namespace genaccel::cuda {

// x (batch, rows, cols) float32, contiguous -> out (batch, parts * rows, cols) bfloat16, contiguous:
// row r of part p lands at row p * rows + r, and x = part 0 + part 1 + ... (each part the bf16
// rounding of what the earlier ones left). One pass; parts in [1, 3].
int split_bf16_rows(const float* x, void* out, int64_t batch, int64_t rows, int64_t cols, int parts,
                    void* stream);

// num (groups, padded_rows, dim) and den (groups, padded_rows) float32, contiguous -> out (groups,
// rows, dim) in `dtype` and denom (groups, rows) float32: denom = den + eps, out = num / denom where
// denom > 0, else 0 (a row with no marginal key block). dim must be a multiple of 4 and out 8-byte
// aligned (else cudaErrorInvalidValue).
int sla_linear_normalize(const float* num, const float* den, void* out, float* denom, DType dtype,
                         int64_t groups, int64_t rows, int64_t padded_rows, int64_t dim, float eps,
                         void* stream);

}  // namespace genaccel::cuda
