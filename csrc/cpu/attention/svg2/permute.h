// CPU kernels of ops svg2_permute / svg2_unpermute (SVG2's cluster permutation of whole D-rows).
#pragma once
#include <cstdint>

namespace genaccel::cpu {

// perm (bh, n) int32, contiguous: the index of the first (batch, head) whose row is not a permutation
// of 0..n-1, or -1; for that row *bad_value is an entry out of [0, n) or a repeated one and
// *out_of_range says which.
int64_t svg2_first_bad_perm(const int32_t* perm, int64_t bh, int64_t n, int32_t* bad_value, bool* out_of_range);

// Moves whole rows of row_bytes bytes per (batch, head) of `heads` heads: with scatter false (gather,
// svg2_permute) dst[b, h, i] = src[b, h, perm[b, h, i]], with scatter true (svg2_unpermute)
// dst[b, h, perm[b, h, i]] = src[b, h, i]. src strides in bytes; dst contiguous; perm valid.
void svg2_move_rows(const char* src, int64_t src_batch_stride, int64_t src_head_stride, int64_t src_row_stride,
                    char* dst, const int32_t* perm, int64_t batch, int64_t heads, int64_t n, int64_t row_bytes,
                    bool scatter);

}  // namespace genaccel::cpu
