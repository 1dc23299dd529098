// Torch-free launcher of the CUDA block-sparse attention forward (device code:
// include/genaccel/attention/block_sparse_fwd.cuh).
#pragma once
#include "genaccel/attention/block_sparse_params.h"

namespace genaccel::cuda {

// nullptr when the CUDA kernel handles this configuration (dtype, head dim, block sizes), else a
// sentence saying what it does not handle.
const char* block_sparse_fwd_unsupported(const attention::BlockSparseFwdParams& p, DType dtype);

// Launches the forward on `stream` (a cudaStream_t). Returns the cudaError_t of the launch (0 = ok).
int block_sparse_fwd(const attention::BlockSparseFwdParams& p, DType dtype, void* stream);

}  // namespace genaccel::cuda
