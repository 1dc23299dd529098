// Torch-free description of SLA's linear branch (forward and backward), shared by the CPU kernels
// and, later, the CUDA launchers. Strides in elements; last dims contiguous.
#pragma once
#include <cstdint>

namespace genaccel::attention {

// SLA's feature maps phi, applied per token over the feature dim; the op argument `feature_map`
// names them "softmax", "elu" (elu + 1) and "relu".
enum class SlaFeatureMap : int { kSoftmax, kElu, kRelu };

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

// Backward of the linear branch: `fwd` describes phi_q, phi_k, v, the codes and the shapes exactly
// as in the forward (its out/denom slots are unused); out/denom are what the forward wrote.
// Rows with denom <= 0 had O^l = 0 and get no gradient.
struct SlaLinearBwdParams {
  SlaLinearFwdParams fwd;
  const float* out;    // (B, H, Nq, D) contiguous: O^l saved by the forward
  const float* denom;  // (B, H, Nq) contiguous: its denominators
  const float* dout;   // (B, H, Nq, D): gradient of O^l
  int64_t do_batch_stride, do_head_stride, do_row_stride;
  float* d_phi_q;      // (B, H, Nq, D) contiguous, written
  float* d_phi_k;      // (B, Hkv, Nk, D) contiguous, written
  float* dv;           // (B, Hkv, Nk, D) contiguous: the linear branch's dV is ADDED to it
};

}  // namespace genaccel::attention
