// Launcher of the CUDA block-sparse attention forward: picks the kernel instance for (dtype, head
// dim, block_q) and launches it. Device code: include/genaccel/attention/block_sparse/fwd.cuh.
#include "cuda/attention/block_sparse/fwd.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/launch_util.h"
#include "genaccel/common/dispatch.h"
#include "genaccel/attention/block_sparse/fwd.cuh"
#include "genaccel/attention/block_sparse/fwd_sm90.cuh"

namespace genaccel::cuda {
namespace {

using attention::BlockSparseFwdParams;

constexpr int kKeyTile = 64;
constexpr int kMaxBlockK = 256;
constexpr int kMaxGridYZ = 65535;
constexpr int64_t kMaxGridX = 2147483647;

template <class Traits, class Kernel>
int launch_kernel(Kernel kernel, const BlockSparseFwdParams& p, cudaStream_t stream) {
  static_assert(Traits::kKeyTile == kKeyTile, "block_k support below assumes 64-key tiles");
  const cudaError_t err = allow_smem(kernel, Traits::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.num_q_blocks, p.heads, p.batch);
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// Variable-size blocks: grid (num_q_blocks * tiles_per_block, heads, batch), mma.sync only.
template <class T, int kHeadDim, int kBlockQ>
int launch_varblock(const BlockSparseFwdParams& p, int tiles_per_block, cudaStream_t stream) {
  using Traits = attention::FwdTraits<T, kHeadDim, kBlockQ>;
  const auto kernel = attention::block_sparse_fwd_varblock_kernel<Traits>;
  const cudaError_t err = allow_smem(kernel, Traits::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(static_cast<int64_t>(p.num_q_blocks) * tiles_per_block), p.heads, p.batch);
  kernel<<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(p, tiles_per_block);
  return cudaGetLastError();
}

template <class T, int kHeadDim, int kBlockQ>
int launch(const BlockSparseFwdParams& p, bool wgmma, cudaStream_t stream) {
  if (wgmma) {
    using Traits = attention::Sm90FwdTraits<T, kHeadDim, kBlockQ>;
    return launch_kernel<Traits>(attention::block_sparse_fwd_sm90_kernel<Traits>, p, stream);
  }
  using Traits = attention::FwdTraits<T, kHeadDim, kBlockQ>;
  return launch_kernel<Traits>(attention::block_sparse_fwd_kernel<Traits>, p, stream);
}


}  // namespace

const char* block_sparse_fwd_unsupported(const BlockSparseFwdParams& p, DType dtype, attention::Backend backend) {
  const bool variable = attention::has_variable_blocks(p);
  if (variable && backend == attention::Backend::kSm90)
    return "backend 'sm90' (the wgmma kernels) does not take variable-size blocks (q_block_offsets / "
           "k_block_offsets); use backend 'sm80' or 'auto', whose mma.sync kernels do";
  if (backend == attention::Backend::kSm90 && !sm90_kernels_available())
    return "backend 'sm90' (the wgmma kernels) needs a device of compute capability 9.0 and a build with "
           "sm_90a code (GENACCEL_CUDA_ARCHS containing 90a)";
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16)
    return "the CUDA kernel supports bfloat16 and float16 inputs only (float32 runs on the CPU "
           "kernel or must be cast)";
  if (p.head_dim != 64 && p.head_dim != 128)
    return "the CUDA kernel supports head dim 64 and 128 only";
  // Variable-size blocks take any block sizes (block_q / block_k bound the blocks, either side may be
  // uniform); the uniform kernels take the sizes below.
  if (!variable && p.block_q != 64 && p.block_q != 128)
    return "the CUDA kernel supports block_q = 64 or 128 only (with uniform blocks)";
  if (!variable && (p.block_k % kKeyTile != 0 || p.block_k < kKeyTile || p.block_k > kMaxBlockK))
    return "the CUDA kernel supports block_k = 64, 128, 192 or 256 only (with uniform blocks)";
  if (variable && static_cast<int64_t>(p.num_q_blocks) * attention::var_row_tiling(p).tiles_per_block > kMaxGridX)
    return "the CUDA kernel supports at most 2^31 - 1 (query block, row tile) pairs with variable-size blocks "
           "(query blocks x row tiles of the largest block)";
  if (!rows_aligned(p.q, p.q_batch_stride, p.q_head_stride, p.q_row_stride) ||
      !rows_aligned(p.k, p.k_batch_stride, p.k_head_stride, p.k_row_stride) ||
      !rows_aligned(p.v, p.v_batch_stride, p.v_head_stride, p.v_row_stride) ||
      !rows_aligned(p.out, p.o_batch_stride, p.o_head_stride, p.o_row_stride))
    return "the CUDA kernel needs q, k, v and out 16-byte aligned with batch, head and row "
           "strides that are multiples of 8 elements (a contiguous copy satisfies this)";
  if (p.heads > kMaxGridYZ || p.batch > kMaxGridYZ)
    return "the CUDA kernel supports at most 65535 heads and 65535 batches";
  return nullptr;
}

int block_sparse_fwd(const BlockSparseFwdParams& p, DType dtype, attention::Backend backend, void* stream) {
  if (block_sparse_fwd_unsupported(p, dtype, backend) != nullptr) return cudaErrorInvalidValue;
  if (p.num_q_blocks == 0 || p.heads == 0 || p.batch == 0) return cudaSuccess;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool wgmma = backend == attention::Backend::kSm90;
  int err = cudaErrorInvalidValue;
  if (attention::has_variable_blocks(p)) {
    const attention::VarRowTiling tiling = attention::var_row_tiling(p);
    dispatch_half(dtype, [&](auto t) {
      dispatch_int<64, 128>(p.head_dim, [&](auto d) {
        dispatch_int<64, 128>(tiling.block_q, [&](auto bq) {
          err = launch_varblock<decltype(t), decltype(d)::value, decltype(bq)::value>(p, tiling.tiles_per_block, s);
        });
      });
    });
    return err;
  }
  dispatch_half(dtype, [&](auto t) {
    dispatch_int<64, 128>(p.head_dim, [&](auto d) {
      dispatch_int<64, 128>(p.block_q, [&](auto bq) {
        err = launch<decltype(t), decltype(d)::value, decltype(bq)::value>(p, wgmma, s);
      });
    });
  });
  return err;
}

}  // namespace genaccel::cuda
