// Torch-free description of SLA's linear branch (forward), shared by the CPU kernel and, later, the
// CUDA launcher. Strides in elements; last dims contiguous.
#pragma once
#include <cstdint>

namespace genaccel::attention {

struct SlaLinearFwdParams {
  const float* phi_q;  // (B, H, Nq, D) feature-mapped queries
  const float* phi_k;  // (B, Hkv, Nk, D) feature-mapped keys
  const float* v;      // (B, Hkv, Nk, >= d_pad): columns D..d_pad must be readable (zero padding)
  float* out;          // (B, H, Nq, D) contiguous: O^l
  float* denom;        // (B, H, Nq) contiguous: phi(q) . Z_i (+ eps with all_keys)
  // Block classes (Bc, Hc, Tq, Tk), int8, last two dims contiguous; Bc/Hc 1 broadcast (stride 0).
  const int8_t* codes;
  int64_t codes_batch_stride, codes_head_stride;

  int64_t pq_batch_stride, pq_head_stride, pq_row_stride;
  int64_t pk_batch_stride, pk_head_stride, pk_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;

  int batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim, d_pad;
  int block_q, block_k, num_q_blocks, num_k_blocks;
  bool all_keys;  // linear attention over every key, denominator + eps (original main branch)
  float eps;
};

}  // namespace genaccel::attention
