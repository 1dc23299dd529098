// Torch-free description of one block-sparse attention forward call, shared by the CPU kernel, the
// CUDA launcher and the C++ microbenchmark. All strides are in elements; the last dim is contiguous.
#pragma once
#include <cstdint>

#include "genaccel/common/dtype.h"
#include "genaccel/common/host_device.h"

namespace genaccel::attention {

// Which CUDA kernels run the attention (the ops' `backend` argument): mma.sync (sm_80 and newer) or
// warpgroup MMAs (wgmma, sm_90a only).
enum class Backend : int { kSm80 = 0, kSm90 = 1 };

struct BlockSparseFwdParams {
  const void* q;  // (B, H, Nq, D)
  const void* k;  // (B, Hkv, Nk, D)
  const void* v;  // (B, Hkv, Nk, D)
  void* out;      // (B, H, Nq, D), contiguous, dtype of q
  float* lse;     // (B, H, Nq), contiguous, natural log, -inf for a row with no selected key

  // Planned index list: kv_indices (Bi, Hi, Tq, max_kv_blocks), kv_counts (Bi, Hi, Tq), both
  // int32 and contiguous in the last two dims. Bi is B or 1, Hi is H or 1; a batch/head stride of 0
  // broadcasts one plan over every batch/head.
  const int32_t* kv_indices;
  const int32_t* kv_counts;
  int64_t idx_batch_stride, idx_head_stride;  // into kv_indices
  int64_t cnt_batch_stride, cnt_head_stride;  // into kv_counts
  int max_kv_blocks;

  int64_t q_batch_stride, q_head_stride, q_row_stride;
  int64_t k_batch_stride, k_head_stride, k_row_stride;
  int64_t v_batch_stride, v_head_stride, v_row_stride;
  int64_t o_batch_stride, o_head_stride, o_row_stride;

  int batch, heads, kv_heads;  // heads % kv_heads == 0 (GQA: query head h reads kv head h / (heads / kv_heads))
  int seqlen_q, seqlen_k, head_dim;
  int block_q, block_k;  // token sizes of one mask block (with offsets: bounds on every block's size)
  int num_q_blocks;      // ceil(seqlen_q / block_q), or the offsets' block count
  float scale;           // softmax scale applied to q·k

  // Variable-size blocks (SVG2's clusters): token offsets, int32 (Bo, Ho, num_q_blocks + 1) and
  // (Bo, Ho, num_k_blocks + 1), per (batch, query head) and broadcast like the plan (stride 0), from 0
  // to the sequence length and non-decreasing. Null: uniform blocks of block_q / block_k tokens, the
  // last one partial. The CPU kernels and the CUDA mma.sync (sm80) kernels take them; the wgmma
  // (sm90) kernels refuse them.
  const int32_t* q_offsets;
  const int32_t* k_offsets;
  int64_t qoff_batch_stride, qoff_head_stride;
  int64_t koff_batch_stride, koff_head_stride;
  int num_k_blocks;  // the offsets' key block count, or ceil(seqlen_k / block_k)
};

// Whether a call has variable-size blocks on either side (the CUDA kernels then run their
// variable-block instances, which read both sides through query_block_tokens / key_blocks_tokens).
GENACCEL_HOST_DEVICE inline bool has_variable_blocks(const BlockSparseFwdParams& p) {
  return p.q_offsets != nullptr || p.k_offsets != nullptr;
}

// Tokens [begin, end) of a block or of a run of adjacent blocks.
struct TokenRange {
  int begin, end;
};

// The tokens of query block qb of (batch b, query head h).
GENACCEL_HOST_DEVICE inline TokenRange query_block_tokens(const BlockSparseFwdParams& p, int b, int h, int qb) {
  if (p.q_offsets != nullptr) {
    const int32_t* o = p.q_offsets + b * p.qoff_batch_stride + h * p.qoff_head_stride;
    return {o[qb], o[qb + 1]};
  }
  const int begin = qb * p.block_q;
  const int64_t end = static_cast<int64_t>(begin) + p.block_q;
  return {begin, end < p.seqlen_q ? static_cast<int>(end) : p.seqlen_q};
}

// The tokens of the adjacent key blocks [first, last) seen by (batch b, query head h).
GENACCEL_HOST_DEVICE inline TokenRange key_blocks_tokens(const BlockSparseFwdParams& p, int b, int h, int first,
                                                         int last) {
  if (p.k_offsets != nullptr) {
    const int32_t* o = p.k_offsets + b * p.koff_batch_stride + h * p.koff_head_stride;
    return {o[first], o[last]};
  }
  const int64_t end = static_cast<int64_t>(last) * p.block_k;
  return {first * p.block_k, end < p.seqlen_k ? static_cast<int>(end) : p.seqlen_k};
}


// Backward of block-sparse attention: `fwd` describes q/k/v, lse and the plan exactly as in the
// forward (its `out` is unused); dout is laid out like q, and delta[b, h, i] =
// rowsum(dout * out)[i] - dlse[i] (the softmax Jacobian term, with any gradient of lse folded in).
struct BlockSparseBwdParams {
  BlockSparseFwdParams fwd;
  const void* dout;
  int64_t do_batch_stride, do_head_stride, do_row_stride;
  const float* delta;  // (B, H, Nq) contiguous
  void* dq;            // (B, H, Nq, D) contiguous
  void* dk;            // (B, Hkv, Nk, D) contiguous
  void* dv;            // (B, Hkv, Nk, D) contiguous
};

// The backward's delta before the lse term: delta[b, h, i] = sum_d dout[b, h, i, d] * out[b, h, i, d],
// products and sum in float32 (op attention_delta). dout and out are (B, H, N, D) in one dtype with
// contiguous last dims.
struct AttentionDeltaParams {
  const void* dout;
  const void* out;
  float* delta;  // (B, H, N), contiguous
  int64_t do_batch_stride, do_head_stride, do_row_stride;
  int64_t o_batch_stride, o_head_stride, o_row_stride;
  int64_t batch, heads, rows, dim;
};

// The plan transposed to key-major order (CSR), for a backward that walks, per key block, the query
// blocks whose lists name it: for plan batch b', plan head h' (broadcast like kv_indices) and key
// block kb, the entries are q_list[b', h', q_offsets[b', h', kb] .. q_offsets[b', h', kb + 1]),
// ascending; a key block listed twice by one query block appears twice, as the forward visits it twice.
struct KeyMajorPlan {
  const int32_t* q_offsets;  // (Bi, Hi, Tk + 1)
  const int32_t* q_list;     // (Bi, Hi, L), L >= every q_offsets[..., Tk]
  int64_t off_batch_stride, off_head_stride;    // 0 where the plan broadcasts
  int64_t list_batch_stride, list_head_stride;  // 0 where the plan broadcasts
};

// The CUDA backward's parameters: the backward call and its key-major plan.
struct BlockSparseBwdCudaParams {
  BlockSparseBwdParams bwd;
  KeyMajorPlan plan;
};

}  // namespace genaccel::attention
