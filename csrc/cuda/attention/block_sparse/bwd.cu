// Launcher of the CUDA block-sparse attention backward: picks the kernel instances for (dtype, head
// dim, block_q) and launches the dK/dV and the dQ kernel. Device code:
// include/genaccel/attention/block_sparse/bwd.cuh (mma.sync) and, opted in on sm_90,
// block_sparse_bwd_sm90.cuh (wgmma).
#include "cuda/attention/block_sparse/bwd.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/attention/block_sparse/fwd.h"
#include "cuda/common/launch_util.h"
#include "genaccel/common/dispatch.h"
#include "genaccel/attention/block_sparse/bwd.cuh"
#include "genaccel/attention/block_sparse/bwd_sm90.cuh"

namespace genaccel::cuda {
namespace {

using attention::BlockSparseBwdCudaParams;

template <class DkDv, class Dq, class DkDvKernel, class DqKernel>
int launch_kernels(DkDvKernel dkdv, DqKernel dq, const BlockSparseBwdCudaParams& p, cudaStream_t stream) {
  const auto& f = p.bwd.fwd;
  cudaError_t err = allow_smem(dkdv, DkDv::kSmemBytes);
  if (err != cudaSuccess) return err;
  err = allow_smem(dq, Dq::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 dkdv_grid((f.seqlen_k + DkDv::kTile - 1) / DkDv::kTile, f.kv_heads, f.batch);
  dkdv<<<dkdv_grid, DkDv::kThreads, DkDv::kSmemBytes, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 dq_grid(f.num_q_blocks, f.heads, f.batch);
  dq<<<dq_grid, Dq::kThreads, Dq::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

// Variable-size blocks (mma.sync only): the dK/dV grid as for uniform blocks, the dQ grid (num_q_blocks *
// tiles_per_block, heads, batch) as the variable-block forward.
template <class T, int kHeadDim, int kBlockQ>
int launch_varblock(const BlockSparseBwdCudaParams& p, int tiles_per_block, cudaStream_t stream) {
  using DkDv = attention::DkDvTraits<T, kHeadDim>;
  using Dq = attention::DqTraits<T, kHeadDim, kBlockQ>;
  const auto dkdv = attention::block_sparse_bwd_dkdv_varblock_kernel<DkDv>;
  const auto dq = attention::block_sparse_bwd_dq_varblock_kernel<Dq>;
  const auto& f = p.bwd.fwd;
  cudaError_t err = allow_smem(dkdv, DkDv::kSmemBytes);
  if (err != cudaSuccess) return err;
  err = allow_smem(dq, Dq::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 dkdv_grid((f.seqlen_k + DkDv::kTile - 1) / DkDv::kTile, f.kv_heads, f.batch);
  dkdv<<<dkdv_grid, DkDv::kThreads, DkDv::kSmemBytes, stream>>>(p);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const dim3 dq_grid(static_cast<unsigned>(static_cast<int64_t>(f.num_q_blocks) * tiles_per_block), f.heads, f.batch);
  dq<<<dq_grid, Dq::kThreads, Dq::kSmemBytes, stream>>>(p, tiles_per_block);
  return cudaGetLastError();
}

template <class T, int kHeadDim, int kBlockQ>
int launch(const BlockSparseBwdCudaParams& p, bool wgmma, cudaStream_t stream) {
  if (wgmma) {
    using DkDv = attention::Sm90DkDvTraits<T, kHeadDim>;
    using Dq = attention::Sm90DqTraits<T, kHeadDim, kBlockQ>;
    return launch_kernels<DkDv, Dq>(attention::block_sparse_bwd_dkdv_sm90_kernel<DkDv>,
                                    attention::block_sparse_bwd_dq_sm90_kernel<Dq>, p, stream);
  }
  using DkDv = attention::DkDvTraits<T, kHeadDim>;
  using Dq = attention::DqTraits<T, kHeadDim, kBlockQ>;
  return launch_kernels<DkDv, Dq>(attention::block_sparse_bwd_dkdv_kernel<DkDv>,
                                  attention::block_sparse_bwd_dq_kernel<Dq>, p, stream);
}


}  // namespace

const char* block_sparse_bwd_unsupported(const BlockSparseBwdCudaParams& p, DType dtype,
                                         attention::Backend backend) {
  // The forward's limits cover q, k, v and (in the `out` slot) dq.
  if (const char* why = block_sparse_fwd_unsupported(p.bwd.fwd, dtype, backend)) return why;
  const auto& b = p.bwd;
  if (!rows_aligned(b.dout, b.do_batch_stride, b.do_head_stride, b.do_row_stride) ||
      !rows_aligned(b.dk, 8, 8, 8) || !rows_aligned(b.dv, 8, 8, 8))
    return "the CUDA backward needs dout, dk and dv 16-byte aligned with batch, head and row "
           "strides that are multiples of 8 elements (a contiguous copy satisfies this)";
  return nullptr;
}

int block_sparse_bwd(const BlockSparseBwdCudaParams& p, DType dtype, attention::Backend backend, void* stream) {
  if (block_sparse_bwd_unsupported(p, dtype, backend) != nullptr) return cudaErrorInvalidValue;
  const auto& f = p.bwd.fwd;
  if (f.batch == 0 || f.heads == 0 || f.seqlen_q == 0 || f.seqlen_k == 0) return cudaSuccess;
  const auto s = static_cast<cudaStream_t>(stream);
  const bool wgmma = backend == attention::Backend::kSm90;
  int err = cudaErrorInvalidValue;
  if (attention::has_variable_blocks(f)) {
    const attention::VarRowTiling tiling = attention::var_row_tiling(f);
    dispatch_half(dtype, [&](auto t) {
      dispatch_int<64, 128>(f.head_dim, [&](auto d) {
        dispatch_int<64, 128>(tiling.block_q, [&](auto bq) {
          err = launch_varblock<decltype(t), decltype(d)::value, decltype(bq)::value>(p, tiling.tiles_per_block, s);
        });
      });
    });
    return err;
  }
  dispatch_half(dtype, [&](auto t) {
    dispatch_int<64, 128>(f.head_dim, [&](auto d) {
      dispatch_int<64, 128>(f.block_q, [&](auto bq) {
        err = launch<decltype(t), decltype(d)::value, decltype(bq)::value>(p, wgmma, s);
      });
    });
  });
  return err;
}

}  // namespace genaccel::cuda
