// Torch-free launchers of the elementwise CUDA kernels of SLA's linear branch (the products
// themselves are cuBLAS GEMMs, see csrc/cuda/attention/sla/linear_branch.cpp). Each returns the cudaError_t of its
// launch (0 = ok).
#pragma once
#include <cstdint>

#include "genaccel/attention/block_sparse/params.h"
#include "genaccel/attention/sla/params.h"

namespace genaccel::cuda {

// The most bf16 parts of split_bf16_rows: three keep all 24 significant bits of a float32.
constexpr int kSplitParts = 3;

// x (batch, rows, cols) float32, contiguous -> out (batch, parts * rows, cols) bfloat16, contiguous:
// row r of part p lands at row p * rows + r, each part the bf16 rounding of what the earlier ones
// left. With 3 parts x is their exact sum; with 2 the sum is x to within 2^-16 |x| (two bf16
// roundings, 8 significant bits each). parts must be 2 or 3 (else cudaErrorInvalidValue). One pass.
int split_bf16_rows(const float* x, void* out, int64_t batch, int64_t rows, int64_t cols, int parts, void* stream);

// num (groups, padded_rows, width) float32, contiguous, whose column `dim` is the denominator ->
// out (groups, rows, dim) in `dtype` and denom (groups, rows) float32: denom = den + eps, out =
// num[:, :, :dim] / denom where denom > 0, else 0 (a row with no marginal key block). dim and width
// must be multiples of 4 with width > dim, and out 8-byte aligned (else cudaErrorInvalidValue).
int sla_linear_normalize(const float* num, int64_t width, void* out, float* denom, DType dtype,
                         int64_t groups, int64_t rows, int64_t padded_rows, int64_t dim, float eps,
                         void* stream);

// Head dims the row kernels below are built for: 32, 64, 96 and 128 (32 floats per warp lane step).
inline bool sla_row_head_dim(int64_t dim) { return dim == 32 || dim == 64 || dim == 96 || dim == 128; }

// The per-token rows around the linear branch's GEMMs, over `seqs` sequences of `rows` tokens in
// `dtype` (bf16 or fp16; dim per sla_row_head_dim, else cudaErrorInvalidValue), inputs contiguous (seqs, rows,
// dim), float32 outputs contiguous with `padded_rows` rows per sequence, the rows past `rows` zero.
//
// phi = feature map f of x (seqs, padded_rows, dim); with v (else nullptr) also v_aug (seqs,
// padded_rows, width) = [v, 1, 0...]: phi(K)^T v_aug then holds h_j and z_j side by side.
int sla_feature_rows(const void* x, const void* v, float* phi, float* v_aug, DType dtype,
                     attention::SlaFeatureMap f, int64_t seqs, int64_t rows, int64_t padded_rows,
                     int64_t dim, int64_t width, void* stream);

// The backward's query rows: phi = f(q) and g_aug = [g / den, -<g, o> / den, 0...] (seqs,
// padded_rows, width) with g = dO^l, o = O^l and den = denom (seqs, rows); rows with den <= 0 get 0.
int sla_query_grad_rows(const void* q, const void* grad, const void* out, const float* denom, float* phi,
                        float* g_aug, DType dtype, attention::SlaFeatureMap f, int64_t seqs, int64_t rows,
                        int64_t padded_rows, int64_t dim, int64_t width, void* stream);

// out (seqs, rows, dim) = base + J_f^T dphi at phi (both float32 (seqs, padded_rows, .), dphi rows
// `ld` floats apart), or base + dphi[:, :, :dim] when phi is nullptr; rounded once to `dtype`.
// out may be base.
int sla_add_grad_rows(const void* base, const float* phi, const float* dphi, int64_t ld, void* out,
                      DType dtype, attention::SlaFeatureMap f, int64_t seqs, int64_t rows, int64_t padded_rows,
                      int64_t dim, void* stream);

}  // namespace genaccel::cuda
