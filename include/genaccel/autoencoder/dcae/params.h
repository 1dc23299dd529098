// Torch-free params of the DC-AE kernels, shared by the CPU kernels (csrc/cpu/autoencoder/dcae/) and
// the CUDA ones (csrc/cuda/autoencoder/dcae/). The maths: python/genaccel/autoencoder/dcae/reference.py.
// Every tensor is contiguous; offsets need 64-bit arithmetic (a video activation passes 2^31 elements).
#pragma once
#include <cstdint>

#include "genaccel/common/dtype.h"

namespace genaccel {

// y (batch, cout, frames, height, width) = the chunk-causal 3-D convolution of x (batch, cin, frames,
// height, width) with weight (cout, cin, kt, kh, kw), odd kernel sizes, stride 1, spatial zero padding
// (kh - 1) / 2 and (kw - 1) / 2. With p = (kt - 1) / 2 and frames cut into chunks of `chunk` frames, output
// frame t of the chunk starting at t0 reads input frame t + dt - p for dt in [0, kt) when it is < t0 +
// chunk (never the next chunk: the right halo is zeros), from x when it is >= 0 and from cache frame
// t + dt (the previous call's last p input frames) when it is < 0, zeros without a cache. p <= chunk and
// frames % chunk == 0 (the op checks).
struct DcaeChunkConvParams {
  const void* x;        // (batch, cin, frames, height, width), dtype
  const void* cache;    // (batch, cin, p, height, width), dtype, or null
  const void* weight;   // (cout, cin, kt, kh, kw), dtype
  const void* bias;     // (cout,), dtype, or null
  void* y;              // (batch, cout, frames, height, width), dtype
  DType dtype;          // of every tensor; float32 accumulation
  int64_t batch, cin, cout, frames, height, width, kt, kh, kw, chunk;
};

// DC-AE's parameter-free shortcuts between a fine grid (batch, c_fine, frames, height, width) and a
// coarse one (batch, c_coarse, frames / rt, height / r, width / r); images are frames = rt = 1. The
// unshuffled channel u = ((c * rt + dt) * r + dh) * r + dw holds fine channel c at phase (dt, dh, dw).
// - space_to_channel (fine -> coarse): coarse channel o = the mean of the unshuffled channels
//   [o * g, o * g + g), g = c_fine * rt * r * r / c_coarse.
// - channel_to_space (coarse -> fine): unshuffled channel u = coarse channel u / g', g' = c_fine * rt *
//   r * r / c_coarse (repeat_interleave then pixel_shuffle).
// Either way g (g') is c_fine * rt * r * r / c_coarse, which the op checks is a whole number.
struct DcaeShuffleParams {
  const void* x;        // the input grid, dtype
  void* y;              // the output grid, dtype
  DType dtype;
  int64_t batch, c_fine, c_coarse, frames, height, width, r, rt;  // frames, height, width: the fine grid's
};

// LiteMLA, the ReLU linear attention of DC-AE's EfficientViT blocks, on qkv (batch, heads * 3 * d, N),
// N = H W positions, channels grouped per head: head h owns [3 d h, 3 d h + 3 d) = q (d), k (d), v (d).
// out (batch, heads * d, N): with q' = ReLU(q), k' = ReLU(k), per head and position n
//   out[:, n] = (sum_m v_m k'_m . q'_n) / (sum_m k'_m . q'_n + eps),
// the linear form V [1] K'^T Q' of the original, in float32 (eps = 1e-15 underflows in float16).
struct DcaeLiteMlaParams {
  const void* qkv;      // (batch, heads * 3 * head_dim, n), dtype
  void* out;            // (batch, heads * head_dim, n), dtype
  DType dtype;
  int64_t batch, heads, head_dim, n;
  float eps;
};

}  // namespace genaccel
