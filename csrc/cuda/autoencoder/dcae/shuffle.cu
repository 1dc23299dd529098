// DC-AE's parameter-free space <-> channel shortcuts on CUDA (ops dcae_space_to_channel /
// dcae_channel_to_space; the maths: include/genaccel/autoencoder/dcae/params.h). A thread per output
// element, grid-stride, int64 indices:
// - space_to_channel: coarse element (b, o, t', h', w') is the float32 mean of the g unshuffled channels
//   u in [o g, o g + g), channel u being fine channel c at (t' rt + dt, h' r + dh, w' r + dw), u = ((c rt
//   + dt) r + dh) r + dw; the sum divided by g with IEEE division, then rounded to the dtype.
// - channel_to_space: fine element (b, c, t, h, w) is coarse channel u / g at (t / rt, h / r, w / r), u
//   from the phase (t % rt, h % r, w % r): a plain copy, so the value passes through unrounded.
// Images are frames = rt = 1: the same index maths.
#include "cuda/autoencoder/dcae/conv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "genaccel/common/float_convert.cuh"

namespace genaccel::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // the loops are grid-stride: any count is covered

unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks)));
}

// The params with the coarse grid's sizes and the group size, computed once on the host.
struct ShuffleGeometry {
  const void* x;
  void* y;
  int64_t c_fine, c_coarse, frames, height, width;  // the fine grid's frames, height, width
  int64_t r, rt, group;                             // group = c_fine rt r r / c_coarse
  int64_t coarse_frames, coarse_height, coarse_width;
  int64_t total;                                    // output elements
};

template <class T>
__global__ void __launch_bounds__(kThreads) space_to_channel_kernel(const __grid_constant__ ShuffleGeometry g) {
  const T* x = static_cast<const T*>(g.x);
  T* y = static_cast<T*>(g.y);
  const int64_t rr = g.r * g.r, phases = g.rt * rr;
  const float group = static_cast<float>(g.group);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < g.total;
       idx += static_cast<int64_t>(gridDim.x) * kThreads) {
    int64_t rest = idx;
    const int64_t wc = rest % g.coarse_width;
    rest /= g.coarse_width;
    const int64_t hc = rest % g.coarse_height;
    rest /= g.coarse_height;
    const int64_t tc = rest % g.coarse_frames;
    rest /= g.coarse_frames;
    const int64_t o = rest % g.c_coarse, b = rest / g.c_coarse;
    float sum = 0.f;
    for (int64_t u = o * g.group; u < (o + 1) * g.group; ++u) {
      const int64_t c = u / phases, dt = u % phases / rr, dh = u % rr / g.r, dw = u % g.r;
      const int64_t src = (((b * g.c_fine + c) * g.frames + tc * g.rt + dt) * g.height + hc * g.r + dh) * g.width +
                          wc * g.r + dw;
      sum = __fadd_rn(sum, to_float(x[src]));
    }
    y[idx] = from_float<T>(__fdiv_rn(sum, group));
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) channel_to_space_kernel(const __grid_constant__ ShuffleGeometry g) {
  const T* x = static_cast<const T*>(g.x);
  T* y = static_cast<T*>(g.y);
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; idx < g.total;
       idx += static_cast<int64_t>(gridDim.x) * kThreads) {
    int64_t rest = idx;
    const int64_t w = rest % g.width;
    rest /= g.width;
    const int64_t h = rest % g.height;
    rest /= g.height;
    const int64_t t = rest % g.frames;
    rest /= g.frames;
    const int64_t c = rest % g.c_fine, b = rest / g.c_fine;
    const int64_t u = ((c * g.rt + t % g.rt) * g.r + h % g.r) * g.r + w % g.r;
    const int64_t src =
        ((((b * g.c_coarse + u / g.group) * g.coarse_frames + t / g.rt) * g.coarse_height + h / g.r) *
             g.coarse_width +
         w / g.r);
    y[idx] = x[src];
  }
}

template <class T>
int launch(const ShuffleGeometry& g, bool to_channel, cudaStream_t stream) {
  if (to_channel) {
    space_to_channel_kernel<T><<<blocks_for(g.total), kThreads, 0, stream>>>(g);
  } else {
    channel_to_space_kernel<T><<<blocks_for(g.total), kThreads, 0, stream>>>(g);
  }
  return cudaGetLastError();
}

}  // namespace

int dcae_shuffle_cuda(const DcaeShuffleParams& p, bool to_channel, void* stream_ptr) {
  if (p.batch < 0 || p.c_fine < 0 || p.c_coarse < 1 || p.frames < 0 || p.height < 0 || p.width < 0 || p.r < 1 ||
      p.rt < 1)
    return cudaErrorInvalidValue;
  if (p.frames % p.rt != 0 || p.height % p.r != 0 || p.width % p.r != 0) return cudaErrorInvalidValue;
  const int64_t unshuffled = p.c_fine * p.rt * p.r * p.r;
  if (unshuffled % p.c_coarse != 0) return cudaErrorInvalidValue;
  ShuffleGeometry g{};
  g.c_fine = p.c_fine, g.c_coarse = p.c_coarse, g.frames = p.frames, g.height = p.height, g.width = p.width;
  g.r = p.r, g.rt = p.rt, g.group = unshuffled / p.c_coarse;
  g.coarse_frames = p.frames / p.rt, g.coarse_height = p.height / p.r, g.coarse_width = p.width / p.r;
  g.total = to_channel ? p.batch * p.c_coarse * g.coarse_frames * g.coarse_height * g.coarse_width
                       : p.batch * p.c_fine * p.frames * p.height * p.width;
  if (g.total == 0) return cudaSuccess;
  // A mean over no channels (c_fine = 0 with coarse outputs) has no value.
  if (g.group < 1 || p.x == nullptr || p.y == nullptr) return cudaErrorInvalidValue;
  g.x = p.x, g.y = p.y;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.dtype) {
    case DType::kFloat32: return launch<float>(g, to_channel, stream);
    case DType::kFloat16: return launch<__half>(g, to_channel, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(g, to_channel, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace genaccel::cuda
