// Torch-free launchers of the CUDA kernels of the DC-AE ops (params and the exact maths:
// include/genaccel/autoencoder/dcae/params.h). Each returns the cudaError_t of its launch (0 = ok;
// cudaErrorInvalidValue for bad params).
#pragma once
#include "genaccel/autoencoder/dcae/params.h"

namespace genaccel::cuda {

// The chunk-causal 3-D convolution: an implicit GEMM (M = Cout, N = output positions, K = Cin x taps)
// that reads x's halo in place (no padded copy), float32 accumulation; y in p.dtype. 16-bit dtypes use
// tensor cores (mma.sync m16n8k16); float32 is exact float32 FMA.
int dcae_chunk_causal_conv3d_cuda(const DcaeChunkConvParams& p, void* stream);

// space_to_channel (to_channel) or channel_to_space: one thread per output element, float32 sums.
int dcae_shuffle_cuda(const DcaeShuffleParams& p, bool to_channel, void* stream);

// LiteMLA: per (batch, head) the (d + 1) x d state [V; 1] K'^T reduced over the positions in float32,
// then every position's output from it; float32 throughout, out in p.dtype.
int dcae_lite_mla_cuda(const DcaeLiteMlaParams& p, void* stream);

}  // namespace genaccel::cuda
