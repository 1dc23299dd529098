// Torch-free launcher of the CUDA block-sparse attention forward (device code:
// include/genaccel/attention/block_sparse/fwd.cuh).
#pragma once
#include "genaccel/attention/block_sparse/params.h"

namespace genaccel::cuda {

// nullptr when the CUDA kernel handles this configuration (dtype, head dim, block sizes, backend on
// this device), else a sentence saying what it does not handle.
const char* block_sparse_fwd_unsupported(const attention::BlockSparseFwdParams& p, DType dtype,
                                         attention::Backend backend);

// Launches the forward on `stream` (a cudaStream_t). Returns the cudaError_t of the launch (0 = ok).
int block_sparse_fwd(const attention::BlockSparseFwdParams& p, DType dtype, attention::Backend backend,
                     void* stream);

}  // namespace genaccel::cuda
