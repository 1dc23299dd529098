// Torch-free launcher of the CUDA kernel of ops svg2_permute / svg2_unpermute. Returns the
// cudaError_t of its launch (0 = ok).
#pragma once
#include <cstdint>

namespace genaccel::cuda {

// Rows of row_elems elements of elem_bytes (2, 4 or 8) bytes: scatter false (svg2_permute)
// dst[bh, i] = src[bh, perm[bh, i]], scatter true (svg2_unpermute) dst[bh, perm[bh, i]] = src[bh, i];
// src strides in elements (last dim contiguous), dst and perm contiguous. Entries of perm outside
// [0, n) are skipped (a gathered row becomes zeros), so an unchecked perm cannot make them read or
// write out of bounds.
int svg2_move_rows(const void* src, int64_t src_batch_stride, int64_t src_head_stride, int64_t src_row_stride,
                   void* dst, const int32_t* perm, int64_t batch, int64_t heads, int64_t n, int64_t row_elems,
                   int elem_bytes, bool scatter, void* stream);

}  // namespace genaccel::cuda
