// Torch-free launcher of the CUDA block-sparse attention backward (device code:
// include/genaccel/attention/block_sparse/bwd.cuh).
#pragma once
#include "genaccel/attention/block_sparse/params.h"

namespace genaccel::cuda {

// nullptr when the CUDA kernels handle this configuration (dtype, head dim, block sizes, alignment),
// else a sentence saying what they do not handle. The same limits as the forward.
const char* block_sparse_bwd_unsupported(const attention::BlockSparseBwdCudaParams& p, DType dtype,
                                         attention::Backend backend);

// Launches the dK/dV and the dQ kernels on `stream` (a cudaStream_t). Returns the first
// cudaError_t of the launches (0 = ok).
int block_sparse_bwd(const attention::BlockSparseBwdCudaParams& p, DType dtype, attention::Backend backend,
                     void* stream);

}  // namespace genaccel::cuda
