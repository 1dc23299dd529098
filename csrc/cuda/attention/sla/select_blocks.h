// Torch-free launcher of the CUDA kernel of op sla_select_blocks (SLA's per-row block
// classification). Returns the cudaError_t of its launch (0 = ok).
#pragma once
#include <cstdint>

namespace genaccel::cuda {

// uint64 scratch entries sla_block_select needs for rows of tk scores: 0 when a row's keys fit in
// shared memory (tk <= 4096), else (tk rounded up to a power of two) per row of a chunk of rows
// (at most 2^25 entries, 256 MB, unless one row needs more).
int64_t sla_block_select_scratch(int64_t rows, int64_t tk);

// scores (rows, tk) float32, contiguous -> codes (rows, tk) int8 and indices (rows, n_crit) int32,
// exactly as the CPU kernel (csrc/cpu/attention/sla/select_blocks.h). scratch: device memory of
// sla_block_select_scratch(rows, tk) entries (may be nullptr when that is 0). cudaErrorInvalidValue
// unless 1 <= n_crit, 0 <= n_neg and n_crit + n_neg <= tk < 2^30.
int sla_block_select(const float* scores, int64_t rows, int64_t tk, int64_t n_crit, int64_t n_neg, int8_t* codes,
                     int32_t* indices, uint64_t* scratch, void* stream);

}  // namespace genaccel::cuda
